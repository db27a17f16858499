"""Views: what K cached views per image cost to extract, and what they buy a linear head.

Part 1, cost: the same real photos (hymenoptera val, 153 JPEGs of about 500x375) extracted
plain and with each view policy, each into a fresh temporary cache: wall seconds, images/s,
views/s, milliseconds per view.

Part 2, accuracy: for each dataset, a logistic-regression and a linear-SVM head
(scikit-learn's ``LogisticRegression`` and ``LinearSVC`` on standardised rows, C chosen by
``GridSearchCV`` with 5-fold ``StratifiedGroupKFold`` grouped by image key, on the training
split only; the held-out split only evaluates), five ways:

* ``plain``: trained and tested on the plain rows (view 0);
* ``plain+pow/l2``: the same with the signed square root and L2 row normalisation first
  (``classifiers.transforms``, "power+l2");
* ``views``: trained on every view of every training image, tested on the plain rows;
* ``views+tta``: the same head, test score = its decision values averaged over the K views of
  each test image (test-time averaging);
* ``views+tta+pow/l2``: trained on every view with the transforms, tested with averaging.

Datasets (``../shared/datasets``): hymenoptera (train -> val), catvnoncat (train -> test),
builtin:digits (the project's hash split: 20% test, seed 0), caltech101 (101 object classes,
no background; per class a seeded draw of 30 training images and up to 50 test images; mean
per-class accuracy is the column to read there).

    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py
    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py --part accuracy \\
        --datasets caltech101 --policy crops10

Rows come through the cache: a second run only trains heads.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, machine, print_machine, print_table
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from classifiers.split import stratified_hash_split
from classifiers.transforms import make_transform
from featurestore.api import Features, load_features
from featurestore.extraction import extract
from featurestore.options import VIEW_POLICIES
from featurestore.sources import Record, Source, open_source
from featurestore.views import average_views

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = ("hymenoptera", "catvnoncat", "digits", "caltech101")
SEED = 0

HEADS: dict[str, tuple[Callable[[], BaseEstimator], list[float]]] = {
    # the grids of the project's logreg and linear_svm heads (classifiers/heads.py), one step
    # wider on the side where a first run chose the edge (logreg on views: the largest C;
    # the linear SVM on plain rows: the smallest)
    "logreg": (
        lambda: LogisticRegression(solver="lbfgs", max_iter=3000, random_state=SEED),
        [1e-3, 1e-2, 1e-1, 1.0],
    ),
    "linear_svm": (
        lambda: LinearSVC(C=1e-3, dual="auto", max_iter=5000, random_state=SEED),
        [1e-5, 1e-4, 1e-3, 1e-2],
    ),
}
# (name, train on every view?, average the test views?, transform)
VARIANTS = [
    ("plain", False, False, "none"),
    ("plain+pow/l2", False, False, "power+l2"),
    ("views", True, False, "none"),
    ("views+tta", True, True, "none"),
    ("views+tta+pow/l2", True, True, "power+l2"),
]


# ---------------------------------------------------------------------------- part 1: cost
def cost_table(backbone: str, policies: list[str], cache_root: Path | None) -> list[dict]:
    folder = SHARED / "hymenoptera_data" / "val"
    rows = []
    for policy in [None, *policies]:
        with tempfile.TemporaryDirectory(dir=cache_root) as cache:
            r = extract(folder, backbone=backbone, cache_dir=cache, views=policy, progress=True)
        t = r.timings
        rows.append(
            {
                "views": policy or "plain",
                "K": r.views_per_image,
                "images": r.n_extracted,
                "rows": r.n_views_extracted,
                "wall s": r.seconds,
                "compact s": t.get("compact", 0.0),
                "images/s": r.images_per_s,
                "views/s": r.views_per_s,
                "ms/view": 1000 * r.seconds / max(1, r.n_views_extracted),
                "decode s/replica": t.get("decode", 0.0),
                "forward s/replica": t.get("forward", 0.0),
                "workers": r.workers,
            }
        )
    return rows


# ---------------------------------------------------------------------------- part 2: accuracy
def _caltech_split(src: Source) -> tuple[list[Record], list[Record]]:
    """Per object class (background left out): a seeded draw of 30 training images and up to
    50 test images from the rest."""
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for label in sorted({r.label for r in src.records if r.label != "BACKGROUND_Google"}):
        recs = sorted((r for r in src.records if r.label == label), key=lambda r: r.path)
        order = rng.permutation(len(recs))
        train += [recs[i] for i in order[:30]]
        test += [recs[i] for i in order[30:80]]
    return train, test


def dataset_sides(name: str) -> tuple[Source, Source, list[str]]:
    """(training side, held-out side, class names) of a dataset."""
    if name == "hymenoptera":
        src = open_source(SHARED / "hymenoptera_data")
        return src.subset(src.select("train")), src.subset(src.select("val")), src.class_names
    if name == "catvnoncat":
        src = open_source(SHARED / "catvnoncat")
        return src.subset(src.select("train")), src.subset(src.select("test")), src.class_names
    if name == "digits":
        src = open_source("builtin:digits")
        is_test = stratified_hash_split(
            [r.key for r in src.records], [r.label for r in src.records], seed=SEED
        )
        train = [r for r, t in zip(src.records, is_test, strict=True) if not t]
        test = [r for r, t in zip(src.records, is_test, strict=True) if t]
        return src.subset(train), src.subset(test), src.class_names
    if name == "caltech101":
        src = open_source(SHARED / "caltech101")
        train, test = _caltech_split(src)
        names = sorted({r.label for r in train})
        return src.subset(train), src.subset(test), names
    raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def _head(name: str, transform: str) -> tuple[Pipeline, dict[str, list[float]]]:
    build, grid = HEADS[name]
    pipe = Pipeline(
        [("transform", make_transform(transform)), ("scale", StandardScaler()), ("clf", build())]
    )
    return pipe, {"clf__C": grid}


def _predict(model: Any, feats: Features, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) per test image."""
    plain = feats.only_view(0)
    if not tta:
        return plain.y, model.predict(plain.X)
    scores, keys = average_views(model.decision_function(feats.X), feats.keys)
    idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
    predicted = dict(zip(keys, model.classes_[idx], strict=True))  # one per distinct image
    return plain.y, np.array([predicted[k] for k in plain.keys])


