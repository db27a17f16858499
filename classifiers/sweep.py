"""Sweep heads over feature sets: selection by cross-validation on the training split only,
one evaluation of every result on the held-out split.

The held-out (test) split never picks anything: each head's hyperparameters are chosen by CV
on the training split, results are ordered by their CV score (:func:`rank_key`), and the test
split is predicted once per result and reported with a Wilson 95% interval.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
import traceback
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits  # a required dependency of scikit-learn

from classifiers.folds import FoldPlan, plan_folds
from classifiers.heads import HeadSpec, get_head, list_heads
from classifiers.linear import default_n_jobs
from classifiers.metrics import Evaluation, evaluate
from classifiers.pool import WorkerDied, describe, plan_workers, run_tasks
from classifiers.search import SCORINGS, search_head

__all__ = [
    "IMBALANCE_RATIO",
    "SCORINGS",
    "FeatureSet",
    "HeadFailure",
    "SweepResult",
    "SweepResults",
    "expected_seconds",
    "plan_cv",
    "plan_pairs",
    "rank_key",
    "run_sweep",
    "uses_torch",
]

logger = logging.getLogger(__name__)

#: Largest / smallest class in the training split above this ratio: the results carry a note.
IMBALANCE_RATIO = 3.0


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of one dataset under one extractor (or a concatenation), already split.

    Attributes:
        name: Unique label in a sweep, e.g. ``"efficientnet_lite0"`` or ``"alexnet+vgg16"``.
        X_train, X_test: 2-d feature arrays with the same number of columns.
        y_train, y_test: Integer class indices into ``class_names``.
        class_names: Name of each class index.
        provenance: JSON-safe description (store fingerprints, backbones, nodes, ...).
        groups_train: Optional group of each training row, normally its image key: rows of one
            group never land on both sides of a CV fold (several rows per image: duplicates
            in a manifest, or augmented views).

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
    groups_train: np.ndarray | None = None

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
        if self.groups_train is not None and np.shape(self.groups_train) != (len(self.y_train),):
            raise ValueError(
                f"{where}: groups_train must have one entry per training row "
                f"({len(self.y_train)}), got shape {np.shape(self.groups_train)}"
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
        best_params: Parameters chosen by cross-validation on the training split, regularisation
            included (``"clf__C"`` of the linear heads, chosen by their own search).
        cv_score: Mean CV score (``scoring``) of ``best_params`` (training split only).
        cv_folds: Folds actually used.
        cv_note: Why ``cv_folds`` differs from the requested ``cv`` (``None`` when it does not).
        estimator: The head refitted on the whole training split with ``best_params`` fixed.
        evaluation: Metrics on the test split, computed once after selection; its summary has
            ``accuracy_ci95``, the Wilson 95% interval of the test accuracy.
        fit_seconds: Wall time of the search including the refit.
        predict_seconds: Wall time to predict labels and ROC scores for the test split.
        n_train, n_test, n_features: Sizes.
        warnings: Distinct warning messages raised while fitting (e.g. non-convergence).
        provenance: The feature set's provenance.
        cv_std: Standard deviation of ``best_params``' score over the folds.
        cv_fold_scores: Its score on each fold.
        scoring: The selection score (``"accuracy"``, ``"balanced_accuracy"``, ``"f1_macro"``).
        class_weight: ``"balanced"`` when it was applied to this head, else ``None``.
        notes: What a reader should know: the data's (imbalance, repeated or conflicting
            image keys) and the head's (grid points dropped for these folds, class weights not
            supported, a choice on the edge of the searched range).
        search: Every point searched: ``[{"params", "mean", "std"}]`` (JSON-safe).
        cv_decision: The training rows' out-of-fold decision scores at ``best_params``, kept by
            a head without probabilities whose search computed them (the SVMs), to
            calibrate its probabilities without fitting again; else ``None``.
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
    cv_std: float = 0.0
    cv_fold_scores: tuple[float, ...] = ()
    scoring: str = "accuracy"
    class_weight: str | None = None
    notes: tuple[str, ...] = ()
    search: tuple[dict[str, Any], ...] = ()
    cv_decision: np.ndarray | None = field(default=None, repr=False)

    @property
    def accuracy(self) -> float:
        """Test accuracy."""
        return self.evaluation.summary["accuracy"]

    @property
    def accuracy_ci95(self) -> tuple[float, float]:
        """Wilson 95% interval of the test accuracy."""
        low, high = self.evaluation.summary["accuracy_ci95"]
        return low, high

    @property
    def macro_f1(self) -> float:
        """Test macro-F1."""
        return self.evaluation.summary["macro_f1"]

    @property
    def regularization(self) -> dict[str, Any] | None:
        """The chosen regularisation, ``{"param": "clf__C", "value": ...}``, or ``None`` for a
        head without one."""
        key = get_head(self.head).regularization if self.head in _registered() else None
        if key is None or key not in self.best_params:
            return None
        return {"param": key, "value": self.best_params[key]}


def _registered() -> set[str]:
    return {spec.name for spec in list_heads()}


@dataclass(frozen=True)
class HeadFailure:
    """A (feature set, head) whose search or evaluation raised; the sweep went on without it.

    Attributes:
        feature_set, head: Which cell failed.
        error: ``"ExceptionType: message"``.
        traceback: The formatted traceback, for a log.
        fit_seconds: Time spent before the failure.
        notes: The data's notes (as on the results of the same feature set).
    """

    feature_set: str
    head: str
    error: str
    traceback: str
    fit_seconds: float
    notes: tuple[str, ...] = ()
    exception: BaseException | None = field(default=None, repr=False, compare=False)


class SweepResults(list):
    """The results of :func:`run_sweep`, best first (a ``list`` of :class:`SweepResult`).

    Attributes:
        failures: Every (feature set, head) that raised, as :class:`HeadFailure`.
        notes: Per feature set name, the notes about its data (imbalance, repeated or
            conflicting image keys, fewer folds).
    """

    def __init__(
        self,
        results: Sequence[SweepResult] = (),
        *,
        failures: Sequence[HeadFailure] = (),
        notes: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        super().__init__(results)
        self.failures = list(failures)
        self.notes = dict(notes or {})


def rank_key(result: SweepResult) -> tuple:
    """Sort key, best first, from the training split only: higher CV score, then smaller
    fold-to-fold spread (``cv_std``), then shorter fit time, then feature set and head names.

    The test split plays no part: a result with a better test score but a worse CV score ranks
    lower.
    """
    return (-result.cv_score, result.cv_std, result.fit_seconds, result.feature_set, result.head)


def _imbalance_note(y: np.ndarray, class_names: Sequence[str], scoring: str, cw: Any) -> str | None:
    present = np.unique(y)
    counts = np.bincount(y)[present]
    ratio = counts.max() / counts.min()
    if ratio <= IMBALANCE_RATIO:
        return None
    big, small = class_names[present[counts.argmax()]], class_names[present[counts.argmin()]]
    advice = [
        tip
        for tip, used in (
            ("scoring='balanced_accuracy'", scoring != "accuracy"),
            ("class_weight='balanced'", cw is not None),
        )
        if not used
    ]
    return (
        f"classes are imbalanced in the training split: largest {big!r} {counts.max()} rows, "
        f"smallest {small!r} {counts.min()} (ratio {ratio:.1f} > {IMBALANCE_RATIO:g})"
        + (f"; consider {' and '.join(advice)}" if advice else "")
    )


def _check_args(cv: Any, blas_threads: Any, scoring: Any, class_weight: Any, n_jobs: Any) -> None:
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2, got {cv!r}")
    if blas_threads is not None and (
        isinstance(blas_threads, bool) or not isinstance(blas_threads, int) or blas_threads < 1
    ):
        raise ValueError(f"blas_threads must be None or an integer >= 1, got {blas_threads!r}")
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {list(SCORINGS)}, got {scoring!r}")
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if n_jobs is not None and (
        isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0
    ):
        raise ValueError(f"n_jobs must be None or a non-zero integer, got {n_jobs!r}")


def plan_cv(
    feature_sets: Sequence[FeatureSet],
    *,
    cv: int,
    groups: Sequence[Hashable] | None = None,
    random_state: int = 0,
) -> dict[str, FoldPlan]:
    """The CV folds of each feature set's training split, by name, as :func:`run_sweep` plans
    them before fitting (``groups`` as it takes them).

    Raises:
        ValueError: A split that cannot be cross-validated (fewer than 2 classes, a class with
            fewer than 2 rows or groups), or ``groups`` of the wrong length.
    """
    return {
        fs.name: plan_folds(
            fs.X_train,
            np.asarray(fs.y_train),
            cv=cv,
            class_names=list(fs.class_names),
            groups=_groups_for(fs, groups),
            random_state=random_state,
        )
        for fs in feature_sets
    }


def _groups_for(fs: FeatureSet, groups: Sequence[Hashable] | None) -> np.ndarray | None:
    if groups is None:
        return fs.groups_train
    groups = np.asarray(groups)
    if groups.shape != (len(fs.y_train),):
        raise ValueError(
            f"groups has {len(groups)} entries but feature set {fs.name!r} has "
            f"{len(fs.y_train)} training rows"
        )
    if fs.groups_train is not None and not np.array_equal(groups, fs.groups_train):
        raise ValueError(f"groups differ from feature set {fs.name!r}'s own groups_train")
    return groups


def run_sweep(
    feature_sets: Sequence[FeatureSet],
    *,
    heads: Sequence[str] | None = None,
    cv: int = 5,
    use_grid: bool = True,
    n_jobs: int | None = None,
    random_state: int = 0,
    progress: Callable[[str], None] | None = None,
    blas_threads: int | None = 1,
    scoring: str = "accuracy",
    class_weight: str | None = None,
    groups: Sequence[Hashable] | None = None,
    workers: int | None = None,
) -> SweepResults:
    """Fit every head on every feature set; choose each by CV on its training split; evaluate
    each once on its test split.

    Per feature set, the CV folds are planned once and shared by every head
    (:func:`classifiers.folds.plan_folds`): stratified, shuffled with ``random_state``, and
    grouped (``StratifiedGroupKFold``) when a group has several rows, so no image's rows
    straddle a fold; without groups, rows that repeat exactly are grouped. When the rarest
    class has fewer than ``cv`` rows (groups, when grouped) the folds drop to that count and
    ``cv_note`` says so. Per head: ``GridSearchCV`` over its grid, adapted to the folds (e.g.
    fewer neighbours than rows), or the head's own search (the linear heads search C over
    1e-6..1e6 themselves, every fold at once); the chosen point is refitted on the whole
    training split and the test split predicted once. Every ``random_state`` parameter of a
    head is set to ``random_state``, so one seed fixes the whole sweep. The (feature set,
    head) pairs run side by side on ``workers`` processes, one core each (:mod:`classifiers.pool`);
    each pair's results are the same as in this process.

    Ordering (:func:`rank_key`): higher CV score (``scoring``), then smaller fold-to-fold
    spread, then shorter fit time, then names. The test scores, with their Wilson 95%
    interval, are reported for every result and never used to order or choose.

    A head that raises does not stop the sweep: it is recorded in ``failures`` and the others
    go on. Every result carries notes on the data (imbalance: largest / smallest training class
    above :data:`IMBALANCE_RATIO`; repeated or conflicting image keys) and on its search.

    Args:
        feature_sets: Feature sets with unique names.
        heads: Registered head names; ``None`` means every head, in registry order.
        cv: Requested number of CV folds (at least 2).
        use_grid: Search each head's grid (or range); if false, cross-validate its defaults.
        n_jobs: Parallel workers for ``GridSearchCV`` and threads of the batched heads when
            the fits run in this process (``workers`` 1); ``None`` (default): ``GridSearchCV``
            in this process (the grid heads are cheap), and for each batched head the cores
            free when it starts (``classifiers.linear.free_cores``); ``-1``: every core.
        random_state: Seed for the folds and the heads.
        progress: Called with a short line before and after each fit (e.g. a progress bar).
        blas_threads: Threads each BLAS/OpenMP pool may use in this process while fitting and
            predicting the scikit-learn heads; ``None`` leaves the pools alone. The default, 1,
            is the fastest for these small matrices on a busy machine; parallelism comes from
            ``n_jobs``. The batched (torch) heads set their own thread count from ``n_jobs``.
        scoring: Selection score: ``"accuracy"`` (default), ``"balanced_accuracy"`` or
            ``"f1_macro"`` (new). Used for every head's search and for the ordering.
        class_weight: ``"balanced"`` reweights classes in every head that supports it
            (``HeadSpec.class_weight``); a head without class weights says so in its notes
            (new).
        groups: The group (image key) of each training row, shared by every feature set (they
            must have that many training rows); or set ``FeatureSet.groups_train`` per
            feature set (new).
        workers: Processes fitting (feature set, head) pairs side by side
            (:mod:`classifiers.pool`), each fit on one core whatever ``n_jobs`` says; ``None``
            (default): one per core, at most the pairs and what memory holds; 1: every fit in
            this process, one after another. Where the platform cannot fork, always 1. The
            results are the same either way.

    Returns:
        :class:`SweepResults`: a list of results, best first, with ``failures`` and ``notes``.

    Raises:
        ValueError: Unknown head, duplicate feature set names, bad ``cv``, ``scoring``,
            ``class_weight``, ``n_jobs`` or ``groups``, or a training class too small to
            cross-validate. Everything is checked before any fitting starts.
        RuntimeError: Every head failed on every feature set (the message lists why).
    """
    _check_args(cv, blas_threads, scoring, class_weight, n_jobs)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be None or an integer >= 1, got {workers!r}")
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
    plans = plan_cv(feature_sets, cv=cv, groups=groups, random_state=random_state)
    data_notes = {
        fs.name: _data_notes(fs, plans[fs.name], scoring, class_weight) for fs in feature_sets
    }
    # None reaches the heads as None: the batched heads then use the cores free at each fit.
    jobs = default_n_jobs() if n_jobs is not None and n_jobs < 0 else n_jobs
    settings = _Settings(use_grid, jobs, random_state, scoring, class_weight, progress)
    processes, order = plan_pairs(feature_sets, specs, workers)
    with threadpool_limits(limits=blas_threads):
        results, failures = _sweep(
            feature_sets, specs, plans, data_notes, settings, processes, order
        )
    if not results and len(failures) == 1 and failures[0].exception is not None:
        raise failures[0].exception  # one (set, head) pair: its own error, as it was raised
    for failure in failures:  # one line each; the traceback for those who ask (-vv)
        logger.warning("%s / %s failed: %s", failure.feature_set, failure.head, failure.error)
        logger.debug("%s", failure.traceback)
    if not results:
        reasons = "; ".join(f"{f.feature_set}/{f.head}: {f.error}" for f in failures)
        raise RuntimeError(f"every head failed, nothing to rank: {reasons}")
    return SweepResults(sorted(results, key=rank_key), failures=failures, notes=data_notes)


def _data_notes(fs: FeatureSet, plan: FoldPlan, scoring: str, class_weight: Any) -> tuple[str, ...]:
    notes = list(plan.notes)
    imbalance = _imbalance_note(np.asarray(fs.y_train), list(fs.class_names), scoring, class_weight)
    if imbalance:
        notes.append(imbalance)
    for note in notes:
        logger.warning("%s: %s", fs.name, note)
    if plan.note:
        logger.warning("%s: %s", fs.name, plan.note)
    return tuple(notes)


@dataclass(frozen=True)
class _Settings:
    use_grid: bool
    n_jobs: int | None
    random_state: int
    scoring: str
    class_weight: str | None
    progress: Callable[[str], None] | None


def _sweep(
    feature_sets: list[FeatureSet],
    specs: list[HeadSpec],
    plans: dict[str, FoldPlan],
    data_notes: dict[str, tuple[str, ...]],
    settings: _Settings,
    processes: int,
    order: list[int],
) -> tuple[list[SweepResult], list[HeadFailure]]:
    """Every (feature set, head) pair, on ``processes`` workers, started in ``order``
    (:func:`plan_pairs`); results and failures in sweep order."""
    cells = [(fs, spec) for fs in feature_sets for spec in specs]
    labels = [
        f"[{i}/{len(cells)}] {fs.name} / {spec.name}" for i, (fs, spec) in enumerate(cells, 1)
    ]
    if processes > 1:  # each fit on one core
        settings = dataclasses.replace(settings, n_jobs=1)

    def task(i: int) -> Callable[[], SweepResult | HeadFailure]:
        fs, spec = cells[i]
        return functools.partial(
            _fit_or_fail, fs, spec, plans[fs.name], data_notes[fs.name], settings
        )

    def started(k: int) -> None:
        if settings.progress is not None:
            settings.progress(f"{labels[order[k]]}: fitting")

    outcomes: dict[int, SweepResult | HeadFailure] = {}

    def done(k: int, outcome: Any) -> None:
        fs, spec = cells[order[k]]
        if not isinstance(outcome, (SweepResult, HeadFailure)):  # the worker died or failed
            outcome = _lost(fs, spec, data_notes[fs.name], outcome)
        outcomes[order[k]] = outcome
        if settings.progress is not None:
            settings.progress(_done_line(labels[order[k]], outcome))

    run_tasks(
        [task(i) for i in order],
        processes,
        uses_torch=[uses_torch(*cells[i]) for i in order],
        on_start=started,
        on_done=done,
    )
    ordered = [outcomes[i] for i in range(len(cells))]
    results = [o for o in ordered if isinstance(o, SweepResult)]
    return results, [o for o in ordered if isinstance(o, HeadFailure)]


def plan_pairs(
    feature_sets: Sequence[FeatureSet], specs: Sequence[HeadSpec], workers: int | None = None
) -> tuple[int, list[int]]:
    """Processes for the (feature set, head) pairs (``run_sweep``'s ``workers``:
    :func:`classifiers.pool.plan_workers` from the largest feature set's bytes), and the order
    in which to start the pairs, as indices in sweep order (every head of the first feature
    set, then of the next): that order on one process, the longest first
    (:func:`expected_seconds`) side by side."""
    cells = [(fs, spec) for fs in feature_sets for spec in specs]
    largest = max((fs.X_train.nbytes + fs.X_test.nbytes for fs in feature_sets), default=0)
    processes = plan_workers(len(cells), largest, workers)
    order = list(range(len(cells)))
    if processes > 1:
        order.sort(key=lambda i: -expected_seconds(*cells[i]))
    return processes, order


def uses_torch(fs: FeatureSet, spec: HeadSpec) -> bool:
    """Whether ``spec``'s search on ``fs`` may import torch (``HeadSpec.uses_torch``): a sweep
    fitting side by side imports it before forking only if some pair does."""
    return bool(spec.uses_torch(fs.X_train.shape[0], fs.X_train.shape[1], len(fs.class_names)))


def expected_seconds(fs: FeatureSet, spec: HeadSpec) -> float:
    """Rough seconds of ``spec``'s search on ``fs`` on one core (``HeadSpec.cost``): the order
    in which a sweep starts its pairs side by side, the longest first."""
    rows, width = fs.X_train.shape[0], fs.X_train.shape[1]
    return float(spec.cost(rows, width, max(2, len(fs.class_names))))


def _fit_or_fail(
    fs: FeatureSet,
    spec: HeadSpec,
    plan: FoldPlan,
    data_notes: tuple[str, ...],
    settings: _Settings,
) -> SweepResult | HeadFailure:
    start = time.perf_counter()
    try:
        result = _fit_head(fs, spec, plan, data_notes, settings)
    except Exception as exc:  # noqa: BLE001 - one head failing must not lose the rest
        return HeadFailure(
            feature_set=fs.name,
            head=spec.name,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            fit_seconds=time.perf_counter() - start,
            notes=data_notes,
            exception=exc,
        )
    logger.info(_done_line(f"{fs.name} / {spec.name}", result))
    return result


def _lost(fs: FeatureSet, spec: HeadSpec, notes: tuple[str, ...], outcome: Any) -> HeadFailure:
    """A failure for a pair whose worker died (:class:`WorkerDied`) or could not send its
    result back (:class:`TaskFailed`)."""
    trace = "" if isinstance(outcome, WorkerDied) else str(outcome)
    return HeadFailure(
        fs.name, spec.name, describe(outcome), trace, fit_seconds=math.nan, notes=notes
    )


def _done_line(label: str, outcome: SweepResult | HeadFailure) -> str:
    if isinstance(outcome, HeadFailure):
        return f"{label}: FAILED {outcome.error}"
    return (
        f"{label}: cv={outcome.cv_score:.4f}±{outcome.cv_std:.4f} "
        f"test acc={outcome.accuracy:.4f} fit={outcome.fit_seconds:.2f}s "
        f"params={outcome.best_params}"
    )


def _fit_head(
    fs: FeatureSet,
    spec: HeadSpec,
    plan: FoldPlan,
    data_notes: tuple[str, ...],
    settings: _Settings,
) -> SweepResult:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        outcome = search_head(
            spec,
            fs.X_train,
            np.asarray(fs.y_train),
            plan,
            use_grid=settings.use_grid,
            scoring=settings.scoring,
            class_weight=settings.class_weight,
            n_jobs=settings.n_jobs,
            random_state=settings.random_state,
        )
        fit_seconds = time.perf_counter() - start
    messages = tuple(sorted({f"{w.category.__name__}: {w.message}" for w in caught}))
    for message in messages:
        logger.warning("%s / %s: %s", fs.name, spec.name, message)

    start = time.perf_counter()
    evaluation = evaluate(outcome.estimator, fs.X_test, fs.y_test, class_names=list(fs.class_names))
    predict_seconds = time.perf_counter() - start
    folds = outcome.cv_fold_scores
    return SweepResult(
        feature_set=fs.name,
        head=spec.name,
        best_params=outcome.best_params,
        cv_score=outcome.cv_score,
        cv_folds=plan.n_folds,
        cv_note=plan.note,
        estimator=outcome.estimator,
        evaluation=evaluation,
        fit_seconds=fit_seconds,
        predict_seconds=predict_seconds,
        n_train=int(fs.X_train.shape[0]),
        n_test=int(fs.X_test.shape[0]),
        n_features=int(fs.X_train.shape[1]),
        warnings=messages,
        provenance=dict(fs.provenance),
        cv_std=float(np.std(folds)) if folds else math.nan,
        cv_fold_scores=folds,
        scoring=settings.scoring,
        class_weight=outcome.class_weight,
        notes=(*data_notes, *outcome.notes),
        search=tuple(outcome.points),
        cv_decision=outcome.cv_decision,
    )
