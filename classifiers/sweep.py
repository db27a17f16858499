"""Sweep heads over feature sets: grid search on the training split, one test evaluation."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from threadpoolctl import threadpool_limits  # a required dependency of scikit-learn

from classifiers.heads import HeadSpec, get_head, list_heads
from classifiers.metrics import Evaluation, evaluate

__all__ = ["FeatureSet", "SweepResult", "rank_key", "run_sweep"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of one dataset under one extractor (or a concatenation), already split.

    Attributes:
        name: Unique label in a sweep, e.g. ``"efficientnet_lite0"`` or ``"alexnet+vgg16"``.
        X_train, X_test: 2-d feature arrays with the same number of columns.
        y_train, y_test: Integer class indices into ``class_names``.
        class_names: Name of each class index.
        provenance: JSON-safe description (store fingerprints, backbones, nodes, ...).

    Raises:
        ValueError: Shapes, label values or names are inconsistent (checked on creation).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"feature set {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"feature set name must be a non-empty string, got {self.name!r}")
        names = list(self.class_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{where}: class_names must be non-empty and unique, got {names!r}")
        for part in ("train", "test"):
            X = np.asarray(getattr(self, f"X_{part}"))
            y = np.asarray(getattr(self, f"y_{part}"))
            if X.ndim != 2 or X.shape[0] == 0:
                raise ValueError(f"{where}: X_{part} must be a non-empty 2-d array, got {X.shape}")
            if y.shape != (X.shape[0],):
                raise ValueError(
                    f"{where}: y_{part} must have one label per row of X_{part} "
                    f"({X.shape[0]}), got shape {y.shape}"
                )
            if not np.issubdtype(y.dtype, np.integer):
                raise ValueError(
                    f"{where}: y_{part} must hold integer class indices, got dtype {y.dtype}"
                )
            if y.min() < 0 or y.max() >= len(names):
                raise ValueError(
                    f"{where}: y_{part} values must be in 0..{len(names) - 1} "
                    f"(indices into class_names), got {y.min()}..{y.max()}"
                )
        if self.X_train.shape[1] != self.X_test.shape[1]:
            raise ValueError(
                f"{where}: X_train has {self.X_train.shape[1]} features but X_test has "
                f"{self.X_test.shape[1]}"
            )


@dataclass(frozen=True, eq=False)
class SweepResult:
    """One (feature set, head) cell of a sweep.

    Attributes:
        feature_set: Name of the feature set.
        head: Registered head name.
        best_params: Grid point chosen by cross-validation on the training split.
        cv_score: Mean CV accuracy of ``best_params`` (training split only).
        cv_folds: Folds actually used.
        cv_note: Why ``cv_folds`` differs from the requested ``cv`` (``None`` when it does not).
        estimator: The best estimator refitted on the whole training split.
        evaluation: Metrics on the test split, computed once after selection.
        fit_seconds: Wall time of the grid search including the refit.
        predict_seconds: Wall time to predict labels and ROC scores for the test split.
        n_train, n_test, n_features: Sizes.
        warnings: Distinct warning messages raised while fitting (e.g. non-convergence).
        provenance: The feature set's provenance.
    """

    feature_set: str
    head: str
    best_params: dict[str, Any]
    cv_score: float
    cv_folds: int
    cv_note: str | None
    estimator: BaseEstimator
    evaluation: Evaluation
    fit_seconds: float
    predict_seconds: float
    n_train: int
    n_test: int
    n_features: int
    warnings: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Test accuracy."""
        return self.evaluation.summary["accuracy"]

    @property
    def macro_f1(self) -> float:
        """Test macro-F1."""
        return self.evaluation.summary["macro_f1"]


def rank_key(result: SweepResult) -> tuple:
    """Sort key: best test accuracy first, then macro-F1, then feature set and head names."""
    return (-result.accuracy, -result.macro_f1, result.feature_set, result.head)


def _folds_for(y_train: np.ndarray, cv: int, class_names: list[str]) -> tuple[int, str | None]:
    classes, counts = np.unique(y_train, return_counts=True)
    if len(classes) < 2:
        raise ValueError(
            "the training split must hold at least 2 classes, got only "
            f"{[class_names[c] for c in classes]!r}"
        )
    smallest = int(counts.min())
    if smallest >= cv:
        return cv, None
    rarest = class_names[int(classes[counts.argmin()])]
    if smallest < 2:
        raise ValueError(
            f"class {rarest!r} has {smallest} training item; stratified cross-validation needs "
            "at least 2 per class. Add items to that class or drop it from the feature set."
        )
    note = (
        f"cv reduced from {cv} to {smallest} folds: the smallest training class "
        f"({rarest!r}) has {smallest} items"
    )
    return smallest, note


def _seeded(estimator: BaseEstimator, random_state: int) -> BaseEstimator:
    params = {k: random_state for k in estimator.get_params() if k.endswith("random_state")}
    return estimator.set_params(**params) if params else estimator


