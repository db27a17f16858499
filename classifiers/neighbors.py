"""k-nearest neighbours that searches k and the metric itself, from one distance pass per fold.

``GridSearchCV`` over ``KNeighborsClassifier`` recomputes every fold's distances for every grid
point (6 points: 1, 5, 15 neighbours x euclidean, cosine). :class:`KNeighborsHeadCV` computes
each fold's dot products between held-out and training rows once (a GEMM, in torch), ranks the
candidates of both metrics from them, keeps the ``max(n_neighbors)`` nearest per metric, and
scores every grid point from those. With ``standardize`` (default) each fold's rows are
standardised with that fold's training rows' mean and deviation (in float32), as
``Pipeline(StandardScaler(), KNeighborsClassifier())`` under ``GridSearchCV`` would (it costs
nothing here: every fold has its own product anyway).

The refit is a :class:`KNeighborsHead` at the chosen point: scikit-learn's distance-weighted,
brute-force ``KNeighborsClassifier`` (behind a ``StandardScaler``), whose predictions come
from the same torch search against its fitted rows; the last query's class shares are kept
(:data:`_LAST_VOTES`), so ``predict`` then ``predict_proba`` on the same rows, as an
evaluation asks, search the neighbours once. Without torch, scikit-learn predicts.

The ranking runs in float32 on the products (one pass per metric). For predictions, the
distances of the ``k`` kept are then computed from the rows themselves (the norm of their
difference), so a training row queried again is at distance 0 and takes all of the weight, as
scikit-learn's ``weights="distance"`` means, and a row's prediction does not depend on the rows
queried with it; the CV takes them from the kept products, which costs nothing.
"""

from __future__ import annotations

import importlib.util
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classifiers.cv_table import PredictsWithRefit, store_search
from classifiers.linear import _Session, _splits, scorer
from classifiers.memo import LastResult, content_key

__all__ = ["METRICS", "KNeighborsHead", "KNeighborsHeadCV"]

METRICS = ("euclidean", "cosine")

#: Held-out rows per distance block (a block's dot products stay near 64 MiB).
_BLOCK_ELEMENTS = 1 << 24

#: Elements of the gathered neighbour rows whose exact distances are computed at once.
_GATHER_ELEMENTS = 1 << 22

#: The last query's class shares, for the fitted refit and the query's rows.
_LAST_VOTES = LastResult()
_LAST_VOTES_MAX_BYTES = 1 << 28


def _votes(labels: Any, distances: Any, n_classes: int, torch: Any) -> Any:
    """Distance-weighted votes (rows x classes) of each row's neighbours, as scikit-learn's
    ``weights="distance"`` (a neighbour at distance 0 takes all of the weight with any other
    such neighbour)."""
    exact = distances <= 0
    weights = torch.where(
        exact.any(dim=1, keepdim=True), exact.to(distances.dtype), 1.0 / distances.clamp_min(1e-300)
    )
    votes = torch.zeros(labels.shape[0], n_classes, dtype=distances.dtype, device=labels.device)
    votes.scatter_add_(1, labels, weights)
    return votes


