"""Linear heads fitted by a batched solver: one C (:class:`LinearHead`) or a CV search over C
(:class:`LinearHeadCV`).

Both are scikit-learn classifiers (``__init__`` stores parameters only, fitted state ends in
``_``, ``clone``/``Pipeline``/``GridSearchCV``/pickling work). ``fit`` runs torch (imported
inside it, so ``import classifiers`` stays torch-free); the fitted state is numpy only, so a
saved head predicts without torch.

The model is scikit-learn's: minimise ``C * sum_i w_i * loss_i + |W|^2 / 2`` over the weights
``W`` and an unpenalised intercept. ``loss="log_loss"`` is multinomial logistic regression
(``LogisticRegression``'s default; two classes give its binary model), ``loss="squared_hinge"``
a one-vs-rest linear SVM (``LinearSVC``'s default loss, but its intercept is not penalised).

Why it is fast at any number of classes. Every class of a fit, every CV fold, and the
regularisation path are one batched problem (``classifiers._torch_linear``): a CV fold is the
training rows with the held-out rows weighted 0, so all folds share one matrix product with the
rows and the held-out predictions come from that same product; the search walks C upwards,
each point warm-started from the last with the solver's curvature memory kept. The solver is
L-BFGS in the eigenbasis of the rows' covariance (an exact change of coordinates for an L2
penalty), which makes its steps nearly independent of how correlated the columns are.

:class:`LinearHeadCV` runs the linear-probe protocol of CLIP (Radford et al. 2021) and
Kornblith et al. (2019): a coarse pass over C in ``Cs`` (default 13 points, 1e-6 .. 1e6, one per
decade), then a refinement of ``refine`` points on each side of the best, between it and its
neighbours; the C with the best mean CV score wins. Accuracy on a few hundred rows ties often,
over decades of C; a tie goes to the lower mean loss of the held-out rows (log-loss, or the
one-vs-rest squared hinge: a continuous score from the same CV fits), then to the smaller C.
The search's fits stop at ``search_tol``; the final refit, at ``tol``, starts from the mean of
the folds' solutions at the chosen C (as scikit-learn's ``LogisticRegressionCV`` does), which
lies near the whole split's optimum.

The same numbers under any load. A fit's thread count follows the cores free at the time
(:func:`free_cores`), so it changes with the machine's load; its results must not. MKL's matrix
products are made independent of the thread count by its strict reproducibility mode
(``MKL_CBWR=AUTO,STRICT``, set when ``classifiers`` is imported, before MKL's first call;
without it a fifth of the entries of a product over 1,445 rows differed between one thread and
two), and the eigen- and QR decompositions, whose results depend on the thread count, always
run on one thread. A fit is then bit-identical at any ``n_jobs`` on one machine, and the same in
a sweep's worker process (:mod:`classifiers.pool`, one thread each) as outside one.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from classifiers.memo import LastResult, content_key

__all__ = [
    "DEFAULT_CS",
    "LOSSES",
    "SCORERS",
    "LinearHead",
    "LinearHeadCV",
    "available_bytes",
    "default_n_jobs",
    "load_torch",
    "use_cores",
]

LOSSES = ("log_loss", "squared_hinge")

#: The coarse pass: one C per decade from 1e-6 to 1e6.
DEFAULT_CS: tuple[float, ...] = tuple(10.0**k for k in range(-6, 7))


def _f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


#: Selection scores, named as scikit-learn's scorers (``GridSearchCV(scoring=name)`` gives the
#: same numbers).
SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda t, p: float(accuracy_score(t, p)),
    "balanced_accuracy": lambda t, p: float(balanced_accuracy_score(t, p)),
    "f1_macro": _f1_macro,
}


def scorer(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """The selection score called ``name``, from :data:`SCORERS`.

    Raises:
        ValueError: ``name`` is not one of them; the message lists them.
    """
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"scoring must be one of {sorted(SCORERS)}, got {name!r}") from None


#: Cores this process's fits may use, when :func:`use_cores` set it (a sweep's worker: 1).
_CORES: int | None = None


def use_cores(cores: int | None) -> None:
    """From now on let this process's fits use at most ``cores`` cores (``None``: every core
    it may run on); :mod:`classifiers.pool`'s workers take one each."""
    global _CORES
    if cores is not None and cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    _CORES = cores
    torch = sys.modules.get("torch")  # already loaded: its own pool too, for work outside a fit
    if cores is not None and torch is not None:
        torch.set_num_threads(cores)


