"""Views: what K cached views per image cost to extract, and what they buy once the
configuration is chosen by cross-validation on the training split alone.

Part 1, cost: the same real photos (hymenoptera val, 153 JPEGs of about 500x375) extracted
plain and with each view policy, each into a fresh temporary cache: wall seconds, images/s,
views/s, milliseconds per view.

Part 2, plain vs views, each chosen by CV on the training split (the held-out split never
chooses). Candidates: heads (``logreg`` and ``linear_svm``: ``classifiers.linear.LinearHead``,
the project's batched torch solver, multinomial logistic regression and one-vs-rest
squared-hinge linear SVM, at each C of one point per decade from 1e-5 to 1e2; ``ridge``:
scikit-learn's ``RidgeClassifier`` at alpha 10 .. 1e4) x feature transforms
(``classifiers.transforms``: "none", "power+l2", ...), each followed by standardisation, in two
families:

* **plain**: trained on the plain rows (view 0), one per image;
* **views**: trained on every view of every training image, scored on the identity view
  (``tta=no``) or with test-time averaging (``tta=yes``: the head's decision values averaged
  over the image's K views). One fit serves both. ``--policy`` may name several view policies:
  the family then holds the candidates of each, and CV chooses the policy too.

Cross-validation: 5 folds of *images* (``StratifiedGroupKFold`` grouped by image key, seeded),
the same folds for both families and every policy; a views head is trained on every view of the
fold's training images and scored per validation image, so every CV score is an accuracy over
the same images and plain, views and views+tta candidates are on one scale. A fold's transform
and standardisation are fitted on its training rows. A CV fit of a linear head stops at the
tolerance and iteration limit of ``LinearHeadCV``'s search fits (1e-3, 200), the refit of the
chosen configuration at ``LinearHead``'s own (1e-4, 1000); each candidate's line reports its
fold fits' iterations and how many converged. In each family the chosen candidate has the best
mean CV accuracy, with the project's tie rule (``featurestore.report.selection``: means equal
to 9 decimals go to the smaller spread of the fold scores, then to the earlier candidate;
candidates are listed policy (fewest views first), head, transform, C, tta off before on). The
chosen plain and views configurations are then refitted on the whole training split and scored
once on the held-out split: accuracy, correct test images and (read it for caltech101) mean
per-class accuracy; ``diff`` is views minus plain, in test images.

Datasets (``../shared/datasets``): hymenoptera (train -> val), catvnoncat (train -> test),
builtin:digits (the project's hash split: 20% test, seed 0), caltech101 (101 object classes,
no background; per class a seeded draw of 30 training images and up to 50 test images).

    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py --part cost
    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py --part accuracy \\
        --datasets hymenoptera catvnoncat digits --policy flip crops10 random16
    FEATURESTORE_CACHE=/tmp/fscache python benchmarks/views.py --part accuracy \\
        --datasets caltech101 --policy flip --heads ridge

Rows come through the cache: a run first extracts what is missing (the "views extracted"
and "extract s" columns; 0 when every view was cached), a second run only trains heads.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, machine, print_machine, print_table
from sklearn.base import BaseEstimator
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from classifiers.linear import LinearHead, LinearHeadCV
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
    "the fold scores, then to the earlier candidate (policy with the fewest views first, head, "
    "transform, C, tta off before on); "
    "the held-out split is scored once, for the two chosen configurations"
)


@dataclass(frozen=True)
class Head:
    """A head of the benchmark: ``build(value, final)`` is the estimator at one value of its
    regularisation parameter ``param``, for a CV fit (``final`` False) or for the refit of a
    chosen configuration on the whole training split (``final`` True); ``grid`` the values."""

    build: Callable[[float, bool], BaseEstimator]
    param: str
    grid: tuple[float, ...]


#: C of the linear heads: one point per decade, 1e-5 .. 1e2 (the project's scikit-learn grids
#: chose 1e-4 .. 1 here; a views head sees K rows per image, so its best C moves down).
LINEAR_CS: tuple[float, ...] = tuple(10.0**e for e in range(-5, 3))
#: A CV fit stops where LinearHeadCV's search fits stop (CV scores hardly move below this
#: tolerance); the refit of the chosen configuration runs to LinearHead's own tol and max_iter.
_SEARCH = LinearHeadCV()
SEARCH_TOL, SEARCH_MAX_ITER = _SEARCH.search_tol, _SEARCH.search_max_iter


def _linear(loss: str) -> Callable[[float, bool], BaseEstimator]:
    def build(C: float, final: bool) -> BaseEstimator:
        if final:
            return LinearHead(loss, C=C, random_state=SEED)
        return LinearHead(loss, C=C, tol=SEARCH_TOL, max_iter=SEARCH_MAX_ITER, random_state=SEED)

    return build


HEADS: dict[str, Head] = {
    # logreg and linear_svm: classifiers.linear.LinearHead (the project's batched torch solver;
    # multinomial logistic regression, and one-vs-rest squared-hinge linear SVM with an
    # unpenalised intercept) at each C. ridge: scikit-learn's RidgeClassifier (one
    # least-squares solve for every class).
    "logreg": Head(_linear("log_loss"), "C", LINEAR_CS),
    "linear_svm": Head(_linear("squared_hinge"), "C", LINEAR_CS),
    "ridge": Head(lambda a, final: RidgeClassifier(alpha=a), "alpha", (10.0, 100.0, 1e3, 1e4)),
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
    policy: str | None  # the view policy of a views candidate; None for plain
    head: str
    transform: str
    C: float  # the value of the head's regularisation parameter (C, or ridge's alpha)
    tta: bool
    cv_score: float = float("nan")
    cv_std: float = float("nan")

    @property
    def label(self) -> str:
        """``plain``, or the policy with ``+tta`` when the views' decisions are averaged."""
        return "plain" if self.policy is None else self.policy + ("+tta" if self.tta else "")

    @property
    def name(self) -> str:
        return f"{self.label} {_config(self)}"


