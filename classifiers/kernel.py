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

Past ``max_exact_rows`` training rows, or where the exact kernels would not fit in the free
memory, :class:`RBFSVMHeadCV` fits a Nystroem approximation of the kernel with the batched linear
SVM instead (:mod:`classifiers.nystroem`) and says so in ``search_notes_``.

This module is numpy and scikit-learn (the approximation's linear solver uses torch inside
``fit``).
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
from classifiers.linear import (
    MAX_HELD_OUT_SCORES,
    _each_row_held_out_once,
    _splits,
    available_bytes,
    default_n_jobs,
    scorer,
)
from classifiers.memo import LastResult, content_key
from classifiers.nystroem import MAX_EXACT_ROWS, N_COMPONENTS, fit_approximate
from classifiers.one_vs_one import OneVsOne
from classifiers.rbf import rbf_kernel, resolve_gamma, standardize, standardizer

__all__ = ["RBFSVMHead", "RBFSVMHeadCV"]


#: The last kernel :meth:`RBFSVMHead._kernel` computed, keyed by the fitted ``SVC`` it was for
#: and the rows' content: evaluating a head asks for its predictions and its decision values on
#: the same rows, one kernel for both (at 100 classes, 2,000 x 8,000: 1.5 s each). Kernels over
#: the size below are not kept.
_LAST_KERNEL = LastResult()
_LAST_KERNEL_MAX_BYTES = 1 << 28
#: The share of the free memory the kernels may take.
_MEMORY_SHARE = 0.8


def _kernel_bytes(n_rows: int, kernels: int) -> float:
    """Bytes of ``kernels`` float64 kernel matrices of ``n_rows`` squared entries: every
    training row is a row and a column of the kernel, so 50,000 rows need 20 GB for one."""
    return 8.0 * kernels * float(n_rows) ** 2


def _too_big(n_rows: int, kernels: int, available: int | None) -> bool:
    """Whether ``kernels`` kernels of ``n_rows`` rows exceed the share of the free memory they
    may take (never, where the free memory is unknown)."""
    return available is not None and _kernel_bytes(n_rows, kernels) > _MEMORY_SHARE * available


def _check_kernel_memory(n_rows: int, kernels: int, available: int | None) -> None:
    """Refuse, in one line, a fit whose kernels would not fit in the memory free now."""
    need = _kernel_bytes(n_rows, kernels)
    if _too_big(n_rows, kernels, available):
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
    mean, scale = standardizer(X, weights)
    Z = standardize(X, mean, scale)
    g = resolve_gamma(gamma, Z, weights)
    return _Training(Z, mean, scale, g, rbf_kernel(Z, None, g), y, weights)


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
        _check_kernel_memory(X.shape[0], 1, available_bytes())
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
            lambda: rbf_kernel(
                standardize(X, self.mean_, self.scale_), self.support_rows_, self.gamma_
            ),
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
    Z_test = standardize(X[test], training.mean, training.scale)
    return _FoldKernels(training, rbf_kernel(Z_test, training.Z, training.gamma))


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


