"""The store's read-ahead (``POSIX_FADV_WILLNEED`` before reading most of a file) on and off,
side by side: cold reads of a 100,000 x 2,048 float32 store (819 MB) with ``read(keys)``.

Each round drops the file's pages (``POSIX_FADV_DONTNEED``), reads it raw, then reads it through
the store with the read-ahead on and off (the order alternating between rounds); the medians are
printed. On a virtual disk the host caches as well, so single cold reads vary a lot: use several
rounds.

    python benchmarks/read_ahead.py --rounds 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, print_machine, print_table
from scale import build_store, drop_file_cache, raw_read

import featurestore.store as store_module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=2048)
    args = p.parse_args()
    print_machine(machine(torch_too=False))
    prefetch = store_module._prefetch
    with tempfile.TemporaryDirectory(prefix="bench-read-ahead-") as tmp:
        store, keys = build_store(Path(tmp), args.rows, args.dim, 5000)
        path, nbytes = store.path, args.rows * args.dim * 4
        times: dict[str, list[float]] = {"raw file read": [], "read-ahead on": [], "off": []}
        for r in range(args.rounds):
            drop_file_cache(path)
            times["raw file read"].append(raw_read(path))
            for mode in ("read-ahead on", "off") if r % 2 else ("off", "read-ahead on"):
                store_module._prefetch = prefetch if mode == "read-ahead on" else lambda p: None
                drop_file_cache(path)
                t = time.perf_counter()
                store.read(keys)
                times[mode].append(time.perf_counter() - t)
        store_module._prefetch = prefetch
    rows = [
        {
            "cold read": name,
            "median s": float(np.median(v)),
            "GB/s": nbytes / float(np.median(v)) / 1e9,
            "each s": " ".join(f"{x:.2f}" for x in v),
        }
        for name, v in times.items()
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
