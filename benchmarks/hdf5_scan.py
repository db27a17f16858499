"""Scanning an HDF5 source of image arrays: wall time and peak memory of ``open_source``.

Writes one file per dtype (``N`` random ``SIZE`` x ``SIZE`` x 3 images: ``uint8``, and
``float32`` in [0, 1] made from the same values), then scans each in a fresh process, several
times (the page cache is warm after the first), with the checkout given by ``--checkout``
(default: this one), so two versions of the reader can be compared on the same files. Prints
the best wall time, images/s, MB/s of stored data, the process's peak RSS and how far it rose
above the RSS after the imports (what the scan itself held).

    python benchmarks/hdf5_scan.py --n 20000 --size 64
    python benchmarks/hdf5_scan.py --checkout /path/to/an/older/checkout
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import REPO, machine, print_machine, print_table

# Peak memory from VmHWM (this process's own high-water mark): ru_maxrss would carry over the
# parent's peak across fork and exec.
_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from featurestore.sources import open_source
import h5py
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
base = hwm()
t = time.perf_counter()
src = open_source(sys.argv[2])
seconds = time.perf_counter() - t
print(json.dumps({"s": seconds, "n": len(src.records), "peak_kib": hwm(), "base_kib": base}))
"""


def build(folder: Path, n: int, size: int) -> dict[str, Path]:
    """The test files, written once per (n, size) and reused."""
    import h5py

    files = {dtype: folder / f"scan-{n}x{size}-{dtype}.h5" for dtype in ("uint8", "float32")}
    if all(p.exists() for p in files.values()):
        return files
    rng = np.random.default_rng(0)
    block = 1000
    with h5py.File(files["uint8"], "w") as u8, h5py.File(files["float32"], "w") as f32:
        du = u8.create_dataset("x", (n, size, size, 3), "u1", chunks=(16, size, size, 3))
        df = f32.create_dataset("x", (n, size, size, 3), "f4", chunks=(16, size, size, 3))
        for start in range(0, n, block):
            stop = min(n, start + block)
            values = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)
            du[start:stop] = values
            df[start:stop] = values.astype(np.float32) / 255.0
    return files


def scan(checkout: Path, path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(checkout), str(path)],
        capture_output=True,
        check=True,
        text=True,
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="images per file")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="scans per file (best time)")
    parser.add_argument("--checkout", type=Path, default=REPO, help="featurestore checkout")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print_machine(machine(torch_too=False))
    print(f"checkout: {args.checkout}")
    files = build(args.workdir, args.n, args.size)
    rows = []
    for dtype, path in files.items():
        runs = [scan(args.checkout, path) for _ in range(args.repeats)]
        best = min(r["s"] for r in runs)
        stored = path.stat().st_size / 1e6
        peak = max(r["peak_kib"] for r in runs) / 1024
        above = max(r["peak_kib"] - r["base_kib"] for r in runs) / 1024
        rows.append(
            {
                "dtype": dtype,
                "images": runs[0]["n"],
                "stored MB": stored,
                "scan s (best)": best,
                "images/s": runs[0]["n"] / best,
                "MB/s": stored / best,
                "peak RSS MiB": peak,
                "RSS above imports MiB": above,
            }
        )
    print_table(rows)


if __name__ == "__main__":
    main()
