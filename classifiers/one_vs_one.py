"""libsvm's one-vs-one votes and decision values, computed as matrix products.

A fitted ``SVC`` on a precomputed kernel predicts with libsvm's own loops, one row and one pair
of classes at a time. :class:`OneVsOne` gives the same votes and values (scikit-learn's
``predict`` and ``decision_function``) from a kernel matrix with one product per class, for
:mod:`classifiers.kernel`'s RBF heads. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.svm import SVC

__all__ = ["OneVsOne"]


class OneVsOne:
    """A fitted precomputed-kernel ``SVC``'s one-vs-one votes and decision values as matrix
    products.

    For pair (i, j) libsvm adds class i's support vectors weighted by their coefficients
    against j, class j's against i and the pair's intercept, row by row (0.95 s for 1,600 rows
    at 100 classes). Here each class's support vectors meet every other class in one product,
    giving per row a (classes, classes) matrix ``D`` with ``D[i, j] = D[j, i]`` the value of
    pair (i, j); the votes and scores are sums over its upper and lower triangles. Rows go in
    blocks so ``D`` stays about 16 MB.

    Args:
        svc: The fitted ``SVC``.
        columns: The column of the kernel matrix of each support vector (``None``: the kernel's
            columns are the support vectors, in ``svc.support_`` order). Each class's columns
            are read as one slice from its first to its last support vector, the rows between
            that are not support vectors weighted 0 (the search's training rows are sorted by
            class, so a slice holds one class).
    """

    def __init__(self, svc: SVC, columns: np.ndarray | None = None) -> None:
        k = self.n_classes = len(svc.classes_)
        coef, ends = svc._dual_coef_, np.cumsum(svc.n_support_)
        # Per class: the kernel columns it reads and (those columns, classes) weights, its
        # coefficients against every other class (against class o in row o - (o > c)).
        self.parts: list[tuple[slice, np.ndarray]] = []
        for c, (s, e) in enumerate(zip(ends - svc.n_support_, ends, strict=True)):
            others = np.delete(np.arange(k), c)
            if columns is None:
                cols, where = slice(s, e), np.arange(e - s)
            else:
                first = int(columns[s]) if e > s else 0
                last = int(columns[e - 1]) if e > s else -1
                cols, where = slice(first, last + 1), columns[s:e] - first
            weights = np.zeros((cols.stop - cols.start, k))
            weights[np.ix_(where, others)] = coef[:, s:e].T
            self.parts.append((cols, weights))
        i, j = np.triu_indices(k, 1)
        self.bias = np.zeros((k, k))
        self.bias[i, j] = self.bias[j, i] = svc._intercept_
        self.upper = np.triu(np.ones((k, k), dtype=bool), 1)
        self.lower = self.upper.T

    def _values(self, K: np.ndarray) -> np.ndarray:
        """(rows, classes, classes): ``[r, i, j]`` is pair (i, j)'s decision value for row r."""
        F = np.empty((self.n_classes, K.shape[0], self.n_classes))
        for c, (cols, weights) in enumerate(self.parts):
            np.matmul(K[:, cols], weights, out=F[c])
        D = F.transpose(1, 0, 2) + F.transpose(1, 2, 0)
        D += self.bias
        return D

    def _blocks(self, K: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        rows = max(1, (1 << 21) // (self.n_classes * self.n_classes))
        if K.shape[0] <= rows:
            return reduce(self._values(K))
        return np.concatenate(
            [reduce(self._values(K[s : s + rows])) for s in range(0, K.shape[0], rows)]
        )

    def _votes(self, D: np.ndarray, ties_to_first: bool) -> np.ndarray:
        """Votes per class: pair (i, j), i < j, votes i when its value is > 0 (libsvm's
        prediction; ``ties_to_first``: >= 0, scikit-learn's decision_function), else j."""
        first = D >= 0 if ties_to_first else D > 0
        return (first & self.upper).sum(axis=2) + (~first & self.lower).sum(axis=2)

    def predict(self, K: np.ndarray) -> np.ndarray:
        """libsvm's prediction: the class index with the most votes (ties: the lower)."""
        return self._blocks(K, lambda D: self._votes(D, False).argmax(axis=1))

    def scores(self, K: np.ndarray) -> np.ndarray:
        """``SVC``'s ``decision_function``: for two classes class 1's side (one column);
        else ``decision_function_shape="ovr"``: the votes plus the summed confidences squashed
        into (-1/3, 1/3) (scikit-learn's ``_ovr_decision_function``, vectorised)."""
        if self.n_classes == 2:
            return -self._blocks(K, lambda D: D[:, 0, 1])
        signs = self.upper.astype(np.float64) - self.lower

        def ovr(D: np.ndarray) -> np.ndarray:
            confidence = (D * signs).sum(axis=2)
            return self._votes(D, True) + confidence / (3 * (np.abs(confidence) + 1))

        return self._blocks(K, ovr)
