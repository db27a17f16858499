"""LinearSVC's dual and primal solvers side by side: the numbers behind the linear SVM head's
rule (dual while rows <= 2 x features, primal beyond; ``classifiers.heads.ShapeDualLinearSVC``).

Two data sets: real EfficientNet-Lite0 rows of ``builtin:digits`` read from the feature store
(1,430 training rows x 1,280, 10 classes; extracted first if missing), and 10,000 x 2,048
synthetic rows shaped like pooled ResNet-50 features (2 classes). Rows are standardised, as in
the head; one fit per cell.

    python benchmarks/svm_solvers.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from _common import machine, print_machine, print_table
from heads_speed import synthetic
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--C", default="1e-4,1e-3,1e-2,1e-1", help="comma list of C values")
    args = p.parse_args()
    from featurestore.api import load_features

    print_machine(machine(torch_too=False))
    digits = load_features("builtin:digits", backbone="efficientnet_lite0")
    sets = {
        "digits lite0 1,430 x 1,280": (digits.X[:1430], digits.y[:1430]),
        "synthetic 10,000 x 2,048": synthetic(10_000, 2048, 2),
    }
    rows = []
    for name, (X, y) in sets.items():
        for dual in (True, False):
            row: dict[str, object] = {"data": name, "solver": "dual" if dual else "primal"}
            for C in (float(c) for c in args.C.split(",")):
                svm = LinearSVC(dual=dual, C=C, max_iter=5000, random_state=0)
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    make_pipeline(StandardScaler(), svm).fit(X, y)
                row[f"C={C:g} s"] = round(time.perf_counter() - t, 2)
            rows.append(row)
            print(f"  {row}", flush=True)
    print_table(rows)
    print(f"numpy {np.__version__}")


if __name__ == "__main__":
    main()