class KNeighborsHeadCV(PredictsWithRefit, ClassifierMixin, BaseEstimator):
    """Distance-weighted k-NN choosing ``n_neighbors`` and the metric by cross-validation.

    Args:
        n_neighbors: Neighbour counts to try.
        metrics: Metrics to try, from :data:`METRICS`.
        standardize: Standardise the columns with each fit's own training rows (the refit:
            with all rows), as a ``StandardScaler`` in front would.
        cv: Folds: an int (stratified, shuffled; grouped when ``fit`` gets ``groups``), a
            splitter, or an iterable of (train, test) index pairs.
        scoring: ``"accuracy"``, ``"balanced_accuracy"`` or ``"f1_macro"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... for the distance products.
        n_jobs: CPU threads (``None``: every core this process may use).
        random_state: Seed of the folds when ``cv`` is an int.

    Attributes:
        best_params_ (``{"n_neighbors", "metric"}``), best_score_, best_index_, cv_results_,
        n_splits_, best_estimator_ (the refit: a :class:`KNeighborsHead`), classes_.
    """

    refit_methods = ("predict", "predict_proba")

    def __init__(
        self,
        n_neighbors: Sequence[int] = (1, 5, 15),
        metrics: Sequence[str] = METRICS,
        *,
        standardize: bool = True,
        cv: Any = 5,
        scoring: str = "accuracy",
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.metrics = metrics
        self.standardize = standardize
        self.cv = cv
        self.scoring = scoring
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _check(self) -> tuple[list[int], list[str]]:
        ks = [int(k) for k in self.n_neighbors]
        if not ks or min(ks) < 1:
            raise ValueError(f"n_neighbors must hold integers >= 1, got {self.n_neighbors!r}")
        metrics = list(self.metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if not metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
        scorer(self.scoring)  # checked before any work
        return ks, metrics

    def fit(self, X: Any, y: Any, groups: Any = None) -> KNeighborsHeadCV:
        """Score every (n_neighbors, metric) by CV on ``(X, y)``, refit the best on all of it."""
        ks, metrics = self._check()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=2)
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        folds = _splits(self.cv, X, y_idx, groups, self.random_state)
        smallest = min(len(train) for train, _ in folds)
        if max(ks) > smallest:
            raise ValueError(
                f"n_neighbors {max(ks)} exceeds the {smallest} rows of the smallest CV training "
                "part; ask for fewer neighbours"
            )
        work = float(X.shape[0]) ** 2 * X.shape[1]
        with _Session(self.device, self.n_jobs, work) as session:
            predictions = self._fold_predictions(
                session, X, y_idx, len(classes), folds, ks, metrics
            )
        score = scorer(self.scoring)
        points = [(k, m) for m in metrics for k in ks]
        table = np.array(
            [
                [score(y_idx[test], predictions[(k, m)][f]) for f, (_, test) in enumerate(folds)]
                for k, m in points
            ]
        )
        means = table.mean(axis=1)
        best = int(np.argmax(means))  # the first of equal scores: fewer neighbours, then metrics
        self._store(points, table, best)
        refit = KNeighborsHead(
            *points[best], standardize=self.standardize, device=self.device, n_jobs=self.n_jobs
        )
        self.best_estimator_ = refit.fit(X, y)
        self.classes_ = self.best_estimator_.classes_
        return self

    def _fold_predictions(
        self,
        session: _Session,
        X: np.ndarray,
        y_idx: np.ndarray,
        n_classes: int,
        folds: list[tuple[np.ndarray, np.ndarray]],
        ks: list[int],
        metrics: list[str],
    ) -> dict[tuple[int, str], list[np.ndarray]]:
        torch = session.torch
        rows = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=session.device)
        labels = torch.as_tensor(y_idx, device=session.device)
        out: dict[tuple[int, str], list[np.ndarray]] = {(k, m): [] for m in metrics for k in ks}
        for train, test in folds:
            tr = torch.as_tensor(train, device=session.device)
            scale = self._scaler(rows[tr], torch)
            reference = _Reference(scale(rows[tr]), labels[tr], torch)
            fold_pred: dict[tuple[int, str], list[np.ndarray]] = {key: [] for key in out}
            for start in range(0, len(test), reference.block):
                te = torch.as_tensor(test[start : start + reference.block], device=session.device)
                query = scale(rows[te])
                dots = query @ reference.rows.T
                for metric in metrics:
                    near_d, near_y = reference.nearest(dots, query, metric, max(ks), exact=False)
                    for k in ks:
                        votes = _votes(near_y[:, :k], near_d[:, :k], n_classes, torch)
                        fold_pred[(k, metric)].append(votes.argmax(dim=1).cpu().numpy())
            for key in out:
                out[key].append(np.concatenate(fold_pred[key]))
        return out

    def _scaler(self, train: Any, torch: Any) -> Callable[[Any], Any]:
        """Standardises rows with ``train``'s column mean and deviation (StandardScaler:
        population deviation, 1 where it is 0), or leaves them as they are."""
        if not self.standardize:
            return lambda part: part
        var, mean = torch.var_mean(train, dim=0, correction=0)
        std = torch.sqrt(var)
        inverse = torch.where(std > 0, 1.0 / std, torch.ones_like(std))
        return lambda part: (part - mean) * inverse

    def _store(self, points: list[tuple[int, str]], table: np.ndarray, best: int) -> None:
        params = [{"n_neighbors": k, "metric": m} for k, m in points]
        store_search(self, params, table, best)


