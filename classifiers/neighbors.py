"""k-nearest neighbours that searches k and the metric itself, from one distance pass per fold.

``GridSearchCV`` over ``KNeighborsClassifier`` recomputes every fold's distances for every grid
point (6 points: 1, 5, 15 neighbours x euclidean, cosine). :class:`KNeighborsHeadCV` computes
each fold's dot products between held-out and training rows once (a GEMM, in torch), derives
both metrics' distances from them, keeps the ``max(n_neighbors)`` nearest per metric, and scores
every grid point from those. With ``standardize`` (default) each fold's rows are standardised
with that fold's training rows' mean and deviation, exactly as ``Pipeline(StandardScaler(),
KNeighborsClassifier())`` under ``GridSearchCV`` would (it costs nothing here: every fold has its
own product anyway). The refit is that pipeline at the chosen point (distance-weighted, brute
force), so a saved head needs neither torch nor this module's search to predict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classifiers.cv_table import store_search
from classifiers.linear import SCORERS, _Session, _splits

__all__ = ["METRICS", "KNeighborsHeadCV"]

METRICS = ("euclidean", "cosine")

#: Held-out rows per distance block (a block's dot products stay near 64 MiB).
_BLOCK_ELEMENTS = 1 << 24


def _vote(labels: Any, distances: Any, n_classes: int, torch: Any) -> Any:
    """Distance-weighted vote of each row's neighbours, as scikit-learn's ``weights="distance"``
    (a neighbour at distance 0 takes all of the weight with any other such neighbour)."""
    exact = distances <= 0
    weights = torch.where(
        exact.any(dim=1, keepdim=True), exact.to(distances.dtype), 1.0 / distances.clamp_min(1e-300)
    )
    votes = torch.zeros(labels.shape[0], n_classes, dtype=distances.dtype, device=labels.device)
    votes.scatter_add_(1, labels, weights)
    return votes.argmax(dim=1)


class KNeighborsHeadCV(ClassifierMixin, BaseEstimator):
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
        n_splits_, best_estimator_ (the refit: ``KNeighborsClassifier``, behind a fitted
        ``StandardScaler`` when ``standardize``), classes_.
    """

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
        if self.scoring not in SCORERS:
            raise ValueError(f"scoring must be one of {sorted(SCORERS)}, got {self.scoring!r}")
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
        score = SCORERS[self.scoring]
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
        knn = KNeighborsClassifier(
            n_neighbors=points[best][0],
            metric=points[best][1],
            weights="distance",
            algorithm="brute",
        )
        refit = Pipeline([("scale", StandardScaler()), ("knn", knn)]) if self.standardize else knn
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
            train_rows = rows[tr]
            scale = self._scaler(train_rows, torch)
            train_rows = scale(train_rows)
            train_sq = (train_rows.double() ** 2).sum(dim=1)
            train_labels = labels[tr]
            block = max(1, _BLOCK_ELEMENTS // max(1, len(train)))
            fold_pred = {key: [] for key in out}
            for start in range(0, len(test), block):
                te = torch.as_tensor(test[start : start + block], device=session.device)
                test_rows = scale(rows[te])
                test_sq = (test_rows.double() ** 2).sum(dim=1)
                dots = (test_rows @ train_rows.T).double()
                for metric in metrics:
                    near_d, near_i = _nearest(dots, test_sq, train_sq, metric, max(ks), torch)
                    near_y = train_labels[near_i]
                    for k in ks:
                        pred = _vote(near_y[:, :k], near_d[:, :k], n_classes, torch)
                        fold_pred[(k, metric)].append(pred.cpu().numpy())
            for key in out:
                out[key].append(np.concatenate(fold_pred[key]))
        return out

    def _scaler(self, train: Any, torch: Any) -> Callable[[Any], Any]:
        """Standardises rows with ``train``'s column mean and deviation (StandardScaler:
        population deviation, 1 where it is 0), or leaves them as they are."""
        if not self.standardize:
            return lambda part: part
        train64 = train.double()
        mean = train64.mean(dim=0)
        std = train64.std(dim=0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return lambda part: ((part.double() - mean) / std).float()

    def _store(self, points: list[tuple[int, str]], table: np.ndarray, best: int) -> None:
        params = [{"n_neighbors": k, "metric": m} for k, m in points]
        store_search(self, params, table, best)

    def predict(self, X: Any) -> np.ndarray:
        """Class of the distance-weighted vote of the chosen neighbours."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Distance-weighted share of each class among the chosen neighbours."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)


def _nearest(dots: Any, a_sq: Any, b_sq: Any, metric: str, k: int, torch: Any) -> tuple[Any, Any]:
    """Distances and columns of each row's ``k`` nearest, euclidean or cosine, from dot
    products and squared norms (float64), nearest first.

    The ranking uses what varies along a row (``|b|^2 - 2 a.b``; ``-a.b / |b|``), one pass
    over the products; the distances are computed for the ``k`` kept only.
    """
    if metric == "euclidean":
        near, cols = torch.topk(b_sq[None, :] - 2.0 * dots, k, dim=1, largest=False, sorted=True)
        return torch.sqrt((a_sq[:, None] + near).clamp_min(0.0)), cols
    b_norm = torch.sqrt(b_sq)
    inverse = torch.where(b_norm > 0, 1.0 / b_norm.clamp_min(1e-300), 0.0)
    _, cols = torch.topk(-(dots * inverse[None, :]), k, dim=1, largest=False, sorted=True)
    near_dots = dots.gather(1, cols)
    norms = torch.sqrt(a_sq)[:, None] * b_norm[cols]
    return 1.0 - torch.where(norms > 0, near_dots / norms.clamp_min(1e-300), 0.0), cols
