"""Views: what K cached views per image cost to extract, and what they buy once the
configuration is chosen by cross-validation on the training split alone.

Part 1, cost: the same real photos (hymenoptera val, 153 JPEGs of about 500x375) extracted
plain and with each view policy, each into a fresh temporary cache: wall seconds, images/s,
views/s, milliseconds per view.

Part 2, plain vs views, each chosen by CV on the training split (the held-out split never
chooses). Candidates: heads (scikit-learn's ``LogisticRegression`` and ``LinearSVC`` on
standardised rows, each with its grid of C; ``--heads ridge``: ``RidgeClassifier`` and its
grid of alpha, for caltech101's 101 classes) x feature transforms (``classifiers.transforms``:
"none", "power+l2", ...), in two families:

* **plain**: trained on the plain rows (view 0), one per image;
* **views**: trained on every view of every training image, scored on the identity view
  (``tta=no``) or with test-time averaging (``tta=yes``: the head's decision values averaged
  over the image's K views). One fit serves both.

Cross-validation: 5 folds of *images* (``StratifiedGroupKFold`` grouped by image key, seeded),
the same folds for both families; a views head is trained on every view of the fold's training
images and scored per validation image, so every CV score is an accuracy over the same images
and plain, views and views+tta candidates are on one scale. In each family the chosen
candidate has the best mean CV accuracy, with the project's tie rule
(``featurestore.report.selection``: means equal to 9 decimals go to the smaller spread of the
fold scores, then to the earlier candidate; candidates are listed head, transform, C, tta off
before on). The chosen plain and views configurations are then refitted on the whole training
split and scored once on the held-out split: accuracy, correct test images and (read it for
caltech101) mean per-class accuracy; ``diff`` is views minus plain, in test images.

Datasets (``../shared/datasets``): hymenoptera (train -> val), catvnoncat (train -> test),
builtin:digits (the project's hash split: 20% test, seed 0), caltech101 (101 object classes,
no background; per class a seeded draw of 30 training images and up to 50 test images).

    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py --part cost
    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py --part accuracy \\
        --datasets hymenoptera catvnoncat digits --policy crops10
    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py --part accuracy \\
        --datasets caltech101 --policy flip --heads ridge

Rows come through the cache: a run first extracts what is missing (the "views extracted"
and "extract s" columns; 0 when every view was cached), a second run only trains heads.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, machine, print_machine, print_table
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from classifiers.split import stratified_hash_split
from classifiers.transforms import TRANSFORMS, make_transform
from featurestore.api import Features, load_features
from featurestore.extraction import extract
from featurestore.options import VIEW_POLICIES
from featurestore.report.selection import rank
from featurestore.sources import Record, Source, open_source

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = ("hymenoptera", "catvnoncat", "digits", "caltech101")
SEED = 0
N_FOLDS = 5
SELECTION = (
    "in each family the best mean CV accuracy on the training split (5 folds of images, the "
    "same for both families; views heads trained on every view of the fold's training images "
    "and scored per validation image); means equal to 9 decimals go to the smaller spread of "
    "the fold scores, then to the earlier candidate (head, transform, C, tta off before on); "
    "the held-out split is scored once, for the two chosen configurations"
)

HEADS: dict[str, tuple[Callable[[], BaseEstimator], str, list[float]]] = {
    # (build, regularisation parameter, its grid). logreg and linear_svm: the grids of the
    # project's heads (classifiers/heads.py), one step wider on the side where a first run
    # chose the edge. ridge: scikit-learn's RidgeClassifier (one least-squares solve for every
    # class), the head that stays fast with caltech101's 101 classes on a loaded 2-core machine
    # (LinearSVC took 250-570 s per C there for 5 folds of the plain rows alone).
    "logreg": (
        lambda: LogisticRegression(solver="lbfgs", max_iter=3000, random_state=SEED),
        "C",
        [1e-3, 1e-2, 1e-1, 1.0],
    ),
    "linear_svm": (
        lambda: LinearSVC(C=1e-3, dual="auto", max_iter=5000, random_state=SEED),
        "C",
        [1e-5, 1e-4, 1e-3, 1e-2],
    ),
    "ridge": (lambda: RidgeClassifier(), "alpha", [10.0, 100.0, 1e3, 1e4]),
}


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


# ------------------------------------------------------------------ part 2: plain vs views
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


@dataclass
class Candidate:
    """One configuration and its CV score on the training split (mean and spread of the fold
    accuracies, per image)."""

    family: str  # "plain" or "views"
    head: str
    transform: str
    C: float
    tta: bool
    cv_score: float = float("nan")
    cv_std: float = float("nan")

    @property
    def name(self) -> str:
        tta = "+tta" if self.tta else ""
        return f"{self.family}{tta} {self.head} {self.transform} {HEADS[self.head][1]}={self.C:g}"


def _pipeline(head: str, transform: str, C: float) -> Pipeline:
    build, param, _ = HEADS[head]
    clf = build().set_params(**{param: C})
    return Pipeline(
        [("transform", make_transform(transform)), ("scale", StandardScaler()), ("clf", clf)]
    )


def _view_rows(images: np.ndarray, k: int) -> np.ndarray:
    """Row indices of every view of ``images`` (image-major rows, ``k`` views per image)."""
    return (images[:, None] * k + np.arange(k)).ravel()


def _predict(model: Any, X: np.ndarray, k: int, tta: bool) -> np.ndarray:
    """Per-image predictions from image-major rows (``k`` per image): the identity view's
    (``tta`` off) or the argmax of the decision values averaged over the views."""
    scores = model.decision_function(X).reshape(len(X) // k, k, -1)
    scores = scores.mean(axis=1) if tta else scores[:, 0]
    if scores.shape[1] == 1:  # binary: one column, positive means classes_[1]
        return model.classes_[(scores[:, 0] > 0).astype(int)]
    return model.classes_[scores.argmax(axis=1)]


def cross_validate(
    family: str, heads: list[str], transforms: list[str], train: Features, folds: list
) -> list[Candidate]:
    """Every candidate of ``family`` with its CV score; ``folds`` are (train, validation)
    arrays of image indices, ``train`` holds every view (image-major)."""
    k = train.n_views if family == "views" else 1
    data = train if family == "views" else train.only_view(0)
    y_img = train.only_view(0).y
    out = []
    for head in heads:
        for transform in transforms:
            for C in HEADS[head][2]:
                scores: dict[bool, list[float]] = {False: [], True: []}
                t = time.perf_counter()
                for fit_img, val_img in folds:
                    fit_rows, val_rows = _view_rows(fit_img, k), _view_rows(val_img, k)
                    model = _pipeline(head, transform, C).fit(data.X[fit_rows], data.y[fit_rows])
                    for tta in (False, True) if k > 1 else (False,):
                        pred = _predict(model, data.X[val_rows], k, tta)
                        scores[tta].append(accuracy_score(y_img[val_img], pred))
                for tta in (False, True) if k > 1 else (False,):
                    c = Candidate(family, head, transform, C, tta)
                    c.cv_score, c.cv_std = float(np.mean(scores[tta])), float(np.std(scores[tta]))
                    out.append(c)
                print(
                    f"    {family:5s} {head:10s} {transform:8s} {HEADS[head][1]}={C:<6g} CV "
                    + " ".join(
                        f"{'tta ' if t_ else ''}{np.mean(v):.4f}" for t_, v in scores.items() if v
                    )
                    + f"  ({time.perf_counter() - t:.0f} s)",
                    flush=True,
                )
    return out


def _config(c: Candidate) -> str:
    return f"{c.head} {c.transform} {HEADS[c.head][1]}={c.C:g}"


def held_out(c: Candidate, train: Features, test: Features) -> dict[str, Any]:
    """Refit ``c`` on the whole training split and score it once on the held-out split."""
    k = train.n_views if c.family == "views" else 1
    fit_on = train if c.family == "views" else train.only_view(0)
    model = _pipeline(c.head, c.transform, c.C).fit(fit_on.X, fit_on.y)
    X_test = test.X if c.family == "views" else test.only_view(0).X
    y_true = test.only_view(0).y
    pred = _predict(model, X_test, k, c.tta)
    return {
        "acc": accuracy_score(y_true, pred),
        "correct": int((pred == y_true).sum()),
        "n": len(y_true),
        "mean per-class": balanced_accuracy_score(y_true, pred),
    }


def _extract_views(side: Source, backbone: str, policy: str, cache_dir: Path | None) -> Any:
    return extract(side, backbone=backbone, views=policy, cache_dir=cache_dir, progress=True)


def compare(
    name: str,
    backbone: str,
    policy: str,
    heads: list[str],
    transforms: list[str],
    cache_dir: Path | None,
) -> tuple[dict[str, Any], list[Candidate]]:
    """The chosen plain and views configurations of dataset ``name`` and their held-out
    scores (one summary row), and every candidate with its CV score."""
    train_src, test_src, names = dataset_sides(name)
    runs = [_extract_views(s, backbone, policy, cache_dir) for s in (train_src, test_src)]
    kw = {"backbone": backbone, "views": policy, "cache_dir": cache_dir, "class_names": names}
    train = load_features(train_src, extract_missing=False, **kw)
    test = load_features(test_src, extract_missing=False, **kw)
    plain_train = train.only_view(0)
    print(
        f"{name}: {len(plain_train)} training / {len(test.only_view(0))} test images, "
        f"{len(names)} classes, {policy} ({train.n_views} views per image)",
        flush=True,
    )
    splitter = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=SEED)
    folds = list(splitter.split(plain_train.X, plain_train.y, groups=plain_train.keys))
    chosen, candidates = {}, []
    for family in ("plain", "views"):
        found = cross_validate(family, heads, transforms, train, folds)
        candidates += found
        chosen[family] = rank(found)[0]
    scores = {f: held_out(c, train, test) for f, c in chosen.items()}
    p, v = scores["plain"], scores["views"]
    row = {
        "dataset": name,
        "views": f"{policy} (K={train.n_views})",
        "train imgs": len(plain_train),
        "test imgs": p["n"],
        "plain chosen": _config(chosen["plain"]),
        "plain CV": chosen["plain"].cv_score,
        "plain test": f"{p['acc']:.4f} ({p['correct']}/{p['n']})",
        "views chosen": _config(chosen["views"])
        + (", tta" if chosen["views"].tta else ", identity view"),
        "views CV": chosen["views"].cv_score,
        "views test": f"{v['acc']:.4f} ({v['correct']}/{v['n']})",
        "diff (imgs)": f"{v['correct'] - p['correct']:+d}",
        "plain mpc": p["mean per-class"],
        "views mpc": v["mean per-class"],
        "views extracted": sum(r.n_views_extracted for r in runs),
        "extract s": sum(r.seconds for r in runs if r.n_views_extracted),
    }
    return row, candidates


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
    ap.add_argument("--heads", nargs="+", choices=list(HEADS), default=["logreg", "linear_svm"])
    ap.add_argument(
        "--transforms", nargs="+", choices=list(TRANSFORMS), default=["none", "power+l2"]
    )
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: $FEATURESTORE_CACHE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(machine())
    if args.part in ("cost", "both"):
        print(f"\n## Extraction cost, {args.backbone}, hymenoptera val (153 photos)\n")
        print_table(cost_table(args.backbone, args.cost_policies, args.cache_dir))
    if args.part in ("accuracy", "both"):
        summary: list[dict] = []
        for name in args.datasets:
            row, candidates = compare(
                name, args.backbone, args.policy, args.heads, args.transforms, args.cache_dir
            )
            summary.append(row)
            print(f"\n{name} summary: " + ", ".join(f"{k}={v}" for k, v in row.items()))
            print(f"\n### {name}: every candidate's CV accuracy on the training split\n")
            print_table(
                [
                    {
                        "family": c.family + ("+tta" if c.tta else ""),
                        "head": c.head,
                        "transform": c.transform,
                        "reg": f"{HEADS[c.head][1]}={c.C:g}",
                        "CV acc": f"{c.cv_score:.4f}",
                        "fold sd": f"{c.cv_std:.4f}",
                    }
                    for c in candidates
                ]
            )
        print(f"\n## Plain vs views, {args.backbone}, each chosen by CV on the training split\n")
        print(f"selection: {SELECTION}\n")
        print_table(summary)


if __name__ == "__main__":
    main()
