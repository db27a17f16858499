"""Time the full classifier sweep: every head, its whole grid, k-fold CV, refit, test scoring.

Default data: 2,000 x 1,280 float32 rows from ``make_classification`` (10 classes), a
SYNTHETIC stand-in for EfficientNet-Lite0-sized bottleneck features. Pass ``--features
PATH.npz`` (arrays ``X`` and ``y``; optional ``keys``, the image sha256 hex strings) to time
real rows saved to a file, or ``--source SRC --backbone NAME`` to read them from the feature
store through the cache (extracting what is missing first; the extraction is not timed). Rows are
split 80/20 with ``stratified_hash_split``.

    python benchmarks/sweep_speed.py
    python benchmarks/sweep_speed.py --source builtin:digits --backbone efficientnet_lite0
    python benchmarks/sweep_speed.py --features cache/lite0_hymenoptera.npz --n-jobs 2

Prints a per-head table (seconds, CV and test accuracy) and the total. Not a test; never
imported by the library.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sklearn.datasets import make_classification
from threadpoolctl import threadpool_info

from classifiers import (
    FeatureSet,
    get_head,
    list_heads,
    run_sweep,
    stratified_hash_split,
)


def _synthetic(n: int, d: int, n_classes: int, *, nonneg: bool) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=n,
        n_features=d,
        n_informative=64,
        n_redundant=64,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=2.0,
        random_state=0,
    )
    X = X.astype(np.float32)
    if nonneg:  # mimic pooled post-ReLU activations: non-negative, many zeros
        X = np.maximum(X, 0.0)
    return X, y


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    with np.load(path, allow_pickle=False) as data:
        missing = {"X", "y"} - set(data.files)
        if missing:
            raise SystemExit(f"{path} lacks arrays {sorted(missing)}; it has {data.files}")
        keys = [str(k) for k in data["keys"]] if "keys" in data.files else None
        return np.asarray(data["X"], dtype=np.float32), np.asarray(data["y"]), keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, help="npz with arrays X, y (optional keys)")
    parser.add_argument("--source", help="a featurestore source (e.g. builtin:digits)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="with --source")
    parser.add_argument("--samples", type=int, default=2000, help="synthetic rows")
    parser.add_argument("--dim", type=int, default=1280, help="synthetic feature width")
    parser.add_argument("--classes", type=int, default=10, help="synthetic classes")
    parser.add_argument("--nonneg", action="store_true", help="synthetic rows clipped at 0")
    parser.add_argument("--heads", nargs="*", help="head names (default: every head)")
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="run_sweep(blas_threads=...); 0 = no limit"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each fit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    if args.source:
        from featurestore.api import load_features

        feats = load_features(args.source, backbone=args.backbone, progress=True)
        X, y_raw, keys = feats.X, feats.y, feats.keys
        source = f"{args.source} (real {args.backbone} rows read from the feature store)"
    elif args.features:
        X, y_raw, keys = _load(args.features)
        source = f"{args.features} (real features)"
    else:
        X, y_raw = _synthetic(args.samples, args.dim, args.classes, nonneg=args.nonneg)
        keys = None
        kind = "non-negative " if args.nonneg else ""
        source = f"SYNTHETIC {kind}make_classification (class_sep=2.0, 64 informative)"
    class_values, y = np.unique(y_raw, return_inverse=True)
    if keys is None:  # stand-in image keys: hash of each row's bytes
        keys = [hashlib.sha256(row.tobytes()).hexdigest() for row in X]
    test = stratified_hash_split(keys, y, test_fraction=0.2, seed=0)
    feature_set = FeatureSet(
        name="bench",
        X_train=X[~test],
        y_train=y[~test],
        X_test=X[test],
        y_test=y[test],
        class_names=[str(c) for c in class_values],
    )
    heads = args.heads or [spec.name for spec in list_heads()]
    blas = sorted({f"{i['internal_api']}x{i['num_threads']}" for i in threadpool_info()})

    print(f"data     : {source}")
    print(f"shape    : {X.shape[0]} x {X.shape[1]} {X.dtype}, {len(class_values)} classes")
    print(f"split    : {(~test).sum()} train / {test.sum()} test, {args.cv}-fold CV on train")
    print(f"machine  : {platform.platform()}, {platform.processor() or platform.machine()}")
    print(f"           os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))},")
    print(
        f"           thread pools {', '.join(blas)}, n_jobs={args.n_jobs}, "
        f"blas_threads={args.blas_threads or 'no limit'}"
    )
    print(f"python   : {platform.python_version()}")
    print(f"load avg : {' '.join(f'{v:.2f}' for v in os.getloadavg())} (before)")

    rows = []
    wall_total = cpu_total = 0.0
    for name in heads:  # one head at a time, to time each with wall and CPU clocks
        wall, cpu = time.perf_counter(), time.process_time()
        (result,) = run_sweep(
            [feature_set],
            heads=[name],
            cv=args.cv,
            n_jobs=args.n_jobs,
            blas_threads=args.blas_threads or None,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall_total += wall
        cpu_total += cpu
        rows.append((name, result, wall, cpu))

    # CPU seconds of this process: with n_jobs=1 and one BLAS thread they match the wall time
    # of an idle machine, and stay meaningful when other work competes for the cores.
    cpu_note = "" if args.n_jobs == 1 else " (workers not counted)"
    print()
    print(
        f"| head | grid pts | fits | fit s | predict s | wall s | CPU s{cpu_note} | CV acc "
        "| test acc | best params |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, r, wall, cpu in rows:
        points = int(np.prod([len(v) for v in get_head(name).grid.values()]))
        params = ", ".join(f"{k.split('__')[-1]}={v}" for k, v in sorted(r.best_params.items()))
        print(
            f"| {name} | {points} | {points * r.cv_folds + 1} | {r.fit_seconds:.2f} "
            f"| {r.predict_seconds:.2f} | {wall:.2f} | {cpu:.2f} | {r.cv_score:.4f} "
            f"| {r.accuracy:.4f} | {params} |"
        )
        for message in r.warnings:
            print(f"|   warning: {message[:120]} |")
    print(f"| **total** | | | | | **{wall_total:.2f}** | **{cpu_total:.2f}** | | | |")
    print(f"\nload avg : {' '.join(f'{v:.2f}' for v in os.getloadavg())} (after)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
