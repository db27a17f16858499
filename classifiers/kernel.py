"""RBF-kernel SVM heads that compute each kernel once, as one matrix product.

scikit-learn's ``SVC(kernel="rbf")`` evaluates kernel values inside libsvm, pair of classes by
pair of classes (one-vs-one): with 100 classes and 8,000 rows of 2,048 columns one fit took 104 s
of CPU here, nearly all of it kernel arithmetic. The same fit on a precomputed kernel matrix
(one GEMM for all pairs) took 4 s, with the same predictions. :class:`RBFSVMHead` is that
model, ``SVC(kernel="rbf", gamma="scale")`` behind a ``StandardScaler``, fitted through a
precomputed kernel; :class:`RBFSVMHeadCV` chooses ``C`` by cross-validation, one kernel per fold
shared by every ``C``, each fold standardised with its own training rows (as a scaler inside
``GridSearchCV`` would) and the (fold, C) fits spread over ``n_jobs`` threads.

Predictions and decision values are libsvm's one-vs-one votes and sums, computed here as matrix
products (:class:`classifiers.one_vs_one.OneVsOne`) rather than by libsvm row by row.

Everything here is numpy and scikit-learn (no torch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from classifiers.cv_table import PredictsWithRefit, store_search
from classifiers.linear import _splits, default_n_jobs, scorer
from classifiers.memo import LastResult, content_key
from classifiers.one_vs_one import OneVsOne

__all__ = ["RBFSVMHead", "RBFSVMHeadCV"]


#: Rows per block wherever a whole-matrix temporary would be large: on this project's VM,
#: touching fresh memory costs about 8 ms per MB, so a 6,400-row kernel built with
#: whole-matrix float64 temporaries took 5.8 s and blockwise 1.1 s.
_BLOCK = 512


def _row_blocks(n: int) -> list[slice]:
    return [slice(s, s + _BLOCK) for s in range(0, n, _BLOCK)]


def _moments(rows: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population variances in float64, weighted by ``weights`` when given
    (a row of weight 2 counts as that row twice); two passes over blocks of rows."""
    total = float(rows.shape[0] if weights is None else weights.sum())
    mean = np.zeros(rows.shape[1])
    for b in _row_blocks(rows.shape[0]):
        block = rows[b].astype(np.float64)
        mean += block.sum(axis=0) if weights is None else weights[b] @ block
    mean /= total
    var = np.zeros(rows.shape[1])
    for b in _row_blocks(rows.shape[0]):
        block = rows[b] - mean
        block *= block
        var += block.sum(axis=0) if weights is None else weights[b] @ block
    return mean, var / total


