"""libsvm's one-vs-one votes and decision values, computed as matrix products.

A fitted ``SVC`` on a precomputed kernel predicts with libsvm's own loops, one row and one pair
of classes at a time. :class:`OneVsOne` gives the same votes and values (scikit-learn's
``predict`` and ``decision_function``) from a kernel matrix with one product per class, for
:mod:`classifiers.kernel`'s RBF heads. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
        self.signs = self.upper.astype(np.float64) - self.lower

    def _values(self, K: np.ndarray) -> np.ndarray:
        """(rows, classes, classes): ``[r, i, j]`` is pair (i, j)'s decision value for row r."""
        F = np.empty((self.n_classes, K.shape[0], self.n_classes))
        for c, (cols, weights) in enumerate(self.parts):
            np.matmul(K[:, cols], weights, out=F[c])
        D = F.transpose(1, 0, 2) + F.transpose(1, 2, 0)
        D += self.bias
        return D

    def _value_blocks(self, K: np.ndarray) -> Iterator[np.ndarray]:
        """:meth:`_values` of ``K``'s rows, a block of rows at a time."""
        rows = max(1, (1 << 21) // (self.n_classes * self.n_classes))
        for s in range(0, max(K.shape[0], 1), rows):  # one (empty) block for no rows
            yield self._values(K[s : s + rows])

    def _blocks(self, K: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.concatenate([reduce(D) for D in self._value_blocks(K)])

    def _votes(self, D: np.ndarray, ties_to_first: bool) -> np.ndarray:
        """Votes per class: pair (i, j), i < j, votes i when its value is > 0 (libsvm's
        prediction; ``ties_to_first``: >= 0, scikit-learn's decision_function), else j."""
        first = D >= 0 if ties_to_first else D > 0
        return (first & self.upper).sum(axis=2) + (~first & self.lower).sum(axis=2)

    def _scores(self, D: np.ndarray, votes: np.ndarray | None = None) -> np.ndarray:
        """:meth:`scores` of the rows of ``D``; ``votes``: their votes for :meth:`predict`,
        which are the ones needed here unless a value is exactly 0."""
        if self.n_classes == 2:
            return -D[:, 0, 1]
        if votes is None or self._has_tie(D):
            votes = self._votes(D, True)
        confidence = np.einsum("rij,ij->ri", D, self.signs)
        return votes + confidence / (3 * (np.abs(confidence) + 1))

    def _has_tie(self, D: np.ndarray) -> bool:
        """Whether some pair's value is exactly 0 (the diagonal, no pair, left out)."""
        ties = D == 0
        ties.reshape(len(D), -1)[:, :: self.n_classes + 1] = False
        return bool(ties.any())

    def predict(self, K: np.ndarray) -> np.ndarray:
        """libsvm's prediction: the class index with the most votes (ties: the lower)."""
        return self._blocks(K, lambda D: self._votes(D, False).argmax(axis=1))

    def scores(self, K: np.ndarray) -> np.ndarray:
        """``SVC``'s ``decision_function``: for two classes class 1's side (one column);
        else ``decision_function_shape="ovr"``: the votes plus the summed confidences squashed
        into (-1/3, 1/3) (scikit-learn's ``_ovr_decision_function``, vectorised)."""
        return self._blocks(K, self._scores)

    def predict_and_scores(self, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(:meth:`predict`, :meth:`scores`) of ``K`` from one pass over its decision values."""
        labels, scores = [], []
        for D in self._value_blocks(K):
            votes = self._votes(D, False)
            labels.append(votes.argmax(axis=1))
            scores.append(self._scores(D, votes))
        return np.concatenate(labels), np.concatenate(scores)
