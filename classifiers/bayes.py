"""Gaussian naive Bayes whose class scores are two matrix products.

scikit-learn's ``GaussianNB`` scores a row against each class in a Python loop, one (rows x
features) pass per class: 100 classes x 2,048 features made its prediction the slow part of
the naive Bayes head. Expanding the square,

    -1/2 sum_j (x_j - m_cj)^2 / v_cj = -1/2 (x*x) . (1/v_c) + x . (m_c/v_c) - 1/2 sum_j m_cj^2/v_cj

turns every class's score into two GEMMs over all classes at once (float64). The model (fit,
``var_smoothing``, priors) is scikit-learn's, unchanged.

``var_smoothing`` only adds ``var_smoothing x`` the largest column variance to every variance,
so :class:`GaussianNBHeadCV` fits each CV fold once (at 0) and scores every value of its list
from that fit; ``GridSearchCV`` fitted every fold again for every value (20 fits for 4 values
and 5 folds, against 5 here).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.naive_bayes import GaussianNB
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, validate_data

from classifiers.cv_table import PredictsWithRefit, store_search
from classifiers.linear import _splits, scorer

__all__ = ["VAR_SMOOTHINGS", "GaussianNBHead", "GaussianNBHeadCV"]

#: The values of ``var_smoothing`` that :class:`GaussianNBHeadCV` tries by default.
VAR_SMOOTHINGS = (1e-9, 1e-6, 1e-3, 1e-1)


class GaussianNBHead(GaussianNB):
    """``GaussianNB`` with the class log-likelihoods computed as matrix products (same
    parameters, same fitted attributes, same predictions up to float64 rounding)."""

    def _joint_log_likelihood(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        inverse = 1.0 / self.var_
        constant = (
            np.log(self.class_prior_)
            - 0.5 * np.log(2.0 * np.pi * self.var_).sum(axis=1)
            - 0.5 * (self.theta_**2 * inverse).sum(axis=1)
        )
        return constant - 0.5 * ((X * X) @ inverse.T) + X @ (self.theta_ * inverse).T


class GaussianNBHeadCV(PredictsWithRefit, ClassifierMixin, BaseEstimator):
    """Gaussian naive Bayes choosing ``var_smoothing`` by cross-validation, one fit per fold.

    Scores every value exactly as ``GridSearchCV`` over :class:`GaussianNBHead` would (each
    fold's variances plus ``var_smoothing x`` the largest variance of the fold's training
    columns, as scikit-learn adds it), with one fit of the class statistics per fold.

    Args:
        var_smoothings: Values of ``var_smoothing`` to try (each >= 0).
        cv: Folds: an int (stratified, shuffled; grouped when ``fit`` gets ``groups``), a
            splitter, or an iterable of (train, test) index pairs.
        scoring: ``"accuracy"``, ``"balanced_accuracy"`` or ``"f1_macro"``.
        random_state: Seed of the folds when ``cv`` is an int.

    Attributes:
        best_params_ (``{"var_smoothing"}``), best_score_, best_index_, cv_results_,
        n_splits_, best_estimator_ (the refit: a :class:`GaussianNBHead`), classes_.
    """

    refit_methods = ("predict", "predict_proba", "predict_log_proba")

    def __init__(
        self,
        var_smoothings: Sequence[float] = VAR_SMOOTHINGS,
        *,
        cv: Any = 5,
        scoring: str = "accuracy",
        random_state: int | None = 0,
    ) -> None:
        self.var_smoothings = var_smoothings
        self.cv = cv
        self.scoring = scoring
        self.random_state = random_state

    def fit(
        self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None
    ) -> GaussianNBHeadCV:
        """Score every ``var_smoothing`` by CV on ``(X, y)``, refit the best on all of it;
        ``sample_weight`` weighs the rows of every fit, as it would under ``GridSearchCV``."""
        values = [float(v) for v in self.var_smoothings]
        if not values or min(values) < 0:
            raise ValueError(f"var_smoothings must hold numbers >= 0, got {self.var_smoothings!r}")
        score = scorer(self.scoring)
        X, y = validate_data(self, X, y, ensure_min_samples=2)
        check_classification_targets(y)
        weights = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        _, y_idx = np.unique(y, return_inverse=True)
        folds = _splits(self.cv, X, y_idx, groups, self.random_state)
        table = np.empty((len(values), len(folds)))
        for f, (train, test) in enumerate(folds):
            for v, model in enumerate(_smoothed(X[train], y[train], _part(weights, train), values)):
                table[v, f] = score(y[test], model.predict(X[test]))
        best = int(np.argmax(table.mean(axis=1)))  # the first of equal scores, as GridSearchCV
        store_search(self, [{"var_smoothing": v} for v in values], table, best)
        refit = GaussianNBHead(var_smoothing=values[best])
        self.best_estimator_ = refit.fit(X, y, sample_weight=weights)
        self.classes_ = self.best_estimator_.classes_
        return self


def _part(weights: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if weights is None else weights[rows]


def _smoothed(
    X: np.ndarray, y: np.ndarray, weights: np.ndarray | None, values: list[float]
) -> list[GaussianNBHead]:
    """A :class:`GaussianNBHead` fitted on ``(X, y)`` at each ``var_smoothing`` of ``values``,
    from one fit at 0: the same variances, plus ``value x`` the largest column variance, added
    as scikit-learn adds it."""
    raw = GaussianNBHead(var_smoothing=0.0).fit(X, y, sample_weight=weights)
    largest = np.var(X, axis=0).max()
    models = []
    for value in values:
        model = copy.copy(raw)
        model.epsilon_ = value * largest
        model.var_ = raw.var_.copy()
        model.var_[:, :] += model.epsilon_
        model.var_smoothing = value
        models.append(model)
    return models