def _held_out(
    kernels: _Shared, C: float, settings: dict[str, Any], keep_scores: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit at ``C`` on a fold's training kernel; the labels it gives the held-out rows, and
    their decision scores (float32) when ``keep_scores``."""
    fold = kernels.get()
    try:
        svc = _svc(C, settings["class_weight"], settings["tol"], settings["cache_size"])
        svc.fit(fold.training.K, fold.training.y, sample_weight=fold.training.weights)
        ovo = OneVsOne(svc, columns=svc.support_)
        if not keep_scores:
            return svc.classes_[ovo.predict(fold.K_test)], None
        labels, scores = ovo.predict_and_scores(fold.K_test)
        return svc.classes_[labels], scores.astype(np.float32)
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
    keep_scores: bool = False,
) -> tuple[list[list[tuple[np.ndarray, np.ndarray | None]]], _Training]:
    """Held-out (labels, scores or ``None``) per fold and C (:func:`_held_out`), and the
    refit's training kernel.

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

    def run(task: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None] | None:
        if task is None:
            refit.get()
            return None
        return _held_out(shared[task[0]], Cs[task[1]], settings, keep_scores)

    # One BLAS thread per task: the tasks are the parallelism (two 2-thread products on two
    # cores spin against each other). On one thread as well, so the kernels are the same to the
    # bit whatever ``threads`` is: on some CPUs (AVX2 without AVX-512 here) OpenBLAS's float32
    # products differ in the last bits between one thread and two.
    with threadpool_limits(limits=1, user_api="blas"):
        if threads <= 1:
            labels = [run(t) for t in tasks]
        else:
            with ThreadPoolExecutor(threads) as pool:
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
        random_state: Seed of the folds when ``cv`` is an int, and of the landmarks.
        approximate: ``"auto"`` (the Nystroem approximation past ``max_exact_rows`` training
            rows or where the exact kernels would not fit in the free memory), ``True`` or
            ``False`` (always / never; the exact head refuses kernels larger than the memory).
        n_components: Landmarks of the approximation.
        max_exact_rows: See ``approximate``.

    Attributes:
        best_params_ (``{"C"}``), best_score_, best_index_, cv_results_, n_splits_,
        best_estimator_ (the refit: a fitted :class:`RBFSVMHead`, or for the approximation a
        ``Pipeline`` of scaler, :class:`~classifiers.nystroem.RBFNystroem` map and
        :class:`~classifiers.linear.LinearHead`), classes_, approximated_ (bool),
        search_notes_ (what a report should say about how the head was fitted),
        cv_decision_ (every training row's ``decision_function`` scores at the chosen C from
        the fold fit that held it out, float32, as in
        :class:`~classifiers.linear.LinearHeadCV`; ``None`` when the folds do not hold out
        every row once, or past :data:`~classifiers.linear.MAX_HELD_OUT_SCORES` entries over
        all the Cs, whose scores the search keeps until it has chosen).
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
        approximate: Any = "auto",
        n_components: int = N_COMPONENTS,
        max_exact_rows: int = MAX_EXACT_ROWS,
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
        self.approximate = approximate
        self.n_components = n_components
        self.max_exact_rows = max_exact_rows

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
        available = available_bytes()
        if self._approximates(X.shape[0], available):
            return self._fit_approximate(X, y, folds, weights, Cs)
        self.approximated_, self.search_notes_ = False, []
        settings = {k: getattr(self, k) for k in ("gamma", "class_weight", "tol", "cache_size")}
        jobs = min(len(folds) * len(Cs), default_n_jobs() if self.n_jobs is None else self.n_jobs)
        # Alive at once: a fold's training and held-out kernels per thread, and the refit's.
        while jobs > 1 and _too_big(X.shape[0], jobs + 1, available):
            jobs -= 1
        _check_kernel_memory(X.shape[0], jobs + 1, available)
        n_classes = len(np.unique(y))
        columns = 1 if n_classes == 2 else n_classes
        keep = X.shape[0] * columns * len(Cs) <= MAX_HELD_OUT_SCORES
        held_out, training = _search(X, y, folds, Cs, settings, weights, jobs, keep)
        table = np.array(
            [
                [score(y[test], held_out[f][c][0]) for f, (_, test) in enumerate(folds)]
                for c in range(len(Cs))
            ]
        )
        means = table.mean(axis=1)
        best = int(np.argmax(means))  # equal scores: the first C given
        self._store(Cs, table, best)
        self.cv_decision_ = _out_of_fold([f[best][1] for f in held_out], folds, X.shape[0])
        refit = RBFSVMHead(Cs[best], **settings)
        refit.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            refit.feature_names_in_ = self.feature_names_in_
        self.best_estimator_ = refit._fit_training(training)
        self.classes_ = self.best_estimator_.classes_
        return self

    def _store(self, Cs: list[float], table: np.ndarray, best: int) -> None:
        store_search(self, [{"C": c} for c in Cs], table, best)

    def _approximates(self, n_rows: int, available: int | None) -> bool:
        if self.approximate not in ("auto", True, False):
            raise ValueError(f"approximate must be 'auto', True or False, got {self.approximate!r}")
        if self.approximate != "auto":
            return bool(self.approximate)
        # The exact search's least: one fold's kernels on one thread, and the refit's.
        return n_rows > self.max_exact_rows or _too_big(n_rows, 2, available)

    def _fit_approximate(
        self,
        X: np.ndarray,
        y: np.ndarray,
        folds: list[tuple[np.ndarray, np.ndarray]],
        weights: np.ndarray | None,
        Cs: list[float],
    ) -> RBFSVMHeadCV:
        """The Nystroem approximation (:mod:`classifiers.nystroem`), its search recorded here."""
        search, refit = fit_approximate(
            X,
            y,
            folds=folds,
            sample_weight=weights,
            gamma=self.gamma,
            n_components=self.n_components,
            Cs=Cs,
            class_weight=self.class_weight,
            scoring=self.scoring,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        )
        names = ("cv_results_", "best_index_", "best_params_", "best_score_", "n_splits_")
        for name in (*names, "cv_decision_"):
            setattr(self, name, getattr(search, name))
        self.best_estimator_ = refit
        self.classes_ = refit.classes_
        self.approximated_ = True
        components = refit.named_steps["map"].n_components
        self.search_notes_ = [
            f"rbf_svm approximated on {X.shape[0]:,} training rows (exact kernels past "
            f"{self.max_exact_rows:,}, or larger than the free memory): Nystroem map with "
            f"{components:,} landmarks, then a one-vs-rest squared-hinge linear SVM whose C "
            "(not libsvm's) was chosen by CV"
        ]
        return self


def _out_of_fold(
    scores: list[np.ndarray | None], folds: list[tuple[np.ndarray, np.ndarray]], n: int
) -> np.ndarray | None:
    """Each fold's held-out scores placed at its rows: one score row per training row, or
    ``None`` when a fold kept none or some row is held out by no fold or by several."""
    if any(s is None for s in scores) or not _each_row_held_out_once(folds, n):
        return None
    first = scores[0]
    assert first is not None
    out = np.empty((n, *first.shape[1:]), dtype=np.float32)
    for part, (_, test) in zip(scores, folds, strict=True):
        out[test] = part
    return out
