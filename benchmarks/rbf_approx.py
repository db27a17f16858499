"""The RBF SVM head exact and approximated, side by side in one run: seconds and accuracy.

``RBFSVMHeadCV`` fits libsvm on exact kernels up to ``max_exact_rows`` (20,000) training rows
and, past it or where the kernels would not fit in the free memory, a Nystroem map (1,024
landmarks) with the batched linear SVM (``classifiers/nystroem.py``). This runs both modes
(``approximate=False`` then ``True``, each with its default grid, 5-fold CV on the training
split, refit, test) on the same rows: hard synthetic rows (``heads_scale.hard``: overlapping
classes, 2,048 columns, 80/20 split) at several row and class counts, and cached
efficientnet_lite0 rows of real sets (``FEATURESTORE_CACHE``; the sweep's split). An exact fit
that would not fit in memory is reported as refused, as the head says. Not a test.

    python benchmarks/rbf_approx.py
    python benchmarks/rbf_approx.py --rows 5000 10000 20000 --classes 10 100 --big 100000
    FEATURESTORE_CACHE=/work/cache-heads python benchmarks/rbf_approx.py --rows --big \
        --real digits caltech101
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import machine, print_machine, print_table
from heads_scale import real_sets, synthetic_set
from sklearn.metrics import balanced_accuracy_score

from classifiers import FeatureSet
from classifiers.kernel import RBFSVMHeadCV


def run(fs: FeatureSet, approximate: bool) -> dict[str, Any]:
    """Fit one mode on ``fs``'s training rows, score its test rows."""
    start = time.perf_counter()
    try:
        head = RBFSVMHeadCV(approximate=approximate).fit(fs.X_train, fs.y_train)
    except MemoryError as error:
        return {"mode": "exact", "seconds": "", "error": str(error)}
    predicted = head.predict(fs.X_test)
    seconds = time.perf_counter() - start
    per_class = balanced_accuracy_score(fs.y_test, predicted)  # mean per-class accuracy
    return {
        "mode": "approximate" if head.approximated_ else "exact",
        "seconds": round(seconds, 2),
        "C": f"{head.best_params_['C']:.3g}",
        "CV": round(head.best_score_, 4),
        "test acc": round(float((predicted == fs.y_test).mean()), 4),
        "per-class acc": round(float(per_class), 4),
        "error": "",
    }


def compare(fs: FeatureSet, modes: tuple[bool, ...] = (False, True)) -> list[dict[str, Any]]:
    rows = []
    for approximate in modes:
        cell = run(fs, approximate)
        rows.append({"set": fs.name, "train rows": len(fs.y_train), **cell})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", type=int, default=[5000, 10000, 20000])
    parser.add_argument("--classes", nargs="*", type=int, default=[10, 100])
    parser.add_argument("--big", nargs="*", type=int, default=[100000], help="rows, 10 classes")
    parser.add_argument("--real", nargs="*", default=[], help="digits, caltech101, ...")
    args = parser.parse_args(argv)
    print_machine(machine(torch_too=True))
    table: list[dict[str, Any]] = []
    for name in args.real:
        table += compare(real_sets(name)[0][0])  # the efficientnet_lite0 rows
    for rows in args.rows:
        for classes in args.classes:
            if classes == 10 or rows == 10000:  # 100 classes at one row count
                table += compare(synthetic_set(rows, 2048, classes))
    for rows in args.big:
        table += compare(synthetic_set(rows, 2048, 10))
    print()
    print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