def _standardizer(
    rows: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and deviation of ``rows`` (StandardScaler's: population, 1 where 0),
    weighted by ``weights`` when given."""
    mean, var = _moments(rows, weights)
    scale = np.sqrt(var)
    return mean, np.where(scale > 0, scale, 1.0)


def _standardize(rows: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(rows - mean) / scale`` as float32 (computed in float64, block by block)."""
    out = np.empty(rows.shape, dtype=np.float32)
    for b in _row_blocks(rows.shape[0]):
        out[b] = (rows[b] - mean) / scale
    return out


def _gamma(gamma: Any, Z: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``"scale"``: 1 / (columns * variance of every entry of the standardised training rows),
    as SVC (weighted by ``weights`` when given)."""
    if gamma == "scale":
        means, variances = _moments(Z, weights)
        # Every entry's variance: the columns' own, plus their means' spread around the mean.
        var = float(np.mean(variances + (means - means.mean()) ** 2))
        return 1.0 / (Z.shape[1] * var) if var > 0 else 1.0
    if isinstance(gamma, (int, float)) and gamma > 0:
        return float(gamma)
    raise ValueError(f"gamma must be 'scale' or a positive number, got {gamma!r}")


def _rbf(A: np.ndarray, B: np.ndarray | None, gamma: float) -> np.ndarray:
    """exp(-gamma |a - b|^2) for every row pair of ``A`` and ``B``, float64 (the products in
    float32), computed in blocks of rows. ``B=None``: ``A`` against itself, computed on and
    above the diagonal and mirrored (half the products; exactly symmetric)."""
    a_sq = np.einsum("ij,ij->i", A, A, dtype=np.float64)
    b_sq = a_sq if B is None else np.einsum("ij,ij->i", B, B, dtype=np.float64)
    K = np.empty((A.shape[0], A.shape[0] if B is None else B.shape[0]))
    other = A if B is None else B
    for block in _row_blocks(A.shape[0]):
        cols = slice(block.start if B is None else 0, None)  # against itself: from the diagonal
        out = K[block, cols]
        np.add(a_sq[block, None], b_sq[None, cols], out=out)
        out -= 2.0 * (A[block] @ other[cols].T)
        np.maximum(out, 0.0, out=out)
        out *= -gamma
        np.exp(out, out=out)
        if B is None:
            K[block, : block.start] = K[: block.start, block].T
    return K


#: The last kernel :meth:`RBFSVMHead._kernel` computed, keyed by the fitted ``SVC`` it was for
#: and the rows' content: evaluating a head asks for its predictions and its decision values on
#: the same rows, one kernel for both (at 100 classes, 2,000 x 8,000: 1.5 s each). Kernels over
#: the size below are not kept.
_LAST_KERNEL = LastResult()
_LAST_KERNEL_MAX_BYTES = 1 << 28
#: The share of the free memory the kernels may take.
_MEMORY_SHARE = 0.8


def _available_bytes() -> int | None:
    """Memory the system has free now (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _kernel_bytes(n_rows: int, kernels: int) -> float:
    """Bytes of ``kernels`` float64 kernel matrices of ``n_rows`` squared entries: every
    training row is a row and a column of the kernel, so 50,000 rows need 20 GB for one."""
    return 8.0 * kernels * float(n_rows) ** 2


def _check_kernel_memory(n_rows: int, kernels: int, available: int | None) -> None:
    """Refuse, in one line, a fit whose kernels would not fit in the memory free now."""
    need = _kernel_bytes(n_rows, kernels)
    if available is not None and need > _MEMORY_SHARE * available:
        raise MemoryError(
            f"rbf_svm needs {need / 2**30:.1f} GiB for its kernel matrices on {n_rows} training "
            f"rows, more than the {available / 2**30:.1f} GiB free; leave it out (--heads) or "
            "use fewer rows"
        )


def _svc(C: float, class_weight: Any, tol: float, cache_size: float) -> SVC:
    return SVC(kernel="precomputed", C=C, class_weight=class_weight, tol=tol, cache_size=cache_size)


@dataclass
class _Training:
    """One fit's training rows, standardised with their own statistics, and their kernel."""

    Z: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    gamma: float
    K: np.ndarray
    y: np.ndarray
    weights: np.ndarray | None


def _weighted_rows(
    X: np.ndarray, y: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The rows that take part in a fit: a row of weight 0 has no part in the model (libsvm
    drops it too), so it is left out of the scaling and the kernel as well."""
    if weights is None:
        return X, y, None
    kept = weights > 0
    if not kept.any():
        raise ValueError("every sample_weight is 0: nothing to fit")
    return X[kept], y[kept], weights[kept]


def _training(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None, gamma: Any) -> _Training:
    """Standardise the rows that take part (:func:`_weighted_rows`) and compute their kernel,
    the rows sorted by class.

    libsvm groups the rows by class (keeping their order within a class) and reads a pair of
    classes' kernel values through their original row numbers: with the rows already grouped
    its reads are nearly contiguous, and the fit is the same to the bit but 2.2x faster
    (6,400 rows, 100 classes: 2.6 s -> 1.2 s).
    """
    X, y, weights = _weighted_rows(X, y, weights)
    order = np.argsort(np.unique(y, return_inverse=True)[1], kind="stable")
    X, y = X[order], y[order]
    weights = None if weights is None else weights[order]
    mean, scale = _standardizer(X, weights)
    Z = _standardize(X, mean, scale)
    g = _gamma(gamma, Z, weights)
    return _Training(Z, mean, scale, g, _rbf(Z, None, g), y, weights)


class RBFSVMHead(ClassifierMixin, BaseEstimator):
    """``StandardScaler`` + ``SVC(kernel="rbf")`` (one-vs-one, libsvm), fitted through a
    precomputed kernel matrix.

    Args:
        C: libsvm's C.
        gamma: ``"scale"`` (``1 / (columns * variance)`` of the standardised rows) or a number.
        class_weight: As ``SVC``'s.
        tol, cache_size: As ``SVC``'s.

    Attributes:
        classes_, mean_, scale_, gamma_, support_rows_ (the standardised support vectors),
        svc_ (the fitted precomputed-kernel ``SVC``; its rows are the training rows of nonzero
        weight sorted by class, so its ``support_`` numbers that order), n_features_in_.
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        gamma: Any = "scale",
        class_weight: Any = None,
        tol: float = 1e-3,
        cache_size: float = 200,
    ) -> None:
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.tol = tol
        self.cache_size = cache_size

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> RBFSVMHead:
        """Fit on ``(X, y)`` (``sample_weight`` as ``SVC``'s)."""
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=2)
        check_classification_targets(y)
        weights = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        _check_kernel_memory(X.shape[0], 1, _available_bytes())
        return self._fit_training(_training(X, y, weights, self.gamma))

    def _fit_training(self, training: _Training) -> RBFSVMHead:
        """Fit libsvm on prepared training rows and their kernel."""
        self.mean_, self.scale_, self.gamma_ = training.mean, training.scale, training.gamma
        svc = _svc(self.C, self.class_weight, self.tol, self.cache_size)
        self.svc_ = svc.fit(training.K, training.y, sample_weight=training.weights)
        self.support_rows_ = training.Z[self.svc_.support_]
        self.classes_ = self.svc_.classes_
        return self

    def _kernel(self, X: Any) -> np.ndarray:
        """Kernel of ``X`` against the support vectors only (libsvm reads no other column);
        the last one is kept for the same fit and the same rows (:data:`_LAST_KERNEL`)."""
        check_is_fitted(self, "svc_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        X = np.ascontiguousarray(X)
        return _LAST_KERNEL.get(
            (self.svc_, content_key(X)),  # the fitted SVC compares by identity
            lambda: _rbf(_standardize(X, self.mean_, self.scale_), self.support_rows_, self.gamma_),
            keep=lambda K: K.nbytes <= _LAST_KERNEL_MAX_BYTES,
        )

    def decision_function(self, X: Any) -> np.ndarray:
        """``SVC``'s decision values: one column (class 1's side) for two classes, else the
        one-vs-one votes turned into per-class scores."""
        K = self._kernel(X)  # checks that the head is fitted
        return OneVsOne(self.svc_).scores(K)

    def predict(self, X: Any) -> np.ndarray:
        """libsvm's one-vs-one vote."""
        K = self._kernel(X)
        return self.classes_[OneVsOne(self.svc_).predict(K)]


@dataclass
class _FoldKernels:
    """One fold's training kernel, and its held-out rows against its training rows."""

    training: _Training
    K_test: np.ndarray


def _fold_kernels(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    gamma: Any,
    sample_weight: np.ndarray | None,
) -> _FoldKernels:
    """A fold's kernels, its rows standardised with its own training rows' statistics."""
    weights = None if sample_weight is None else sample_weight[train]
    training = _training(X[train], y[train], weights, gamma)
    Z_test = _standardize(X[test], training.mean, training.scale)
    return _FoldKernels(training, _rbf(Z_test, training.Z, training.gamma))


class _Shared:
    """A value made once, by the first thread that asks for it, and dropped after its last
    use (a fold's kernels: hundreds of MB each, so only the folds in progress hold theirs)."""

    def __init__(self, make: Callable[[], Any], uses: int) -> None:
        self._make, self._uses = make, uses
        self._lock = threading.Lock()
        self._value: Any = None

    def get(self) -> Any:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    def release(self) -> None:
        with self._lock:
            self._uses -= 1
            if self._uses == 0:
                self._value = None


def _held_out_labels(kernels: _Shared, C: float, settings: dict[str, Any]) -> np.ndarray:
    """Fit at ``C`` on a fold's training kernel; the labels it gives the held-out rows."""
    fold = kernels.get()
    try:
        svc = _svc(C, settings["class_weight"], settings["tol"], settings["cache_size"])
        svc.fit(fold.training.K, fold.training.y, sample_weight=fold.training.weights)
        return svc.classes_[OneVsOne(svc, columns=svc.support_).predict(fold.K_test)]
    finally:
        kernels.release()


def _search(
    X: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    Cs: list[float],
    settings: dict[str, Any],
    sample_weight: np.ndarray | None,
    threads: int,
) -> tuple[list[list[np.ndarray]], _Training]:
    """Held-out labels per fold and C, and the refit's training kernel.

    Every (fold, C) fit is one task for ``threads`` threads (libsvm and BLAS release the GIL).
    The folds go in groups of ``threads``, a group's tasks C by C across its folds, so each
    thread starts on a different fold's kernels (none waits for another's) and at most about
    ``threads`` folds' kernels are alive at once. One task computes the refit's kernel (it does
    not depend on C): beside the last group's kernels when that group leaves a thread free,
    else while the last fits run.
    """
    gamma = settings["gamma"]
    shared = [
        _Shared(
            lambda train=train, test=test: _fold_kernels(X, y, train, test, gamma, sample_weight),
            uses=len(Cs),
        )
        for train, test in folds
    ]
    refit = _Shared(lambda: _training(X, y, sample_weight, gamma), uses=1)
    group = max(1, threads)
    tasks: list[tuple[int, int] | None] = []
    for start in range(0, len(folds), group):
        members = range(start, min(start + group, len(folds)))
        if len(members) < group:
            tasks.append(None)  # a thread the last group leaves free makes the refit's kernel
        tasks += [(f, c) for c in range(len(Cs)) for f in members]
    if None not in tasks:
        tasks.append(None)

    def run(task: tuple[int, int] | None) -> np.ndarray | None:
        if task is None:
            refit.get()
            return None
        return _held_out_labels(shared[task[0]], Cs[task[1]], settings)

    if threads <= 1:
        labels = [run(t) for t in tasks]
    else:
        # One BLAS thread per task: the tasks are the parallelism (two 2-thread products on
        # two cores spin against each other).
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            labels = list(pool.map(run, tasks))
    found = dict(zip(tasks, labels, strict=True))
    per_fold = [[found[(f, c)] for c in range(len(Cs))] for f in range(len(folds))]
    return per_fold, refit.get()


class RBFSVMHeadCV(PredictsWithRefit, ClassifierMixin, BaseEstimator):
    """:class:`RBFSVMHead` choosing ``C`` by cross-validation (module docstring).

    Args:
        Cs: C values to try.
        gamma, class_weight, tol, cache_size: As for :class:`RBFSVMHead`.
        cv: Folds: an int (stratified, shuffled; grouped when ``fit`` gets ``groups``), a
            splitter, or an iterable of (train, test) index pairs.
        scoring: ``"accuracy"``, ``"balanced_accuracy"`` or ``"f1_macro"``.
        n_jobs: Threads the (fold, C) fits are spread over (``None``: every core).
        random_state: Seed of the folds when ``cv`` is an int.

    Attributes:
        best_params_ (``{"C"}``), best_score_, best_index_, cv_results_, n_splits_,
        best_estimator_ (the refit, a fitted :class:`RBFSVMHead`), classes_.
    """

    refit_methods = ("predict", "decision_function")

    def __init__(
        self,
        Cs: Sequence[float] = (1.0, 10.0, 100.0),
        *,
        gamma: Any = "scale",
        class_weight: Any = None,
        tol: float = 1e-3,
        cache_size: float = 200,
        cv: Any = 5,
        scoring: str = "accuracy",
        n_jobs: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.Cs = Cs
        self.gamma = gamma
        self.class_weight = class_weight
        self.tol = tol
        self.cache_size = cache_size
        self.cv = cv
        self.scoring = scoring
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> RBFSVMHeadCV:
        """Score every C by CV on ``(X, y)``, refit the best on all of it."""
        Cs = [float(c) for c in self.Cs]
        if not Cs or min(Cs) <= 0:
            raise ValueError(f"Cs must hold positive numbers, got {self.Cs!r}")
        score = scorer(self.scoring)
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=2)
        check_classification_targets(y)
        weights = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        folds = _splits(self.cv, X, y, groups, self.random_state)
        settings = {k: getattr(self, k) for k in ("gamma", "class_weight", "tol", "cache_size")}
        jobs = min(len(folds) * len(Cs), default_n_jobs() if self.n_jobs is None else self.n_jobs)
        # Alive at once: a fold's training and held-out kernels per thread, and the refit's.
        available = _available_bytes()
        while (
            jobs > 1
            and available is not None
            and _kernel_bytes(X.shape[0], jobs + 1) > _MEMORY_SHARE * available
        ):
            jobs -= 1
        _check_kernel_memory(X.shape[0], jobs + 1, available)
        predictions, training = _search(X, y, folds, Cs, settings, weights, jobs)
        table = np.array(
            [
                [score(y[test], predictions[f][c]) for f, (_, test) in enumerate(folds)]
                for c in range(len(Cs))
            ]
        )
        means = table.mean(axis=1)
        best = int(np.argmax(means))  # equal scores: the first C given
        self._store(Cs, table, best)
        refit = RBFSVMHead(Cs[best], **settings)
        refit.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            refit.feature_names_in_ = self.feature_names_in_
        self.best_estimator_ = refit._fit_training(training)
        self.classes_ = self.best_estimator_.classes_
        return self

    def _store(self, Cs: list[float], table: np.ndarray, best: int) -> None:
        store_search(self, [{"C": c} for c in Cs], table, best)