def load_torch() -> None:
    """Import torch now, which the batched heads' fits need: worker processes forked after
    this share it rather than each importing it (seconds), and no fit's time counts it."""
    import torch  # noqa: F401


def default_n_jobs() -> int:
    """Cores this process may run on (at most :func:`use_cores`' limit)."""
    if _CORES is not None:
        return _CORES
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_bytes() -> int | None:
    """Memory the system has free now (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: Multiply-adds of one product of the rows with every output below which one thread is used:
#: on small problems thread hand-offs cost more than they save, and on a busy machine a lot more.
SMALL_WORK = 1 << 24


def free_cores(loadavg: str = "/proc/loadavg", tasks: str = "/proc/self/task") -> int:
    """Cores of this process not taken by another process's runnable task right now (at least 1).

    Read from the kernel's count of runnable tasks (``/proc/loadavg``), less this process's own
    runnable threads (``tasks``: the calling thread, and a thread pool that is still spinning
    after its last parallel region, which must not make the next fit shrink its own pool);
    where it cannot be read, every core. A torch thread pool wider than the free cores spins at
    each of its barriers while a thread waits to be scheduled: on this project's shared 2-core
    machine, with other work running, two threads made the batched heads 4-7x slower than one
    (``benchmarks/RESULTS.md``, issue 11).
    """
    cores = default_n_jobs()
    try:
        with open(loadavg) as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, min(cores, cores - (running - _own_running(tasks))))


def _own_running(tasks: str) -> int:
    """This process's threads in the running state (``R`` in ``/proc/self/task/*/stat``), at
    least 1: the caller."""
    count = 0
    for stat in Path(tasks).glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the thread ended
            continue
        end = text.rfind(")")  # the state follows the command name, which may hold spaces
        count += text[end + 2 : end + 3] == "R"
    return max(1, count)


def _threads(n_jobs: int | None, work: float) -> int:
    """Threads of one batched fit: one for small work; ``n_jobs`` when given (negative:
    counted back from the cores, as joblib); by default the cores free right now; never more
    than :func:`use_cores` allows."""
    if work < SMALL_WORK:
        return 1
    if n_jobs is None:
        return free_cores()
    if n_jobs < 0:
        return max(1, default_n_jobs() + 1 + n_jobs)
    return max(1, min(int(n_jobs), _CORES or int(n_jobs)))


def _check_common(est: Any) -> None:
    if est.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {est.loss!r}")
    if not (isinstance(est.tol, (int, float)) and est.tol > 0):
        raise ValueError(f"tol must be a positive number, got {est.tol!r}")
    if not (isinstance(est.max_iter, (int, np.integer)) and est.max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {est.max_iter!r}")
    cw = est.class_weight
    if not (cw is None or cw == "balanced" or isinstance(cw, dict)):
        raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")


def _class_factors(
    class_weight: Any, y_idx: np.ndarray, classes: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Per-row class-weight factors of a fit over ``rows`` (a boolean mask)."""
    factors = np.ones(len(y_idx))
    if class_weight is None:
        return factors
    if class_weight == "balanced":
        counts = np.bincount(y_idx[rows], minlength=len(classes)).astype(np.float64)
        present = counts > 0
        per_class = np.zeros(len(classes))
        per_class[present] = rows.sum() / (present.sum() * counts[present])
    else:
        per_class = np.array([float(class_weight.get(c, 1.0)) for c in classes])
    return per_class[y_idx]


@dataclass
class _Prepared:
    """Validated training data of one ``fit``."""

    X: np.ndarray
    y_idx: np.ndarray
    classes: np.ndarray
    sample_weight: np.ndarray


def _prepare(est: Any, X: Any, y: Any, sample_weight: Any) -> _Prepared:
    X, y = validate_data(est, X, y, dtype=[np.float32, np.float64], ensure_min_samples=2)
    check_classification_targets(y)
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"This solver needs samples of at least 2 classes in the data, but the data "
            f"contains only one class: {classes[0]!r}"
        )
    sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
    if np.any(sw < 0):
        raise ValueError("sample_weight must be non-negative")
    return _Prepared(X, y_idx.astype(np.int64), classes, sw)


