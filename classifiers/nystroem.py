"""The RBF-kernel SVM at many rows: a Nystroem map of the kernel, then the batched linear SVM.

The exact head (:class:`classifiers.kernel.RBFSVMHead`) holds a float64 kernel of every pair of
training rows for each fold: 8 n^2 bytes (51 GB at 80,000 rows), and libsvm's time grows faster
than n^2. Past ``max_exact_rows`` training rows, or where the exact kernels would not fit in the
free memory, :class:`classifiers.kernel.RBFSVMHeadCV` fits this approximation instead (the
Nystroem method of Williams and Seeger, 2001; scikit-learn's kernel-approximation guide pairs
``Nystroem`` with a linear SVM the same way):

1. the rows are standardised and ``gamma="scale"`` is resolved on them, as in the exact head;
2. ``n_components`` landmark rows, drawn with the seed, define scikit-learn's ``Nystroem`` map
   ``phi(x) = k(x, L) K_LL^(-1/2)``, whose inner products approximate the kernel
   (:class:`RBFNystroem` computes it with float32 products and divides it by one factor that
   gives its columns about unit variance);
3. :class:`classifiers.linear.LinearHeadCV` with the squared hinge, on the mapped rows: a
   one-vs-rest L2 linear SVM, every fold and C solved as one batched problem, C chosen over its
   own path by CV on the same folds.

The model is not the exact one (one-vs-rest squared hinge on an approximate kernel, against
libsvm's one-vs-one hinge), so neither is the meaning of C; the head says which ran. The
scaler and the map use no labels and are fitted once on all the rows the CV splits (never on
the evaluation split): a fold's held-out rows take part in the standardisation and may be
landmarks, as the linear heads' scaler sees every training row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from classifiers.linear import DEFAULT_CS, LinearHeadCV
from classifiers.rbf import rbf_kernel, resolve_gamma

__all__ = ["MAX_EXACT_ROWS", "N_COMPONENTS", "RBFNystroem", "fit_approximate"]

#: Training rows above which ``approximate="auto"`` fits the approximation.
MAX_EXACT_ROWS = 20_000
#: Landmarks of the map (columns of the mapped rows).
N_COMPONENTS = 1024


class RBFNystroem(Nystroem):
    """scikit-learn's ``Nystroem``, its RBF map computed block by block in the rows' own
    precision (scikit-learn computes the distances of float32 rows in float64, 3-4x slower
    here) and, with ``unit_variance``, divided by one factor.

    Args:
        unit_variance: Divide the map by ``scale_``, the root mean variance of its columns
            over the rows it was fitted on, so that their mean variance is 1, as the linear
            heads' tolerances and C path assume; one factor for every column, so the kernel's
            geometry is kept up to scale. Without it the mapped columns of 1,280-d
            standardised rows have deviations near 0.02, and the linear SVM's CV fits stopped
            at the search tolerance far from their optimum (caltech101: CV 0.846 against a
            held-out 0.926; scaled, 0.926 and 0.924).
        Other arguments: as ``Nystroem``'s. Any kernel other than ``"rbf"``, or sparse rows,
        are mapped by ``Nystroem.transform`` (then scaled).

    Attributes:
        scale_: The factor (1.0 without ``unit_variance``), besides ``Nystroem``'s.

    ``fit`` maps every row it is given (to measure the spread); ``fit_transform`` maps them once.
    """

    def __init__(
        self,
        kernel: Any = "rbf",
        *,
        gamma: float | None = None,
        coef0: float | None = None,
        degree: float | None = None,
        kernel_params: dict | None = None,
        n_components: int = 100,
        random_state: Any = None,
        n_jobs: int | None = None,
        unit_variance: bool = True,
    ) -> None:
        super().__init__(
            kernel,
            gamma=gamma,
            coef0=coef0,
            degree=degree,
            kernel_params=kernel_params,
            n_components=n_components,
            random_state=random_state,
            n_jobs=n_jobs,
        )
        self.unit_variance = unit_variance

    def fit(self, X: Any, y: Any = None) -> RBFNystroem:
        """Draw the landmarks and compute the map (``Nystroem.fit``), then ``scale_`` over the
        mapped ``X``."""
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """:meth:`fit`, returning the mapped, scaled ``X`` (mapped once)."""
        super().fit(X, y)
        mapped = self._map(X)
        self.scale_ = 1.0
        if self.unit_variance:
            spread = float(np.sqrt(np.mean(np.var(mapped, axis=0, dtype=np.float64))))
            self.scale_ = spread if spread > 0 else 1.0
            mapped /= np.asarray(self.scale_, dtype=mapped.dtype)
        return mapped

    def transform(self, X: Any) -> np.ndarray:
        """The mapped rows, divided by ``scale_``; float32 rows give float32 rows."""
        check_is_fitted(self, "scale_")
        mapped = self._map(X)
        if self.scale_ != 1.0:
            mapped /= np.asarray(self.scale_, dtype=mapped.dtype)
        return mapped

    def _map(self, X: Any) -> np.ndarray:
        """``k(X, landmarks) @ normalization_.T``, unscaled."""
        if self.kernel != "rbf" or self.kernel_params or sparse.issparse(X):
            return super().transform(X)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        gamma = 1.0 / X.shape[1] if self.gamma is None else float(self.gamma)
        landmarks = np.asarray(self.components_, dtype=X.dtype)
        K = rbf_kernel(np.ascontiguousarray(X), landmarks, gamma, dtype=X.dtype)
        return K @ np.asarray(self.normalization_.T, dtype=X.dtype)


def fit_approximate(
    X: np.ndarray,
    y: np.ndarray,
    *,
    folds: list[tuple[np.ndarray, np.ndarray]],
    sample_weight: np.ndarray | None,
    gamma: Any,
    n_components: int,
    Cs: Sequence[float],
    class_weight: Any,
    scoring: str,
    n_jobs: int | None,
    random_state: int | None,
) -> tuple[LinearHeadCV, Pipeline]:
    """Search C on ``folds`` of the mapped rows (module docstring); the fitted search and the
    refit as a ``Pipeline`` (scaler, map, :class:`~classifiers.linear.LinearHead`).

    ``Cs``: one value fits that C alone; more search the linear heads' default path instead
    (libsvm's C does not carry over to this model)."""
    scaler = StandardScaler().fit(X, sample_weight=sample_weight)
    Z = scaler.transform(X).astype(np.float32, copy=False)
    kept = Z if sample_weight is None else Z[sample_weight > 0]
    g = resolve_gamma(
        gamma, kept, None if sample_weight is None else sample_weight[sample_weight > 0]
    )
    mapper = RBFNystroem(
        gamma=g, n_components=min(int(n_components), kept.shape[0]), random_state=random_state
    )
    mapped = mapper.fit_transform(Z) if sample_weight is None else mapper.fit(kept).transform(Z)
    single = len(Cs) == 1
    search = LinearHeadCV(
        "squared_hinge",
        Cs=list(Cs) if single else DEFAULT_CS,
        refine=0 if single else 2,
        cv=folds,
        scoring=scoring,
        class_weight=class_weight,
        n_jobs=n_jobs,
        random_state=random_state,
    ).fit(mapped, y, sample_weight=sample_weight)
    refit = Pipeline([("scale", scaler), ("map", mapper), ("clf", search.best_estimator_)])
    return search, refit
