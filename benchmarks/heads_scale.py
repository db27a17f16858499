"""How the classifier heads' cost grows with classes, rows and width, against the scikit-learn
configuration they replace.

For each data point it runs **the whole default sweep** (``classifiers.run_sweep``: every
registered head, its search, 5-fold CV on the training split, refit, test; with a source's
raw-pixel baseline beside its efficientnet_lite0 rows, as ``featurestore sweep`` does) and,
side by side in the same process, **the previous configuration**: each head as scikit-learn
estimators behind a ``StandardScaler`` in ``GridSearchCV`` over its former grid (``LinearSVC``
one-vs-rest through liblinear with C in 1e-4, 1e-3, 1e-2; ``LogisticRegression`` lbfgs with C
in 1e-3, 1e-2, 1e-1; ``SVC`` rbf; ``MLPClassifier``; ``KNeighborsClassifier``; ``GaussianNB``),
same 80/20 split, 5 stratified shuffled folds. Every scikit-learn head runs in a forked child
that is stopped at ``--sklearn-cap`` seconds (reported as "> cap"), so the big grid points do
not run for hours.

Data:

- ``real``: cached efficientnet_lite0 rows (``FEATURESTORE_CACHE``; missing rows are an error,
  nothing is extracted) of ``builtin:digits`` (10 classes), hymenoptera (2), catvnoncat (2) and
  caltech101 (101 classes, 8,677 photos, no split: the sweep's seeded stratified hash split of
  the image keys, test fraction 0.2, seed 0), plus each one's 16x16 raw-pixel rows (the
  sweep's default baseline). Caltech101 accuracy is reported plain and as mean per-class
  accuracy.
- ``classes`` / ``rows`` / ``widths``: hard synthetic rows (``hard()``: classes whose centres
  overlap in a 64-d latent space, mapped to the width with noise, ReLU'd like pooled features,
  5% of labels flipped; far from separable), along one axis at a time from 10,000 x 2,048.

    python benchmarks/heads_scale.py --quick
    FEATURESTORE_CACHE=/work/cache-heads python benchmarks/heads_scale.py --part real
    python benchmarks/heads_scale.py --part classes --classes 2 10 100 1000
    python benchmarks/heads_scale.py --part rows --rows 1000 10000 100000 --heads linear_svm logreg
    python benchmarks/heads_scale.py --part widths

Prints the machine and load, then per data point a table: seconds (ours / scikit-learn /
ratio), test accuracy, mean per-class accuracy and the chosen regularisation. Not a test.
Our sweep fits its (feature set, head) pairs side by side on worker processes, one per core
(``run_sweep``'s default; ``classifiers.pool``): a head's seconds are its own pair's, on one
core, and "whole sweep (wall)" is the sweep's elapsed time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from _common import REPO, machine, print_machine
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from classifiers import FeatureSet, list_heads, run_sweep
from classifiers.heads import ShapeDualLinearSVC

DATASETS = REPO.parent / "shared" / "datasets"
REAL = {
    "digits": "builtin:digits",
    "hymenoptera": str(DATASETS / "hymenoptera_data"),
    "catvnoncat": str(DATASETS / "catvnoncat"),
    "caltech101": str(DATASETS / "caltech101"),
}


def _scaled(clf: Any) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", clf)])


def previous_heads() -> dict[str, tuple[Pipeline, dict[str, list]]]:
    """The heads and grids of the registry before the batched heads (as on main before them)."""
    return {
        "linear_svm": (
            _scaled(ShapeDualLinearSVC(C=1e-3, dual="auto", max_iter=5000, random_state=0)),
            {"clf__C": [1e-4, 1e-3, 1e-2]},
        ),
        "rbf_svm": (
            _scaled(SVC(kernel="rbf", gamma="scale", random_state=0)),
            {"clf__C": [1.0, 10.0, 100.0]},
        ),
        "gaussian_nb": (
            Pipeline([("clf", GaussianNB())]),
            {"clf__var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]},
        ),
        "logreg": (
            _scaled(LogisticRegression(solver="lbfgs", max_iter=3000, random_state=0)),
            {"clf__C": [1e-3, 1e-2, 1e-1]},
        ),
        "mlp": (
            _scaled(
                MLPClassifier(
                    hidden_layer_sizes=(256,),
                    learning_rate_init=3e-3,
                    early_stopping=True,
                    validation_fraction=0.1,
                    n_iter_no_change=10,
                    max_iter=200,
                    random_state=0,
                )
            ),
            {"clf__alpha": [1e-4, 1e-2, 1.0]},
        ),
        "knn": (
            _scaled(KNeighborsClassifier(weights="distance")),
            {"clf__n_neighbors": [1, 5, 15], "clf__metric": ["euclidean", "cosine"]},
        ),
    }


#: ``hard``'s recipe: latent dimensions, spread of the class centres (against unit noise),
#: noise added to the mapped columns, share of labels flipped.
LATENT, SPREAD, COLUMN_NOISE, FLIPPED = 64, 0.4, 0.5, 0.05


def hard(
    n: int, d: int, k: int, seed: int = 0, spread: float = SPREAD
) -> tuple[np.ndarray, np.ndarray]:
    """Hard synthetic rows: overlapping class centres (``spread`` 0.4 against unit noise) in 64
    latent dimensions, a random map to ``d`` columns plus noise, ReLU, 5% labels flipped."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, LATENT)) * spread
    y = np.arange(n) % k
    rng.shuffle(y)
    z = centres[y] + rng.normal(size=(n, LATENT))
    A = rng.normal(size=(LATENT, d)) / np.sqrt(LATENT)
    X = np.maximum(z @ A + COLUMN_NOISE * rng.normal(size=(n, d)), 0).astype(np.float32)
    flipped = rng.random(n) < FLIPPED
    y[flipped] = rng.integers(0, k, int(flipped.sum()))
    return X, y