class KNeighborsHead(ClassifierMixin, BaseEstimator):
    """Distance-weighted k-NN at one point: scikit-learn's brute-force ``KNeighborsClassifier``
    (behind a ``StandardScaler`` when ``standardize``), predicting through one torch search.

    Args:
        n_neighbors: Neighbours that vote.
        metric: One of :data:`METRICS`.
        standardize: Standardise the columns with the training rows, as a ``StandardScaler``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... for the distance products.
        n_jobs: CPU threads (``None``: the cores free when a search starts).

    Attributes:
        estimator_ (the fitted scikit-learn model, which predicts where torch cannot be
        imported), classes_.
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        metric: str = "euclidean",
        *,
        standardize: bool = True,
        device: str = "auto",
        n_jobs: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.standardize = standardize
        self.device = device
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any) -> KNeighborsHead:
        """Keep the (standardised) training rows and their labels."""
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        knn = KNeighborsClassifier(
            n_neighbors=self.n_neighbors, metric=self.metric, weights="distance", algorithm="brute"
        )
        model = Pipeline([("scale", StandardScaler()), ("knn", knn)]) if self.standardize else knn
        self.estimator_ = model.fit(X, y)
        self.classes_ = self.estimator_.classes_
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Class of the distance-weighted vote of the neighbours."""
        check_is_fitted(self, "estimator_")
        shares = self._shares(X)
        if shares is None:
            return self.estimator_.predict(X)
        return self.classes_[np.argmax(shares, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Distance-weighted share of each class among the neighbours."""
        check_is_fitted(self, "estimator_")
        shares = self._shares(X)
        if shares is None:
            return self.estimator_.predict_proba(X)
        return shares.copy()

    def _shares(self, X: Any) -> np.ndarray | None:
        """Each row's class shares from the torch search against the fitted rows (the last
        query's are kept, :data:`_LAST_VOTES`); ``None`` when scikit-learn should predict:
        torch cannot be imported, the fitted model lacks the rows this reads, or there are
        fewer rows than neighbours (scikit-learn then says so)."""
        knn = self.estimator_[-1] if self.standardize else self.estimator_
        rows, labels = getattr(knn, "_fit_X", None), getattr(knn, "_y", None)
        if not isinstance(rows, np.ndarray) or labels is None or knn.n_neighbors > len(rows):
            return None
        if importlib.util.find_spec("torch") is None:  # _Session imports it
            return None
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        query = np.ascontiguousarray(
            self.estimator_[:-1].transform(X) if self.standardize else X, dtype=np.float32
        )
        return _LAST_VOTES.get(
            # The fitted model by identity, without keeping it alive once the head is gone.
            (weakref.ref(knn), content_key(query)),
            lambda: self._search(knn, query),
            keep=lambda shares: shares.nbytes <= _LAST_VOTES_MAX_BYTES,
        )

    def _search(self, knn: KNeighborsClassifier, query: np.ndarray) -> np.ndarray:
        n_rows, width = knn._fit_X.shape
        work = float(n_rows) * query.shape[0] * width
        with _Session(self.device, self.n_jobs, work) as session:
            torch = session.torch
            reference = _Reference(
                torch.as_tensor(np.ascontiguousarray(knn._fit_X, dtype=np.float32)).to(
                    session.device
                ),
                torch.as_tensor(np.asarray(knn._y, dtype=np.int64), device=session.device),
                torch,
            )
            shares = []
            for start in range(0, query.shape[0], reference.block):
                rows = torch.as_tensor(query[start : start + reference.block]).to(session.device)
                dots = rows @ reference.rows.T
                near_d, near_y = reference.nearest(dots, rows, knn.metric, knn.n_neighbors)
                votes = _votes(near_y, near_d, len(knn.classes_), torch)
                shares.append((votes / votes.sum(dim=1, keepdim=True)).cpu().numpy())
        return np.concatenate(shares)


class _Reference:
    """Rows to search (float32, on the device), their labels, and the float32 ranking terms of
    both metrics (squared norms; inverse norms, 0 for a zero row); ``block``: query rows per
    product block."""

    def __init__(self, rows: Any, labels: Any, torch: Any) -> None:
        self.torch = torch
        self.rows = rows
        self.labels = labels
        norm = torch.linalg.vector_norm(rows, dim=1)
        self.norm64 = norm.double()
        self.sq32 = norm**2
        self.inverse32 = _inverse(norm, torch)
        self.block = max(1, _BLOCK_ELEMENTS // max(1, rows.shape[0]))

    def nearest(
        self, dots: Any, query: Any, metric: str, k: int, exact: bool = True
    ) -> tuple[Any, Any]:
        """Distances (float64) and labels of each query row's ``k`` nearest, nearest first,
        from the float32 products ``dots`` of the ``query`` rows with every row; ``exact``:
        see :func:`_nearest`."""
        distances, cols = _nearest(dots, query, self, metric, k, exact, self.torch)
        return distances, self.labels[cols]


def _nearest(
    dots: Any, query: Any, ref: _Reference, metric: str, k: int, exact: bool, torch: Any
) -> tuple[Any, Any]:
    """Distances (float64) and columns of each query row's ``k`` nearest, euclidean or cosine,
    nearest first.

    The ranking uses what varies along a row of the float32 products (``|b|^2 - 2 a.b``;
    ``a.b / |b|``), one pass over them. The distances of the ``k`` kept then come, ``exact``,
    from the rows themselves (:func:`_distances`: what predictions use), or else from the kept
    products and the norms (:func:`_product_distances`: the CV's cheaper way), and are put in
    their order.
    """
    if metric == "euclidean":
        _, cols = torch.topk(torch.add(ref.sq32, dots, alpha=-2.0), k, dim=1, largest=False)
    else:
        _, cols = torch.topk(dots * ref.inverse32, k, dim=1, largest=True)
    if exact:
        distances = _distances(query, ref, cols, metric, torch)
    else:
        distances = _product_distances(dots, query, ref, cols, metric, torch)
    order = torch.argsort(distances, dim=1, stable=True)  # may reorder near-ties of the ranking
    return distances.gather(1, order), cols.gather(1, order)


def _product_distances(
    dots: Any, query: Any, ref: _Reference, cols: Any, metric: str, torch: Any
) -> Any:
    """float64 distances of each query row to ``ref.rows[cols]`` of its line from the float32
    products and the norms (cosine: 1 where either row is 0); a duplicate is a rounding error
    away rather than at 0."""
    near = dots.gather(1, cols).double()
    q_norm = torch.linalg.vector_norm(query, dim=1).double()[:, None]
    b_norm = ref.norm64[cols]
    if metric == "euclidean":
        return torch.sqrt((q_norm**2 + b_norm**2 - 2.0 * near).clamp_min(0.0))
    norms = q_norm * b_norm
    return 1.0 - torch.where(norms > 0, near / norms.clamp_min(1e-300), 0.0)


def _distances(query: Any, ref: _Reference, cols: Any, metric: str, torch: Any) -> Any:
    """Distances (float64) of each query row to ``ref.rows[cols]`` of its line, from differences
    of the rows (cosine: half the squared difference of the unit rows, 1 where either row is 0),
    so a row's distances do not depend on the rows queried with it, and a duplicate's is 0."""
    step = max(1, _GATHER_ELEMENTS // max(1, cols.shape[1] * query.shape[1]))
    inverse_q = None
    if metric == "cosine":
        inverse_q = _inverse(torch.linalg.vector_norm(query, dim=1), torch)
    parts = []
    for start in range(0, query.shape[0], step):
        part = cols[start : start + step]
        q = query[start : start + step, None, :]
        if metric == "euclidean":
            diff = q - ref.rows[part]
        else:
            inv_q = inverse_q[start : start + step, None]
            inv_b = ref.inverse32[part]
            # Both unit rows rounded alike (no fused multiply-add): a duplicate's is 0.
            diff = q * inv_q[..., None] - ref.rows[part] * inv_b[..., None]
        # float32 norms: torch's float64-accumulating norm of float32 rows is 50x slower.
        norm = torch.linalg.vector_norm(diff, dim=2).double()
        if metric == "cosine":
            norm = torch.where((inv_q > 0) & (inv_b > 0), 0.5 * norm**2, 1.0)
        parts.append(norm)
    return torch.cat(parts)


def _inverse(norm: Any, torch: Any) -> Any:
    """float32 inverse of norms, 0 for a zero row."""
    return torch.where(norm > 0, 1.0 / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0).float()