#: The last fit's centred rows, column means and basis, keyed by the rows' content, the seed
#: and the device. A sweep fits logreg and the linear SVM, a search and its refit, on the same
#: rows: the basis (an eigendecomposition of the D x D covariance, 1.3 s at D = 2,048 here) and
#: the rotated rows are computed once. Rows over the size below are not kept.
_SHARED = LastResult()
_SHARED_MAX_BYTES = 1 << 29


class _Session:
    """torch, the device and the thread count for one ``fit``; builds the batched problems."""

    def __init__(self, device: str, n_jobs: int | None, work: float) -> None:
        import torch

        from classifiers import _torch_linear

        self.torch = torch
        self.tl = _torch_linear
        self.device = _torch_linear.resolve_device(device)
        self.threads = _torch_linear.torch_threads(_threads(n_jobs, work))

    def __enter__(self) -> _Session:
        self.threads.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.threads.__exit__(*exc)

    def decomposition_threads(self) -> Any:
        """A context running torch on one thread, whatever the load and wherever the fit runs:
        for the eigen- and QR decompositions, whose results depend on the thread count (module
        docstring, "The same numbers under any load")."""
        return self.tl.torch_threads(1)

    def rows(self, X: np.ndarray) -> tuple[Any, np.ndarray]:
        """Centred float32 rows on the device, and the column means (float64)."""
        Xt = self.torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=self.device)
        mean = Xt.to(self.torch.float64).mean(dim=0)
        Xt = Xt - mean.to(self.torch.float32)
        return Xt, mean.cpu().numpy()

    def rows_and_basis(self, X: np.ndarray, seed: int) -> tuple[Any, np.ndarray, Any]:
        """:meth:`rows` and their solving coordinates (``make_basis``), shared with the last
        fit on the same rows (:data:`_SHARED`)."""
        X32 = np.ascontiguousarray(X, dtype=np.float32)

        def make() -> tuple[Any, np.ndarray, Any]:
            rows, mean = self.rows(X32)
            with self.decomposition_threads():
                return rows, mean, self.tl.make_basis(rows, seed=seed)

        if X32.nbytes > _SHARED_MAX_BYTES:
            return make()
        return _SHARED.get((content_key(X32), seed, str(self.device)), make)

    def batch(
        self,
        rows: Any,
        basis: Any,
        y_idx: np.ndarray,
        n_classes: int,
        weights: np.ndarray,
        loss: str,
    ) -> Any:
        binary = loss == "squared_hinge" and n_classes == 2
        return self.tl.Batch(
            rows,
            y_idx,
            n_classes,
            weights,
            loss=loss,
            basis=basis,
            device=self.device,
            binary=binary,
        )


def _solver_C(C: float, loss: str, n_classes: int) -> float:
    """The C given to the solver for scikit-learn's C: two-class log-loss runs as a two-output
    softmax, whose optimum at C / 2 is the binary model at C (w = w1 - w0, w0 = -w1)."""
    return C / 2.0 if loss == "log_loss" and n_classes == 2 else C