def synthetic_set(n: int, d: int, k: int, spread: float = SPREAD) -> FeatureSet:
    X, y = hard(n, d, k, spread=spread)
    tr, te = train_test_split(np.arange(n), test_size=0.2, stratify=y, random_state=0)
    return FeatureSet(
        name=f"hard{n}x{d}k{k}",
        X_train=X[tr],
        y_train=y[tr],
        X_test=X[te],
        y_test=y[te],
        class_names=[str(c) for c in range(k)],
    )


def real_sets(name: str) -> tuple[list[FeatureSet], str, float]:
    """efficientnet_lite0 rows (from the cache only) and 16x16 raw pixels; the split's
    description; seconds spent reading rows and decoding pixels (not part of the sweep)."""
    from featurestore.featuresets import build_sweep_data

    start = time.perf_counter()
    data = build_sweep_data(
        REAL[name], backbones=["efficientnet_lite0"], pixels=True, extract_missing=False
    )
    return data.feature_sets, data.plan.description, time.perf_counter() - start


@dataclass
class Cell:
    seconds: float | None  # None: stopped at the cap
    accuracy: float | None = None
    per_class: float | None = None
    params: str = ""
    error: str = ""


def _short(params: dict[str, Any]) -> str:
    out = []
    for key, value in sorted(params.items()):
        if key.endswith(("__cv", "__scoring", "__n_jobs")):
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        out.append(f"{key.split('__')[-1]}={value}")
    return ", ".join(out)


def ours(sets: Sequence[FeatureSet], heads: Sequence[str]) -> tuple[dict, float]:
    """The whole default sweep; per (set, head) its cell, and the sweep's wall time."""
    start = time.perf_counter()
    results = run_sweep(list(sets), heads=list(heads))
    wall = time.perf_counter() - start
    cells: dict[tuple[str, str], Cell] = {}
    by_name = {fs.name: fs for fs in sets}
    for r in results:
        y_test = by_name[r.feature_set].y_test
        classes = np.unique(by_name[r.feature_set].y_train)
        pred = classes[r.evaluation.y_pred] if len(classes) else r.evaluation.y_pred
        cells[(r.feature_set, r.head)] = Cell(
            r.fit_seconds + r.predict_seconds,
            r.accuracy,
            float(balanced_accuracy_score(y_test, pred)),
            _short(r.best_params),
        )
    for f in results.failures:
        cells[(f.feature_set, f.head)] = Cell(f.fit_seconds, error=f.error[:60])
    return cells, wall


def _previous_child(conn: Any, fs: FeatureSet, head: str) -> None:
    warnings.simplefilter("ignore", ConvergenceWarning)
    pipe, grid = previous_heads()[head]
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    start = time.perf_counter()
    with threadpool_limits(1):  # as the previous sweep ran it (one BLAS thread, n_jobs=1)
        search = GridSearchCV(clone(pipe), grid, cv=folds, n_jobs=1).fit(fs.X_train, fs.y_train)
        pred = search.predict(fs.X_test)
    conn.send(
        Cell(
            time.perf_counter() - start,
            float((pred == fs.y_test).mean()),
            float(balanced_accuracy_score(fs.y_test, pred)),
            _short(search.best_params_),
        )
    )


