"""Scale: cache hits on 20,000 images, peak memory vs. image count, reading 100,000 rows.

Three parts (``--parts``, default all):

* ``memory``: ``extract`` of 2,000 and of 20,000 generated 128x128 JPEGs with a small backbone
  (default mobilenet_v3_small, random weights, 64 px input: the model is not the bottleneck),
  each in a fresh process; peak memory of that process (``ru_maxrss``) and of the whole process
  tree (main + decode workers, proportional set size sampled every 50 ms).
* ``hit``: the same images again (every row a cache hit), for each image count: ``extract()`` in
  a fresh process (the call and the whole process, interpreter and imports included), and the
  command ``featurestore extract FOLDER ...`` itself (``python -m featurestore.cli``, default
  device): its whole-process wall time and peak RSS (``wait4``), which is what a user waits for.
  ``torch`` says whether the ``extract()`` child imported torch (a cache hit should not).
* ``read``: a store of 100,000 x 2,048 random float32 rows (819 MB) under sha256 keys (as real
  keys: not in sorted order) built through ``FeatureStore.append`` and ``compact``, read back
  with ``read(keys)`` (stored and shuffled order), ``read_all()`` and plain h5py (no check),
  against a raw sequential read of the same file (16 MiB ``readinto``) and, side by side, the
  same rows in a store of the previous format (2: HDF5's fletcher32 filter checks the feature
  chunks on the reading thread, where format 3 checks CRC32s on a second thread). Each is
  timed warm (file in the page cache; best of 3) and cold (the file's pages dropped with
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` before each read; the methods take turns, one round
  per method, each round starting with the next one; the median).

    python benchmarks/scale.py
    python benchmarks/scale.py --parts read --rows 100000 --dim 2048

Prints the machine and one Markdown table per part. Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import bench_dir, machine, peak_rss_mib, print_machine, print_table, synthetic_jpegs

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------- memory sampling
def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        pass
    return out


class TreeSampler(threading.Thread):
    """Peak proportional set size of this process plus its children, sampled periodically."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            total = _pss_kib(me) + sum(_pss_kib(c) for c in _children(me))
            self.peak_kib = max(self.peak_kib, total)
            self.stop.wait(self.interval)


def child_extract(args: argparse.Namespace) -> None:
    """Run one extract() in this (fresh) process and print a JSON line of what it cost."""
    t_start = time.perf_counter()
    sampler = TreeSampler()
    sampler.start()
    from featurestore.extraction import extract

    t = time.perf_counter()
    r = extract(
        args.folder,
        backbone=args.backbone,
        weights=args.weights,
        input_size=args.input_size,
        batch_size=args.batch_size,
        device="cpu",
        cache_dir=args.cache,
    )
    call_s = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    out = {
        "torch_imported": "torch" in sys.modules,
        "images": r.n_images,
        "extracted": r.n_extracted,
        "reused": r.n_reused,
        "extract_call_s": call_s,
        "import_s": t - t_start,
        "peak_rss_main_mib": peak_rss_mib(),
        "peak_pss_tree_mib": sampler.peak_kib / 1024,
        "timings": r.timings,
    }
    print("RESULT " + json.dumps(out))


def _extractor_args(args: argparse.Namespace) -> list[str]:
    """The extractor options both the child and the CLI runs take."""
    return [
        "--backbone",
        args.backbone,
        "--weights",
        args.weights,
        "--input-size",
        str(args.input_size),
        "--batch-size",
        str(args.batch_size),
    ]


