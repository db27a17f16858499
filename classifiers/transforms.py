"""Feature transforms from the CNN-features literature, as scikit-learn transformers.

Heads put them first in their pipelines (``Pipeline([("transform", ...), ("scale", ...),
("clf", ...)])``), so cross-validation and saved heads carry them like any other step.

* :class:`SignedPower`: ``sign(x) * |x| ** alpha`` element-wise (the "power normalisation" of
  Perronnin et al., 2010, that Razavian et al., 2014, apply to off-the-shelf CNN features; for
  the non-negative rows of a ReLU network it is ``x ** alpha``). It damps the few large
  activations that dominate a bottleneck vector. Stateless.
* L2 row normalisation: scikit-learn's own :class:`~sklearn.preprocessing.Normalizer` (``"l2"``),
  which is exactly that; :func:`make_transform` names it ``"l2"``.

:func:`make_transform` builds each by name (``"none"``, ``"l2"``, ``"power"``, ``"power+l2"``),
for grids and command-line options. Imports numpy, scipy and scikit-learn only.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["TRANSFORMS", "SignedPower", "make_transform"]


class SignedPower(TransformerMixin, BaseEstimator):
    """``sign(x) * |x| ** alpha``, element-wise; stateless (``fit`` only checks the input).

    ``alpha`` in (0, 1] compresses large magnitudes (0.5: the signed square root; 1: the
    identity). Zeros stay zeros, so sparse input stays sparse (CSR/CSC; its stored values are
    transformed). float32 input stays float32; other input becomes float64.
    """

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = alpha

    def _check_alpha(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, Real) or not 0 < a <= 1:
            raise ValueError(f"alpha must be a number in (0, 1], got {a!r}")

    def fit(self, X: Any, y: Any = None) -> SignedPower:
        """Check ``alpha`` and ``X`` (and remember the number of features)."""
        self._check_alpha()
        validate_data(self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
        return self

    def transform(self, X: Any) -> Any:
        """``sign(X) * |X| ** alpha`` (a new array; ``X`` is not changed)."""
        check_is_fitted(self)
        X = validate_data(
            self,
            X,
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            reset=False,
            copy=True,
        )
        values = X.data if sp.issparse(X) else X
        np.multiply(np.sign(values), np.power(np.abs(values), self.alpha), out=values)
        return X

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _power_l2() -> Pipeline:
    return Pipeline([("power", SignedPower(0.5)), ("l2", Normalizer("l2"))])


#: Names of the transforms :func:`make_transform` builds ("none" is the pipeline step
#: ``"passthrough"``).
TRANSFORMS: dict[str, Any] = {
    "none": lambda: "passthrough",
    "l2": lambda: Normalizer("l2"),
    "power": lambda: SignedPower(0.5),
    "power+l2": _power_l2,
}


def make_transform(name: str) -> Any:
    """A fresh transformer by name: ``"none"`` (``"passthrough"``, a valid pipeline step),
    ``"l2"`` (unit-length rows), ``"power"`` (signed square root), ``"power+l2"`` (both, in
    that order, as Razavian et al. use them)."""
    try:
        return TRANSFORMS[name]()
    except KeyError:
        raise ValueError(
            f"unknown feature transform {name!r}; choose from {', '.join(TRANSFORMS)}"
        ) from None