def previous(fs: FeatureSet, head: str, cap: float) -> Cell:
    """The previous configuration of ``head`` on ``fs``, stopped at ``cap`` seconds."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_previous_child, args=(child, fs, head))
    proc.start()
    child.close()
    cell = Cell(None) if not parent.poll(cap) else parent.recv()
    if proc.is_alive():
        proc.kill()
    proc.join()
    return cell


def _fmt(value: float | None, spec: str, cap: float | None = None) -> str:
    if value is None:
        return f"> {cap:.0f}" if cap is not None else "-"
    return format(value, spec)


def report(
    title: str,
    sets: Sequence[FeatureSet],
    heads: Sequence[str],
    baseline: Sequence[str],
    cap: float,
    note: str = "",
    baseline_sets: int | None = None,
) -> dict[str, Any]:
    load = os.getloadavg()[0]
    cells, wall = ours(sets, heads)
    old: dict[tuple[str, str], Cell] = {}
    for fs in sets[:baseline_sets]:
        for head in heads:
            if head in baseline:
                old[(fs.name, head)] = previous(fs, head, cap)
    shape = ", ".join(
        f"{fs.name} {len(fs.X_train)}+{len(fs.X_test)} x {fs.X_train.shape[1]}" for fs in sets
    )
    print(f"\n### {title}\n")
    print(f"{shape}; {len(np.unique(sets[0].y_train))} classes. {note}")
    print(f"Load average (1 min) before: {load:.2f}, after: {os.getloadavg()[0]:.2f}.\n")
    print(
        "| set | head | ours s | sklearn s | sklearn/ours | ours test acc | sklearn test acc "
        "| ours per-class acc | sklearn per-class acc | ours chosen | sklearn chosen |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    old_total, capped = 0.0, False
    for fs in sets:
        for head in heads:
            c = cells.get((fs.name, head), Cell(None, error="missing"))
            o = old.get((fs.name, head))
            ratio = "-"
            if o is not None and o.seconds is not None and c.seconds:
                ratio = f"{o.seconds / c.seconds:.1f}"
                old_total += o.seconds
            elif o is not None and c.seconds:
                ratio = f"> {cap / c.seconds:.0f}"
                old_total += cap
                capped = True
            print(
                f"| {fs.name} | {head} | {_fmt(c.seconds, '.2f')} "
                f"| {_fmt(o.seconds, '.2f', cap) if o else '-'} | {ratio} "
                f"| {_fmt(c.accuracy, '.4f')} | {_fmt(o.accuracy, '.4f') if o else '-'} "
                f"| {_fmt(c.per_class, '.4f')} | {_fmt(o.per_class, '.4f') if o else '-'} "
                f"| {c.params or c.error} | {o.params if o else ''} |"
            )
    old_text = f"{'> ' if capped else ''}{old_total:.1f}" if old else "-"
    print(f"| **whole sweep (wall)** | | **{wall:.2f}** | {old_text} | | | | | | | |")
    return {"title": title, "wall": wall, "cells": cells, "old": old, "load": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="*", default=["real", "classes", "rows", "widths"])
    parser.add_argument("--sets", nargs="*", default=list(REAL), help="real data sets")
    parser.add_argument("--classes", nargs="*", type=int, default=[2, 10, 100, 1000])
    parser.add_argument("--rows", nargs="*", type=int, default=[1000, 10000, 100000])
    parser.add_argument("--widths", nargs="*", type=int, default=[512, 1280, 2048, 4096])
    parser.add_argument("--base-rows", type=int, default=10000)
    parser.add_argument("--base-width", type=int, default=2048)
    parser.add_argument("--base-classes", type=int, default=10)
    parser.add_argument("--heads", nargs="*", help="head names (default: every head)")
    parser.add_argument(
        "--sklearn-heads",
        nargs="*",
        default=["linear_svm", "logreg"],
        help="heads run in the previous scikit-learn configuration too ('all' for every one)",
    )
    parser.add_argument("--sklearn-cap", type=float, default=300.0, help="seconds per head")
    parser.add_argument(
        "--sklearn-backbone-only",
        action="store_true",
        help="real data: run the scikit-learn heads on the backbone rows only, not the pixels",
    )
    parser.add_argument("--quick", action="store_true", help="a small subset, in a few minutes")
    args = parser.parse_args(argv)
    heads = args.heads or [spec.name for spec in list_heads()]
    baseline = heads if args.sklearn_heads == ["all"] else args.sklearn_heads
    if args.quick:
        args.part, args.sets = ["real", "classes"], ["digits"]
        args.classes, args.base_rows, args.base_width = [2, 10, 100], 2000, 512
    print_machine(machine(torch_too=True))
    print(f"sklearn cap: {args.sklearn_cap:.0f} s per head; sklearn heads: {', '.join(baseline)}")

    if "real" in args.part:
        for name in args.sets:
            sets, split, load_s = real_sets(name)
            note = f"Split: {split}. Rows read and pixels decoded in {load_s:.1f} s (not timed)."
            report(
                f"{name}: efficientnet_lite0 and {sets[-1].name}",
                sets,
                heads,
                baseline,
                args.sklearn_cap,
                note,
                baseline_sets=1 if args.sklearn_backbone_only else None,
            )
    n, d, k = args.base_rows, args.base_width, args.base_classes
    if "classes" in args.part:
        for classes in args.classes:
            fs = synthetic_set(n, d, classes)
            report(f"hard synthetic, {classes} classes", [fs], heads, baseline, args.sklearn_cap)
    if "rows" in args.part:
        for rows in args.rows:
            fs = synthetic_set(rows, d, k)
            report(f"hard synthetic, {rows} rows", [fs], heads, baseline, args.sklearn_cap)
    if "widths" in args.part:
        for width in args.widths:
            fs = synthetic_set(n, width, k)
            report(f"hard synthetic, width {width}", [fs], heads, baseline, args.sklearn_cap)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