def run_child(folder: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(HERE),
        "_child",
        "--folder",
        str(folder),
        "--cache",
        str(cache),
        *_extractor_args(args),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    res = json.loads(lines[-1][len("RESULT ") :])
    res["process_s"] = wall
    return res


def child_row(run: str, res: dict[str, Any], images: int) -> dict[str, Any]:
    """A table row for one ``run_child`` result that handled ``images`` images."""
    return {
        "run": run,
        "img/s": images / res["extract_call_s"],
        "extract() s": res["extract_call_s"],
        "process s": res["process_s"],
        "peak RSS main MiB": res["peak_rss_main_mib"],
        "peak PSS tree MiB": res["peak_pss_tree_mib"],
        "torch": res["torch_imported"],
    }


def run_cli(folder: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``featurestore extract FOLDER ... --json`` in a fresh process: its summary, the process's
    wall time (``process_s``) and peak RSS (``peak_rss_mib``, from ``wait4``)."""
    cmd = [
        sys.executable,
        "-m",
        "featurestore.cli",
        "extract",
        str(folder),
        *_extractor_args(args),
        "--cache-dir",
        str(cache),
        "--json",
    ]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"CLI failed ({proc.returncode}):\n{stdout}\n{stderr}")
    res = json.loads(stdout.splitlines()[-1])
    res["process_s"] = wall
    res["peak_rss_mib"] = usage.ru_maxrss / 1024
    return res


# ---------------------------------------------------------------------------- read speed
def drop_file_cache(path: Path) -> None:
    """Evict ``path``'s pages from the page cache (only this file's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def prime_memory(nbytes: int) -> None:
    """Touch and free twice ``nbytes`` of memory just before a timed cold read.

    On this VM, memory the guest frees is handed back to the host after a while (free page
    reporting), and touching it again costs host page faults. A cold read needs about twice its
    size in fresh pages (its output array and the page cache it reads through); without this
    every few reads took 1.3-1.9 s instead of 0.4-0.5 s with the disk busy for the same ~0.33 s
    (``/sys/block/vda/stat``), whichever file format was read; the raw read, which needs only
    the page cache just freed, was never slow."""
    np.ones(2 * nbytes // 4 + (16 << 20), dtype=np.float32)


def raw_read(path: Path) -> float:
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(view):
            pass
    return time.perf_counter() - t


def build_store(root: Path, rows: int, dim: int, part_rows: int) -> tuple[Any, list[str]]:
    from featurestore.store import FeatureStore

    spec = {"backbone": "scale-bench", "rows": rows, "dim": dim}
    store = FeatureStore.for_spec(root, spec)
    rng = np.random.default_rng(0)
    # Real keys are sha256 hex digests: stored in extraction order, not sorted.
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)]
    for s in range(0, rows, part_rows):
        block = rng.standard_normal((min(part_rows, rows - s), dim), dtype=np.float32)
        store.append(keys[s : s + part_rows], block, provenance={"bench": "scale"})
    store.compact(force=True)
    return store, keys


def format2_copy(store: Any, root: Path) -> Any:
    """The same rows, keys and attributes in a store file of format 2 (fletcher32 on the feature
    chunks, no CRC32s), which featurestore still reads."""
    import h5py

    from featurestore.store import FeatureStore, write_legacy

    old = FeatureStore(root / store.path.name)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(store.path, "r") as src:
        provenance = json.loads(src.attrs["provenance"])
        write_legacy(
            old.path,
            src["keys"][...],
            src["features"],  # copied a block at a time
            format_version=2,
            spec=store.spec,
            provenance=provenance,
        )
    return old


def read_part(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import h5py

    t = time.perf_counter()
    store, keys = build_store(tmp / "read", args.rows, args.dim, args.part_rows)
    old = format2_copy(store, tmp / "read-format2")
    build_s = time.perf_counter() - t
    path = store.path
    size = path.stat().st_size
    nbytes = args.rows * args.dim * 4
    print(
        f"read: store {path.name}, {size / 1e9:.2f} GB on disk for {nbytes / 1e9:.2f} GB of "
        f"rows (built in {build_s:.1f} s); file system of {path.parent}"
    )

    def h5_plain(at: Path) -> Any:
        def run() -> float:
            t = time.perf_counter()
            with h5py.File(at, "r") as f:
                f["features"][...]
            return time.perf_counter() - t

        return run

    def read_all() -> float:
        t = time.perf_counter()
        _, x = store.read_all()
        assert x.shape == (args.rows, args.dim)
        return time.perf_counter() - t

    def read_keys(which: Any) -> Any:
        def run() -> float:
            t = time.perf_counter()
            x = which.read(keys)  # stored order
            assert x.shape == (args.rows, args.dim)
            return time.perf_counter() - t

        return run

    shuffled = list(np.random.default_rng(1).permutation(keys))

    def read_shuffled() -> float:
        t = time.perf_counter()
        x = store.read(shuffled)
        assert x.shape == (args.rows, args.dim)
        return time.perf_counter() - t

    methods = (
        ("raw sequential read of the .h5 file (16 MiB readinto)", lambda: raw_read(path), size),
        ("plain h5py f['features'][...] (format 3: no check)", h5_plain(path), nbytes),
        ("FeatureStore.read(keys), keys in stored order", read_keys(store), nbytes),
        ("FeatureStore.read(keys), keys shuffled", read_shuffled, nbytes),
        ("FeatureStore.read_all() (sorted by key, all rows)", read_all, nbytes),
        ("format 2: plain h5py (fletcher32 checked)", h5_plain(old.path), nbytes),
        ("format 2: FeatureStore.read(keys), stored order", read_keys(old), nbytes),
    )
    # Cold: the file's pages dropped before each read. On a virtual disk the first read of a
    # round is often slower (the host caches too), so the methods take turns and each round
    # starts with the next method: every method is first once; the median is kept.
    cold: dict[str, list[float]] = {name: [] for name, _, _ in methods}
    for r in range(len(methods)):
        for name, fn, _ in methods[r:] + methods[:r]:
            drop_file_cache(path)
            drop_file_cache(old.path)
            prime_memory(nbytes)
            cold[name].append(fn())
    for name, times in cold.items():
        print(f"  cold samples, {name}: {', '.join(f'{t:.3f}' for t in times)} s")
    rows = []
    for name, fn, what in methods:
        fn()  # make sure it is cached
        warm = min(fn() for _ in range(3))
        for state, s in (("cold", float(np.median(cold[name]))), ("warm", warm)):
            rows.append({"read": name, "cache": state, "seconds": s, "GB/s": what / s / 1e9})
            print(f"  {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "_child"])
    p.add_argument("--parts", default="memory,hit,read")
    p.add_argument("--images", default="2000,20000", help="image counts for memory/hit")
    p.add_argument("--backbone", default="mobilenet_v3_small")
    p.add_argument("--weights", default="none")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--part-rows", type=int, default=5_000)
    p.add_argument("--folder", type=Path)
    p.add_argument("--cache", type=Path)
    args = p.parse_args()
    if args.mode == "_child":
        child_extract(args)
        return
    print_machine(machine(torch_too=False))
    parts = set(args.parts.split(","))
    counts = [int(n) for n in args.images.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-cache-scale-") as tmp_name:
        tmp = Path(tmp_name)
        if parts & {"memory", "hit"}:
            rows = []
            for n in counts:
                t = time.perf_counter()
                folder = synthetic_jpegs(n, bench_dir())
                print(f"images: {n} in {folder} ({time.perf_counter() - t:.1f} s to make/find)")
                res = run_child(folder, tmp / f"cache-{n}", args)
                rows.append(child_row(f"extract {n} images (fresh store)", res, res["extracted"]))
                print(f"  {rows[-1]} timings={res['timings']}", flush=True)
                if "hit" not in parts:
                    continue
                hit = run_child(folder, tmp / f"cache-{n}", args)
                assert hit["extracted"] == 0, hit
                rows.append(child_row(f"extract {n} images again (cache hit)", hit, hit["reused"]))
                print(f"  {rows[-1]} timings={hit['timings']}", flush=True)
                cli = run_cli(folder, tmp / f"cache-{n}", args)
                assert cli["extracted"] == 0, cli
                rows.append(
                    {
                        "run": f"`featurestore extract` CLI, {n} images (cache hit)",
                        "img/s": cli["reused"] / cli["seconds"],
                        "extract() s": cli["seconds"],
                        "process s": cli["process_s"],
                        "peak RSS main MiB": cli["peak_rss_mib"],
                        "peak PSS tree MiB": "",
                        "torch": "",
                    }
                )
                print(f"  {rows[-1]} timings={cli['timings']}", flush=True)
            print()
            print(
                f"backbone {args.backbone} weights={args.weights} input {args.input_size} px, "
                f"batch {args.batch_size}; 'process s': the whole process, interpreter and "
                "imports included (torch only where an image is extracted); CLI rows: "
                "extract() s = the summary's seconds, peak RSS from wait4"
            )
            print_table(rows)
        if "read" in parts:
            rows = read_part(args, tmp)
            print()
            print_table(rows)


if __name__ == "__main__":
    main()
