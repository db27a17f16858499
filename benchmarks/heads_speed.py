"""Fit time of the logistic-regression and linear-SVM heads on 10,000 x 2,048 float32 rows.

The heads are the registry's own (``classifiers.get_head``: StandardScaler + LogisticRegression
(lbfgs) / LinearSVC (liblinear dual)), fitted once at each value of their grid and at the
estimator's default C. Data: ``make_classification`` rows shaped like pooled post-ReLU
ResNet-50 features (2,048-d, non-negative, many zeros); ``--features PATH.npz`` (arrays X, y)
times real rows instead.

    python benchmarks/heads_speed.py
    python benchmarks/heads_speed.py --rows 10000 --dim 2048 --classes 10

Prints the machine, the BLAS threads and a Markdown table (seconds per fit, training accuracy).
Not a test.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from _common import machine, print_machine, print_table
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

from classifiers import get_head


def synthetic(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=n,
        n_features=d,
        n_informative=min(d, 128),
        n_redundant=min(d // 4, 256),
        n_classes=classes,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.02,
        random_state=seed,
    )
    return np.maximum(X, 0.0).astype(np.float32), y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--heads", default="logreg,linear_svm")
    p.add_argument("--features", type=Path, default=None, help=".npz with arrays X and y")
    args = p.parse_args()

    from threadpoolctl import threadpool_info

    info = machine(torch_too=False)
    blas = threadpool_info()
    info["blas"] = "; ".join(f"{b['internal_api']} x{b['num_threads']}" for b in blas)
    print_machine(info)
    if args.features:
        with np.load(args.features) as data:
            X, y = data["X"].astype(np.float32), data["y"]
        what = f"{args.features} {X.shape}"
    else:
        t = time.perf_counter()
        X, y = synthetic(args.rows, args.dim, args.classes)
        what = f"synthetic {X.shape[0]} x {X.shape[1]} float32, {args.classes} classes"
        print(f"data: {what} (made in {time.perf_counter() - t:.1f} s)")
    rows = []
    for name in args.heads.split(","):
        spec = get_head(name)
        points = [{}] + [{k: v} for k, vs in spec.grid.items() for v in vs]
        for params in points:
            est = clone(spec.build()).set_params(**params)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                t = time.perf_counter()
                est.fit(X, y)
                fit_s = time.perf_counter() - t
            converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            clf = est.named_steps["clf"]
            rows.append(
                {
                    "head": name,
                    "params": ", ".join(f"{k}={v}" for k, v in params.items()) or "default",
                    "fit s": fit_s,
                    "iterations": int(np.max(clf.n_iter_)),
                    "converged": converged,
                    "train acc": float(np.mean(est.predict(X) == y)),
                    "< 10 s": fit_s < 10,
                }
            )
            print(f"  {rows[-1]}", flush=True)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
