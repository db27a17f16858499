"""What writing a sweep's report costs as classes grow: time and the size of each file.

Rows: ``heads_scale.hard``'s recipe (centres 1.2 apart, 20 rows per class, 64 columns, 80/20),
swept with naive Bayes and kNN (fast heads: the point is the report, not the fits), then
``write_report`` of those two rows into a fresh folder.

    python benchmarks/report_scale.py --classes 100 1000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import machine, print_machine
from heads_scale import synthetic_set

from classifiers.sweep import run_sweep
from featurestore.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args(argv)
    print_machine(machine(torch_too=False))
    print("| classes | report s | leaderboard.json | confusion_best.png | roc.png |")
    print("|---:|---:|---:|---:|---:|")
    for k in args.classes:
        fs = synthetic_set(20 * k, 64, k, spread=1.2)
        results = run_sweep([fs], heads=["gaussian_nb", "knn"], workers=1)
        folder = Path(tempfile.mkdtemp()) / "report"
        start = time.perf_counter()
        paths = write_report(results, folder, title=f"{k} classes", provenance={})
        seconds = time.perf_counter() - start
        kib = {name: path.stat().st_size // 1024 for name, path in paths.items()}
        print(
            f"| {k:,} | {seconds:.1f} | {kib['json']:,} KiB | {kib['confusion']:,} KiB "
            f"| {kib['roc']:,} KiB |",
            flush=True,
        )
        shutil.rmtree(folder.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