def _to_sklearn_layout(
    W: np.ndarray, b: np.ndarray, mean: np.ndarray, loss: str, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One fit's weights (outputs, D) and intercepts on centred rows -> ``coef_``,
    ``intercept_`` on the rows as given (binary log-loss: one row, class 1 minus class 0)."""
    if loss == "log_loss" and n_classes == 2:
        W, b = (W[1] - W[0])[None, :], np.array([b[1] - b[0]])
    return W, b - W @ mean


def _fit_one(
    session: _Session,
    rows: Any,
    basis: Any,
    mean: np.ndarray,
    data: _Prepared,
    *,
    loss: str,
    C: float,
    class_weight: Any,
    tol: float,
    max_iter: int,
    start: Any | None = None,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """One fit on every row, from ``start`` ((K, width + 1) in the batch's coordinates) or
    from zero weights; (coef, intercept, n_iter, converged)."""
    everything = np.ones(len(data.y_idx), dtype=bool)
    weights = data.sample_weight * _class_factors(
        class_weight, data.y_idx, data.classes, everything
    )
    n_classes = len(data.classes)
    batch = session.batch(rows, basis, data.y_idx, n_classes, weights[None, :], loss)
    P, report = batch.solve(
        batch.zeros() if start is None else start,
        np.array([_solver_C(C, loss, n_classes)]),
        tol=tol,
        max_iter=max_iter,
    )
    W, b = batch.coefficients(P)
    coef, intercept = _to_sklearn_layout(W[0], b[0], mean, loss, n_classes)
    return coef, intercept, int(report.n_iter[0]), bool(report.converged[0])


class _LinearPredictMixin:
    """Predictions from ``coef_``, ``intercept_`` and ``classes_`` (numpy only)."""

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores per class (one column, class 1's score, for two classes)."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T.astype(X.dtype, copy=False) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Class with the highest score."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def _has_proba(self) -> bool:
        return self.loss == "log_loss"

    @available_if(_has_proba)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (softmax of the scores; the logistic function for two)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1.0 - p, p])
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    @available_if(_has_proba)
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class LinearHead(_LinearPredictMixin, ClassifierMixin, BaseEstimator):
    """L2-regularised linear classifier at one C, fitted by the batched torch solver.

    Args:
        loss: ``"log_loss"`` (multinomial logistic regression, has ``predict_proba``) or
            ``"squared_hinge"`` (one-vs-rest linear SVM).
        C: Inverse regularisation strength, as in scikit-learn.
        class_weight: ``None``, ``"balanced"`` (``n / (n_classes * count)`` per class) or a
            dict class -> weight; multiplies ``sample_weight``.
        tol: Stop when the largest gradient entry of the mean objective is at most this.
        max_iter: Most L-BFGS iterations.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ...
        n_jobs: CPU threads for the solver; ``None`` = every core this process may use.
        random_state: Seed of the row sample behind the solver's preconditioner on very wide
            data (the result does not depend on it beyond the solver tolerance).

    Attributes:
        classes_, coef_ ((n_classes, D); (1, D) for two classes), intercept_, n_iter_,
        converged_, n_features_in_.
    """

    def __init__(
        self,
        loss: str = "log_loss",
        *,
        C: float = 1.0,
        class_weight: Any = None,
        tol: float = 1e-4,
        max_iter: int = 1000,
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.loss = loss
        self.C = C
        self.class_weight = class_weight
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LinearHead:
        """Fit on ``(X, y)``; ``sample_weight`` (optional) weighs each row's loss."""
        _check_common(self)
        if not (isinstance(self.C, (int, float)) and self.C > 0 and math.isfinite(self.C)):
            raise ValueError(f"C must be a positive finite number, got {self.C!r}")
        data = _prepare(self, X, y, sample_weight)
        work = data.X.size * len(data.classes)
        with _Session(self.device, self.n_jobs, work) as session:
            rows, mean, basis = session.rows_and_basis(data.X, _seed(self.random_state))
            coef, intercept, n_iter, converged = _fit_one(
                session,
                rows,
                basis,
                mean,
                data,
                loss=self.loss,
                C=float(self.C),
                class_weight=self.class_weight,
                tol=self.tol,
                max_iter=self.max_iter,
            )
        self.classes_ = data.classes
        self.coef_, self.intercept_ = coef, intercept
        self.n_iter_, self.converged_ = n_iter, converged
        return self


def _seed(random_state: Any) -> int:
    if random_state is None:
        return 0
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    raise ValueError(f"random_state must be None or an integer, got {random_state!r}")


def _splits(
    cv: Any, X: np.ndarray, y: np.ndarray, groups: Any, random_state: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) index pairs of ``cv``: an int (stratified folds, grouped when
    ``groups`` is given), a splitter with ``split``, or an iterable of index pairs."""
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        if cv < 2:
            raise ValueError(f"cv must be >= 2, got {cv}")
        seed = _seed(random_state)
        # No more folds than rows of the rarest class (at least 2), as the sweep plans them:
        # a head fitted on its own on a handful of rows still fits.
        n_splits = int(min(cv, max(2, np.bincount(np.unique(y, return_inverse=True)[1]).min())))
        if groups is None:
            splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
        else:
            splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        return [(np.asarray(a), np.asarray(b)) for a, b in splitter.split(X, y, groups)]
    if hasattr(cv, "split"):
        return [(np.asarray(a), np.asarray(b)) for a, b in cv.split(X, y, groups)]
    if isinstance(cv, Iterable):
        return [(np.asarray(a), np.asarray(b)) for a, b in cv]
    raise ValueError(f"cv must be an int, a CV splitter or an iterable of splits, got {cv!r}")


@dataclass(eq=False)
class _Point:
    """One evaluated C of the search."""

    C: float
    stage: str
    scores: np.ndarray  # per fold
    losses: np.ndarray  # per fold: the mean loss of its held-out rows
    n_iter: int
    converged: bool

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def rank_key(self) -> tuple[float, float, float]:
        """Higher mean score first; ties (to 12 digits, as fold scores summed in another order
        differ in the last bit) go to the lower mean held-out loss, then to the smaller C."""
        return (-round(self.mean, 12), float(np.mean(self.losses)), self.C)


class LinearHeadCV(_LinearPredictMixin, ClassifierMixin, BaseEstimator):
    """:class:`LinearHead` that chooses C itself by cross-validation on the data it is fitted on
    (the protocol is in the module docstring).

    Args:
        loss, class_weight, tol, max_iter, device, n_jobs, random_state: As in
            :class:`LinearHead` (``tol`` and ``max_iter`` apply to the final refit;
            ``random_state`` also seeds the folds when ``cv`` is an int).
        Cs: Coarse grid of C (sorted ascending; at least 1 value). Default: 1e-6 .. 1e6,
            one per decade.
        refine: Points added on each side of the coarse pass's best C, log-spaced between it
            and its neighbour (0: no refinement).
        cv: Folds: an int (stratified, shuffled; grouped by ``groups`` when given), a splitter
            with ``split(X, y, groups)``, or an iterable of (train, test) index pairs.
        scoring: ``"accuracy"``, ``"balanced_accuracy"`` or ``"f1_macro"``.
        search_tol: ``tol`` of the search's fits (CV scores hardly move below it).
        search_max_iter: Most iterations per fit and C during the search.

    Attributes:
        C_, best_params_ (``{"C": C_}``), best_score_, best_index_, cv_results_ (a dict of
        arrays over every evaluated C, ascending: ``param_C``, ``params``,
        ``mean_test_score``, ``std_test_score``, ``rank_test_score``, ``split{k}_test_score``,
        ``n_iter``, ``converged``, ``stage``), n_splits_, best_estimator_ (the refit, a fitted
        :class:`LinearHead` at ``C_``), classes_, coef_, intercept_, n_iter_, converged_,
        cv_decision_ (every training row's ``decision_function`` scores at ``C_`` from the
        fold fit that held it out, float32: what ``cross_val_predict(..., cv=folds,
        method="decision_function")`` gives, to ``search_tol``, e.g. to calibrate
        probabilities on; ``None`` when the folds do not hold out every row exactly once, or
        past :data:`MAX_HELD_OUT_SCORES` entries).
    """

    def __init__(
        self,
        loss: str = "log_loss",
        *,
        Cs: Any = DEFAULT_CS,
        refine: int = 2,
        cv: Any = 5,
        scoring: str = "accuracy",
        class_weight: Any = None,
        tol: float = 1e-4,
        search_tol: float = 1e-3,
        max_iter: int = 1000,
        search_max_iter: int = 200,
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.loss = loss
        self.Cs = Cs
        self.refine = refine
        self.cv = cv
        self.scoring = scoring
        self.class_weight = class_weight
        self.tol = tol
        self.search_tol = search_tol
        self.max_iter = max_iter
        self.search_max_iter = search_max_iter
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _grid(self) -> np.ndarray:
        Cs = np.sort(np.asarray(self.Cs, dtype=np.float64).ravel())
        if Cs.size == 0 or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
            raise ValueError(f"Cs must hold positive finite numbers, got {self.Cs!r}")
        return np.unique(Cs)

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> LinearHeadCV:
        """Search C by CV on ``(X, y)``, then refit at the best C on all of it.

        ``groups`` (optional, one label per row, e.g. the image key) keeps every group's rows
        in one fold when ``cv`` is an int or a group-aware splitter.
        """
        _check_common(self)
        scorer(self.scoring)  # checked before any work
        if not (isinstance(self.refine, (int, np.integer)) and self.refine >= 0):
            raise ValueError(f"refine must be an integer >= 0, got {self.refine!r}")
        grid = self._grid()
        data = _prepare(self, X, y, sample_weight)
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape[0] != data.X.shape[0]:
                raise ValueError(f"groups has {groups.shape[0]} entries for {data.X.shape[0]} rows")
        folds = _splits(self.cv, data.X, data.y_idx, groups, self.random_state)
        work = data.X.size * len(data.classes) * len(folds)
        with _Session(self.device, self.n_jobs, work) as session:
            rows, mean, basis = session.rows_and_basis(data.X, _seed(self.random_state))
            points, start, held_out = self._search(session, rows, basis, mean, data, folds, grid)
            best = points[_best_index(points)]
            coef, intercept, n_iter, converged = _fit_one(
                session,
                rows,
                basis,
                mean,
                data,
                loss=self.loss,
                C=best.C,
                class_weight=self.class_weight,
                tol=self.tol,
                max_iter=self.max_iter,
                start=start,
            )
        self._store(points, best, len(folds))
        self.cv_decision_ = held_out
        refit = LinearHead(**{k: v for k, v in self._refit_params().items()}, C=best.C)
        refit.classes_, refit.coef_, refit.intercept_ = data.classes, coef, intercept
        refit.n_iter_, refit.converged_ = n_iter, converged
        refit.n_features_in_ = self.n_features_in_
        self.best_estimator_ = refit
        self.classes_, self.coef_, self.intercept_ = data.classes, coef, intercept
        self.n_iter_, self.converged_ = n_iter, converged
        return self

    def _refit_params(self) -> dict[str, Any]:
        keys = ("loss", "class_weight", "tol", "max_iter", "device", "n_jobs", "random_state")
        return {k: getattr(self, k) for k in keys}

    def _search(
        self,
        session: _Session,
        rows: Any,
        basis: Any,
        mean: np.ndarray,
        data: _Prepared,
        folds: list[tuple[np.ndarray, np.ndarray]],
        grid: np.ndarray,
    ) -> tuple[list[_Point], Any, np.ndarray | None]:
        """Every evaluated C; the refit's start: the mean of the folds' solutions at the best
        C (as scikit-learn's ``LogisticRegressionCV`` starts its refit), which sits near the
        whole split's optimum, so the refit needs a fraction of the iterations from zero; and
        the held-out scores at the best C (:func:`_held_out_scores`)."""
        n = len(data.y_idx)
        weights = np.zeros((len(folds), n))
        for b, (train, _) in enumerate(folds):
            mask = np.zeros(n, dtype=bool)
            mask[train] = True
            factors = _class_factors(self.class_weight, data.y_idx, data.classes, mask)
            weights[b] = mask * data.sample_weight * factors
        n_classes = len(data.classes)
        batch = session.batch(rows, basis, data.y_idx, n_classes, weights, self.loss)
        score = scorer(self.scoring)

        last: dict[str, Any] = {}  # parameters and predictions of the last evaluation
        best: dict[str, Any] = {}  # the best point so far and its solutions

        def evaluate(P: Any, C: float, stage: str) -> tuple[Any, _Point]:
            solver_C = np.full(len(folds), _solver_C(C, self.loss, n_classes))
            P_new, report = batch.solve(
                P, solver_C, tol=self.search_tol, max_iter=self.search_max_iter
            )
            unchanged = P is last.get("P") and not report.n_iter.any()
            pred, loss = last["pred"] if unchanged else batch.predict(P_new)
            last.update(P=P_new, pred=(pred, loss))
            tests = [test for _, test in folds]
            scores = np.array([score(data.y_idx[t], pred[t, b]) for b, t in enumerate(tests)])
            losses = np.array([loss[t, b].mean() for b, t in enumerate(tests)])
            point = _Point(
                C, stage, scores, losses, int(report.n_iter.max()), bool(report.converged.all())
            )
            if not best or point.rank_key < best["point"].rank_key:
                best.update(point=point, P=P_new)
            return P_new, point

        points: list[_Point] = []
        P = batch.zeros()
        # Solutions that can seed the refinement: at the best C and the one below it, and the
        # latest (the one below the next point, which may become the best).
        anchors: dict[int, Any] = {}
        for i, C in enumerate(grid):
            P, point = evaluate(P, float(C), "coarse")
            points.append(point)
            anchors[i] = P
            best_i = _best_index(points)
            anchors = {k: v for k, v in anchors.items() if k in (best_i - 1, best_i, i)}
        if self.refine and len(grid) > 1:
            points += self._refine(evaluate, batch, grid, points, anchors)
        start = best["P"].view(len(folds), -1, best["P"].shape[1]).mean(dim=0)
        held_out = _held_out_scores(batch, best["P"], folds, data, mean, self.loss)
        return sorted(points, key=lambda p: p.C), start, held_out

    def _refine(
        self,
        evaluate: Callable[[Any, float, str], tuple[Any, _Point]],
        batch: Any,
        grid: np.ndarray,
        coarse: list[_Point],
        anchors: dict[int, Any],
    ) -> list[_Point]:
        """Points between the best coarse C and each neighbour, warm-started from the lower end
        of each interval."""
        i = _best_index(coarse)
        added: list[_Point] = []
        for lo in (i - 1, i):
            hi = lo + 1
            if lo < 0 or hi >= len(grid):
                continue
            P = anchors[lo]
            batch.reset_memory()
            steps = np.arange(1, self.refine + 1) / (self.refine + 1)
            for t in steps:
                C = float(np.exp(np.log(grid[lo]) * (1 - t) + np.log(grid[hi]) * t))
                P, point = evaluate(P, C, "refine")
                added.append(point)
        return added

    def _store(self, points: list[_Point], best: _Point, n_splits: int) -> None:
        means = np.array([p.mean for p in points])
        order = sorted(range(len(points)), key=lambda i: points[i].rank_key)
        ranks = np.empty(len(points), dtype=np.int64)
        ranks[order] = np.arange(1, len(points) + 1)
        results: dict[str, Any] = {
            "param_C": np.array([p.C for p in points]),
            "params": [{"C": p.C} for p in points],
            "mean_test_score": means,
            "std_test_score": np.array([float(np.std(p.scores)) for p in points]),
            "mean_test_loss": np.array([float(np.mean(p.losses)) for p in points]),
            "rank_test_score": ranks,
            "n_iter": np.array([p.n_iter for p in points]),
            "converged": np.array([p.converged for p in points]),
            "stage": np.array([p.stage for p in points]),
        }
        for k in range(n_splits):
            results[f"split{k}_test_score"] = np.array([p.scores[k] for p in points])
        self.cv_results_ = results
        self.best_index_ = next(i for i, p in enumerate(points) if p is best)
        self.C_ = best.C
        self.best_params_ = {"C": best.C}
        self.best_score_ = best.mean
        self.n_splits_ = n_splits


#: Most entries (rows x score columns) of the held-out scores a search keeps (128 MiB).
MAX_HELD_OUT_SCORES = 1 << 25


def _each_row_held_out_once(folds: list[tuple[np.ndarray, np.ndarray]], n: int) -> bool:
    """Whether the folds' held-out parts cover the ``n`` rows exactly (a K-fold split)."""
    held = np.zeros(n, dtype=np.int64)
    for _, test in folds:
        np.add.at(held, test, 1)
    return bool(np.all(held == 1))


def _held_out_scores(
    batch: Any,
    P: Any,
    folds: list[tuple[np.ndarray, np.ndarray]],
    data: _Prepared,
    mean: np.ndarray,
    loss: str,
) -> np.ndarray | None:
    """Every row's ``decision_function`` scores (float32, in its layout) under the fit of the
    fold that held it out, from the folds' solutions ``P``: what ``cross_val_predict`` would
    give at the chosen C on these folds (to the search's tolerance), without fitting again.
    ``None`` when some row is held out by no fold or by several, or when the scores would pass
    :data:`MAX_HELD_OUT_SCORES`."""
    n, n_classes = len(data.y_idx), len(data.classes)
    columns = 1 if n_classes == 2 else n_classes
    if n * columns > MAX_HELD_OUT_SCORES or not _each_row_held_out_once(folds, n):
        return None
    W, b = batch.coefficients(P)
    scores = np.empty((n, columns), dtype=np.float32)
    for f, (_, test) in enumerate(folds):
        coef, intercept = _to_sklearn_layout(W[f], b[f], mean, loss, n_classes)
        scores[test] = data.X[test] @ coef.T.astype(data.X.dtype, copy=False) + intercept
    return scores.ravel() if columns == 1 else scores


def _best_index(points: list[_Point]) -> int:
    """Highest mean score; ties go to the lower held-out loss, then the smaller C."""
    return min(range(len(points)), key=lambda i: points[i].rank_key)