def run_sweep(
    feature_sets: Sequence[FeatureSet],
    *,
    heads: Sequence[str] | None = None,
    cv: int = 5,
    use_grid: bool = True,
    n_jobs: int = 1,
    random_state: int = 0,
    progress: Callable[[str], None] | None = None,
    blas_threads: int | None = 1,
) -> list[SweepResult]:
    """Fit every head on every feature set and evaluate each once on its test split.

    For each (feature set, head): ``GridSearchCV`` over the head's grid (or its defaults when
    ``use_grid`` is false) with ``StratifiedKFold(cv, shuffle=True, random_state)`` scored by
    accuracy, on the training split only; the best grid point is refitted on the whole training
    split; then the test split is predicted once. The test split never influences selection.
    When the smallest training class has fewer than ``cv`` items, the folds drop to that count
    and ``SweepResult.cv_note`` says so. Every ``random_state`` parameter of the head is set to
    ``random_state``, so one seed fixes the whole sweep.

    Args:
        feature_sets: Feature sets with unique names.
        heads: Registered head names; ``None`` means every head, in registry order.
        cv: Requested number of CV folds (at least 2).
        use_grid: Search the head's grid; if false, cross-validate its defaults only.
        n_jobs: Parallel jobs for ``GridSearchCV`` (``-1`` = all cores).
        random_state: Seed for the folds and the heads.
        progress: Called with a short line before and after each fit (e.g. a progress bar).
        blas_threads: Threads each BLAS/OpenMP pool may use while fitting and predicting in
            this process; ``None`` leaves the pools alone. The default, 1, is the fastest for
            these small matrices: multi-threaded OpenBLAS was measured up to 10x slower on a
            busy 2-core machine (MLP, logistic regression). Parallelism comes from ``n_jobs``;
            its worker processes get their own limits from joblib.

    Returns:
        Results sorted best first by test accuracy, then macro-F1, then names.

    Raises:
        ValueError: Unknown head, duplicate feature set names, ``cv < 2``, or a training class
            too small to cross-validate. Everything is checked before any fitting starts.
    """
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2, got {cv!r}")
    if blas_threads is not None and (
        isinstance(blas_threads, bool) or not isinstance(blas_threads, int) or blas_threads < 1
    ):
        raise ValueError(f"blas_threads must be None or an integer >= 1, got {blas_threads!r}")
    feature_sets = list(feature_sets)
    if not feature_sets:
        raise ValueError("feature_sets is empty; pass at least one FeatureSet")
    names = [fs.name for fs in feature_sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"feature set names must be unique, repeated: {duplicates}")
    specs = list_heads() if heads is None else [get_head(name) for name in heads]
    if not specs:
        raise ValueError("heads is empty; pass None for every head or at least one name")
    folds = {
        fs.name: _folds_for(np.asarray(fs.y_train), cv, list(fs.class_names)) for fs in feature_sets
    }

    with threadpool_limits(limits=blas_threads):
        results = _sweep(feature_sets, specs, folds, use_grid, n_jobs, random_state, progress)
    return sorted(results, key=rank_key)


def _sweep(
    feature_sets: list[FeatureSet],
    specs: list[HeadSpec],
    folds: dict[str, tuple[int, str | None]],
    use_grid: bool,
    n_jobs: int,
    random_state: int,
    progress: Callable[[str], None] | None,
) -> list[SweepResult]:
    results: list[SweepResult] = []
    total = len(feature_sets) * len(specs)
    step = 0
    for fs in feature_sets:
        n_folds, cv_note = folds[fs.name]
        if cv_note:
            logger.warning("%s: %s", fs.name, cv_note)
        for spec in specs:
            step += 1
            label = f"[{step}/{total}] {fs.name} / {spec.name}"
            if progress is not None:
                progress(f"{label}: fitting")
            grid = {k: list(v) for k, v in spec.grid.items()} if use_grid else {}
            search = GridSearchCV(
                _seeded(spec.build(), random_state),
                grid,
                scoring="accuracy",
                cv=StratifiedKFold(n_folds, shuffle=True, random_state=random_state),
                n_jobs=n_jobs,
                refit=True,
                error_score="raise",
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                search.fit(fs.X_train, fs.y_train)
                fit_seconds = time.perf_counter() - start
            messages = tuple(sorted({f"{w.category.__name__}: {w.message}" for w in caught}))
            for message in messages:
                logger.warning("%s: %s", label, message)

            start = time.perf_counter()
            evaluation = evaluate(
                search.best_estimator_, fs.X_test, fs.y_test, class_names=list(fs.class_names)
            )
            predict_seconds = time.perf_counter() - start

            result = SweepResult(
                feature_set=fs.name,
                head=spec.name,
                best_params=dict(search.best_params_),
                cv_score=float(search.best_score_),
                cv_folds=n_folds,
                cv_note=cv_note,
                estimator=search.best_estimator_,
                evaluation=evaluation,
                fit_seconds=fit_seconds,
                predict_seconds=predict_seconds,
                n_train=int(fs.X_train.shape[0]),
                n_test=int(fs.X_test.shape[0]),
                n_features=int(fs.X_train.shape[1]),
                warnings=messages,
                provenance=dict(fs.provenance),
            )
            results.append(result)
            line = (
                f"{label}: cv={result.cv_score:.4f} test acc={result.accuracy:.4f} "
                f"fit={fit_seconds:.2f}s params={result.best_params}"
            )
            logger.info(line)
            if progress is not None:
                progress(line)
    return results