def accuracy_rows(
    name: str, backbone: str, policy: str, heads: list[str], cache_dir: Path | None
) -> list[dict]:
    train_src, test_src, names = dataset_sides(name)
    kw = {"backbone": backbone, "views": policy, "cache_dir": cache_dir, "class_names": names}
    t = time.perf_counter()
    train = load_features(train_src, progress=True, **kw)
    test = load_features(test_src, progress=True, **kw)
    load_s = time.perf_counter() - t
    print(
        f"{name}: {len(train.only_view(0))} training / {len(test.only_view(0))} test images, "
        f"{len(names)} classes, {policy} ({train.n_views} views), rows loaded in {load_s:.1f} s",
        flush=True,
    )
    rows = []
    for head in heads:
        searches: dict[tuple[bool, str], tuple[GridSearchCV, float]] = {}
        for variant, on_views, tta, transform in VARIANTS:
            fit_on = train if on_views else train.only_view(0)
            if (on_views, transform) not in searches:  # views and views+tta share one head
                pipe, grid = _head(head, transform)
                cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=SEED)
                search = GridSearchCV(pipe, grid, cv=cv, scoring="accuracy", n_jobs=1)
                t = time.perf_counter()
                search.fit(fit_on.X, fit_on.y, groups=fit_on.keys)
                searches[on_views, transform] = search, time.perf_counter() - t
            search, fit_s = searches[on_views, transform]
            y_true, y_pred = _predict(search.best_estimator_, test, tta)
            rows.append(
                {
                    "dataset": name,
                    "head": head,
                    "variant": variant,
                    "train rows": len(fit_on),
                    "CV acc": search.best_score_,
                    "C": search.best_params_["clf__C"],
                    "test acc": accuracy_score(y_true, y_pred),
                    "mean per-class acc": balanced_accuracy_score(y_true, y_pred),
                    "test images": len(y_true),
                    "fit s": fit_s,
                }
            )
            print(
                f"  {head:10s} {variant:18s} test {rows[-1]['test acc']:.4f}  "
                f"(CV {search.best_score_:.4f}, C={rows[-1]['C']:g}, {fit_s:.0f} s)",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["cost", "accuracy", "both"], default="both")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--policy", choices=VIEW_POLICIES, default="crops10", help="for accuracy")
    ap.add_argument(
        "--cost-policies", nargs="+", choices=VIEW_POLICIES, default=list(VIEW_POLICIES)
    )
    ap.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=["hymenoptera", "catvnoncat", "digits"]
    )
    ap.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: $FEATURESTORE_CACHE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(machine())
    if args.part in ("cost", "both"):
        print(f"\n## Extraction cost, {args.backbone}, hymenoptera val (153 photos)\n")
        print_table(cost_table(args.backbone, args.cost_policies, args.cache_dir))
    if args.part in ("accuracy", "both"):
        rows: list[dict] = []
        for name in args.datasets:
            rows += accuracy_rows(name, args.backbone, args.policy, args.heads, args.cache_dir)
        print(f"\n## Accuracy, {args.backbone}, views = {args.policy}\n")
        print_table(rows)


if __name__ == "__main__":
    main()