def _config(c: Candidate) -> str:
    return f"{c.head} {c.transform} {HEADS[c.head].param}={c.C:g}"


def _prepare_rows(transform: str) -> Pipeline:
    """The feature transform, then standardisation (fitted on a fold's training rows)."""
    return Pipeline([("transform", make_transform(transform)), ("scale", StandardScaler())])


def _pipeline(head: str, transform: str, C: float) -> Pipeline:
    """The refit on the whole training split: transform, standardise, the head at its final
    tolerance."""
    return Pipeline([*_prepare_rows(transform).steps, ("clf", HEADS[head].build(C, True))])


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


def _solver_note(models: list[Any]) -> str:
    """Iterations and convergence of a linear head's fold fits ("" for other heads)."""
    if not hasattr(models[0], "converged_"):
        return ""
    done = sum(bool(m.converged_) for m in models)
    return f"  [iter <= {max(int(m.n_iter_) for m in models)}, converged {done}/{len(models)}]"


def cross_validate(
    policy: str | None, data: Features, heads: list[str], transforms: list[str], folds: list
) -> list[Candidate]:
    """Every candidate of one family with its CV score: the plain rows (``policy`` None) or
    every view of ``policy`` (image-major rows). ``folds`` are (train, validation) arrays of
    image indices; a fold's transform and standardisation are fitted on its training rows."""
    family = "plain" if policy is None else "views"
    k = data.n_views
    y_img = data.only_view(0).y
    ttas = (False, True) if k > 1 else (False,)
    prepared: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def fold_rows(transform: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if (transform, i) not in prepared:
            fit_rows, val_rows = _view_rows(folds[i][0], k), _view_rows(folds[i][1], k)
            prep = _prepare_rows(transform).fit(data.X[fit_rows])
            prepared[transform, i] = (
                prep.transform(data.X[fit_rows]).astype(np.float32, copy=False),
                data.y[fit_rows],
                prep.transform(data.X[val_rows]).astype(np.float32, copy=False),
            )
        return prepared[transform, i]

    out = []
    for head in heads:
        for transform in transforms:
            for C in HEADS[head].grid:
                scores: dict[bool, list[float]] = {tta: [] for tta in ttas}
                models = []
                t = time.perf_counter()
                for i, (_, val_img) in enumerate(folds):
                    X_fit, y_fit, X_val = fold_rows(transform, i)
                    model = HEADS[head].build(C, False).fit(X_fit, y_fit)
                    models.append(model)
                    for tta in ttas:
                        pred = _predict(model, X_val, k, tta)
                        scores[tta].append(accuracy_score(y_img[val_img], pred))
                for tta in ttas:
                    c = Candidate(family, policy, head, transform, C, tta)
                    c.cv_score, c.cv_std = float(np.mean(scores[tta])), float(np.std(scores[tta]))
                    out.append(c)
                print(
                    f"    {policy or 'plain':8s} {head:10s} {transform:8s} "
                    f"{HEADS[head].param}={C:<6g} CV "
                    + " ".join(
                        f"{'tta ' if t_ else ''}{np.mean(v):.4f}" for t_, v in scores.items()
                    )
                    + f"  ({time.perf_counter() - t:.0f} s)"
                    + _solver_note(models),
                    flush=True,
                )
    return out


def held_out(c: Candidate, train: Features, test: Features) -> dict[str, Any]:
    """Refit ``c`` on the whole training split (``train``: its family's rows) and score it
    once on the held-out split."""
    model = _pipeline(c.head, c.transform, c.C).fit(train.X, train.y)
    y_true = test.only_view(0).y
    pred = _predict(model, test.X, test.n_views, c.tta)
    return {
        "acc": accuracy_score(y_true, pred),
        "correct": int((pred == y_true).sum()),
        "n": len(y_true),
        "mean per-class": balanced_accuracy_score(y_true, pred),
    }


def _extract_views(side: Source, backbone: str, policy: str, cache_dir: Path | None) -> Any:
    return extract(side, backbone=backbone, views=policy, cache_dir=cache_dir, progress=True)


def best_per_label(candidates: list[Candidate]) -> list[dict[str, Any]]:
    """The best candidate of each label (plain, each policy, each policy with tta) by the
    selection rule, with its CV score."""
    labels = list(dict.fromkeys(c.label for c in candidates))
    rows = []
    for label in labels:
        best = rank([c for c in candidates if c.label == label])[0]
        rows.append(
            {
                "family": label,
                "best CV": f"{best.cv_score:.4f}",
                "fold sd": f"{best.cv_std:.4f}",
                "config": _config(best),
                "at grid edge": best.C in (HEADS[best.head].grid[0], HEADS[best.head].grid[-1]),
            }
        )
    return rows


def compare(
    name: str,
    backbone: str,
    policies: list[str],
    heads: list[str],
    transforms: list[str],
    cache_dir: Path | None,
) -> tuple[dict[str, Any], list[Candidate]]:
    """The chosen plain and views configurations of dataset ``name`` (the views family holds
    the candidates of every policy in ``policies``) and their held-out scores (one summary
    row), and every candidate with its CV score."""
    train_src, test_src, names = dataset_sides(name)
    runs = [
        _extract_views(s, backbone, p, cache_dir) for p in policies for s in (train_src, test_src)
    ]
    kw = {"backbone": backbone, "cache_dir": cache_dir, "class_names": names}
    train = {p: load_features(train_src, extract_missing=False, views=p, **kw) for p in policies}
    test = {p: load_features(test_src, extract_missing=False, views=p, **kw) for p in policies}
    plain_train, plain_test = train[policies[0]].only_view(0), test[policies[0]].only_view(0)
    for p in policies[1:]:  # the folds index images: every policy must list them in one order
        for side, plain in ((train[p], plain_train), (test[p], plain_test)):
            if side.only_view(0).keys != plain.keys:
                raise SystemExit(f"{name}: {p} rows are not in the images' order of {policies[0]}")
    print(
        f"{name}: {len(plain_train)} training / {len(plain_test)} test images, "
        f"{len(names)} classes, views: "
        + ", ".join(f"{p} ({train[p].n_views} per image)" for p in policies),
        flush=True,
    )
    splitter = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=SEED)
    folds = list(splitter.split(plain_train.X, plain_train.y, groups=plain_train.keys))
    t = time.perf_counter()
    plain = cross_validate(None, plain_train, heads, transforms, folds)
    views = [c for p in policies for c in cross_validate(p, train[p], heads, transforms, folds)]
    cv_seconds = time.perf_counter() - t
    chosen = {"plain": rank(plain)[0], "views": rank(views)[0]}
    print(
        "  chosen: " + "; ".join(f"{f}: {c.name} (CV {c.cv_score:.4f})" for f, c in chosen.items())
    )
    scores = {
        "plain": held_out(chosen["plain"], plain_train, plain_test),
        "views": held_out(
            chosen["views"], train[chosen["views"].policy], test[chosen["views"].policy]
        ),
    }
    p, v = scores["plain"], scores["views"]
    cv = chosen["views"]
    row = {
        "dataset": name,
        "views candidates": " ".join(f"{q} (K={train[q].n_views})" for q in policies),
        "train imgs": len(plain_train),
        "test imgs": p["n"],
        "plain chosen": _config(chosen["plain"]),
        "plain CV": chosen["plain"].cv_score,
        "plain test": f"{p['acc']:.4f} ({p['correct']}/{p['n']})",
        "views chosen": f"{cv.policy} {_config(cv)}" + (", tta" if cv.tta else ", identity view"),
        "views CV": cv.cv_score,
        "views test": f"{v['acc']:.4f} ({v['correct']}/{v['n']})",
        "diff (imgs)": f"{v['correct'] - p['correct']:+d}",
        "plain mpc": p["mean per-class"],
        "views mpc": v["mean per-class"],
        "views extracted": sum(r.n_views_extracted for r in runs),
        "extract s": sum(r.seconds for r in runs if r.n_views_extracted),
        "CV s": cv_seconds,
    }
    return row, plain + views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["cost", "accuracy", "both"], default="both")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument(
        "--policy",
        nargs="+",
        choices=VIEW_POLICIES,
        default=["crops10"],
        help="for accuracy: the views family holds the candidates of every policy given",
    )
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
        # Fewest views first: the order in which tied candidates are preferred.
        policies = [p for p in VIEW_POLICIES if p in args.policy]
        heads = [h for h in HEADS if h in args.heads]
        summary: list[dict] = []
        for name in args.datasets:
            row, candidates = compare(
                name, args.backbone, policies, heads, args.transforms, args.cache_dir
            )
            summary.append(row)
            print(f"\n{name} summary: " + ", ".join(f"{k}={v}" for k, v in row.items()))
            print(f"\n### {name}: every candidate's CV accuracy on the training split\n")
            print_table(
                [
                    {
                        "family": c.label,
                        "head": c.head,
                        "transform": c.transform,
                        "reg": f"{HEADS[c.head].param}={c.C:g}",
                        "CV acc": f"{c.cv_score:.4f}",
                        "fold sd": f"{c.cv_std:.4f}",
                    }
                    for c in candidates
                ]
            )
            print(f"\n### {name}: the best candidate of each family, policy and tta\n")
            print_table(best_per_label(candidates))
            print(f"\nload average now: {os.getloadavg()}", flush=True)
        print(f"\n## Plain vs views, {args.backbone}, each chosen by CV on the training split\n")
        print(f"selection: {SELECTION}\n")
        print_table(summary)


if __name__ == "__main__":
    main()
