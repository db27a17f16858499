"""Probabilities for heads that only give decision scores (the SVMs).

``LinearSVC`` and ``SVC`` (without its internal 5-fold ``probability=True`` fit) have no
``predict_proba``. :class:`ScoreCalibrated` wraps such a head: it predicts exactly what the head
predicts and maps the head's ``decision_function`` scores to probabilities with a logistic
regression fitted on *out-of-fold* scores of the training data (Platt scaling; one multinomial
regression on the score vector when there are more than two classes). Out-of-fold scores are
needed because in-sample SVM scores of nearly separable features are overconfident.

The regression is ``LogisticRegression(max_iter=1000)``, whose lbfgs stops at its default
tolerance short of the optimum, and that early stop regularises: on caltech101 (7,348 training
rows of 102 linear-SVM scores) its probabilities had a held-out log-loss of 0.247, where the
exact optimum of the same objective (found by :class:`classifiers.linear.LinearHead` in 0.6 s
against 11 s, or by lbfgs at ``tol=1e-8`` in 200 s) had 0.267, temperature scaling 0.272 and
a Dirichlet-style off-diagonal penalty 0.251 at best.

Past :data:`MATRIX_SCALING_MAX_WORK` (rows x classes^2: that regression has a weight per
pair of classes, and each of its hundreds of steps costs that many multiply-adds) the
calibrator is :class:`TemperatureScaling` instead: one factor on every score, then a softmax.
At 1,000 classes of 16,000 out-of-fold rows (hard synthetic rows, separated enough for 0.95
test accuracy; ``benchmarks/calibration_scale.py``, one thread) the regression took 215 s,
twice the linear SVM's whole search (102 s), for a held-out log-loss of 0.865; temperature
scaling took 1.2 s for 0.783. caltech101 (7,348 x 102^2 = 7.6e7) stays below the budget, where
the regression calibrates best (above). The rule is about cost only: with few rows per class
temperature scaling can calibrate better below the budget too (``benchmarks/RESULTS.md``).

A sweep already has the out-of-fold scores: the SVMs' searches keep them at the chosen C
(``LinearHeadCV.cv_decision_``, ``RBFSVMHeadCV.cv_decision_``), and
:func:`with_probabilities` takes them instead of fitting the head on folds again (on
caltech101 that took 12-13 s; the calibrated probabilities' held-out log-loss was 0.247 either
way). Their folds are the sweep's, which keep an image's views together; the folds fitted here
are not grouped.

Because ``predict`` stays the head's own, the probability of the predicted class can fall
below the largest one for the few rows next to the decision boundary; use
``predict_proba(X)[i, k]`` for the class you care about.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "MATRIX_SCALING_MAX_WORK",
    "ScoreCalibrated",
    "TemperatureScaling",
    "calibrator_for",
    "needs_calibration",
    "with_probabilities",
]

#: Rows x score columns^2 up to which the calibrator is a multinomial logistic regression on
#: the score vector; past it, :class:`TemperatureScaling` (module docstring).
MATRIX_SCALING_MAX_WORK = 1 << 27


def needs_calibration(estimator: BaseEstimator) -> bool:
    """True when ``estimator`` has ``decision_function`` but no usable ``predict_proba``."""
    return not hasattr(estimator, "predict_proba") and hasattr(estimator, "decision_function")


def _as_columns(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    return scores.reshape(-1, 1) if scores.ndim == 1 else scores


class TemperatureScaling(ClassifierMixin, BaseEstimator):
    """Probabilities ``softmax(scale * scores)`` with one ``scale`` fitted by the mean log-loss
    of the rows given (Guo et al. 2017, for many classes and few rows per class).

    ``fit(S, y)``: ``S`` holds one column of scores per class of ``y``, in sorted order (a
    head's ``decision_function`` with three classes or more).

    Attributes (after ``fit``):
        scale_: The fitted factor (1 / temperature), positive.
        classes_: The class labels, sorted.
    """

    def fit(self, S: Any, y: Any) -> TemperatureScaling:
        """Fit ``scale_`` by L-BFGS on its logarithm (each step one pass over ``S``)."""
        S = np.asarray(S, dtype=np.float64)
        self.classes_ = np.unique(y)
        if S.ndim != 2 or S.shape[1] != len(self.classes_) or len(S) != len(y):
            raise ValueError(
                f"scores of shape {S.shape} for {len(y)} labels of {len(self.classes_)} classes"
            )
        rows = np.arange(len(S))
        target = np.searchsorted(self.classes_, y)

        def loss(log_scale: np.ndarray) -> tuple[float, np.ndarray]:
            scale = float(np.exp(log_scale[0]))
            log_p = log_softmax(scale * S, axis=1)
            expected = np.einsum("ij,ij->i", np.exp(log_p), S)  # E_p[score] per row
            gradient = scale * np.mean(expected - S[rows, target])
            return float(-np.mean(log_p[rows, target])), np.array([gradient])

        found = minimize(loss, np.zeros(1), jac=True, method="L-BFGS-B", bounds=[(-30, 30)])
        self.scale_ = float(np.exp(found.x[0]))
        return self

    def predict_proba(self, S: Any) -> np.ndarray:
        check_is_fitted(self, "scale_")
        return np.exp(log_softmax(self.scale_ * np.asarray(S, dtype=np.float64), axis=1))

    def predict(self, S: Any) -> np.ndarray:
        return self.classes_[np.argmax(np.asarray(S), axis=1)]


def calibrator_for(scores: np.ndarray) -> BaseEstimator:
    """Matrix scaling (a multinomial logistic regression on the score vector) within
    :data:`MATRIX_SCALING_MAX_WORK`; temperature scaling past it."""
    rows, columns = scores.shape
    if columns > 2 and rows * columns * columns > MATRIX_SCALING_MAX_WORK:
        return TemperatureScaling()
    return LogisticRegression(max_iter=1000)


class ScoreCalibrated(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """``estimator``'s predictions plus probabilities calibrated from its decision scores.

    Args:
        estimator: An unfitted classifier with ``decision_function`` (a head's Pipeline).
        cv: Folds for the out-of-fold scores; lowered to the smallest class count (>= 2).
        random_state: Seed of the stratified folds.

    Attributes (after ``fit``):
        estimator_: ``estimator`` refitted on all of ``X`` (or, from :func:`with_probabilities`,
            the fitted head itself); ``predict`` is its ``predict``.
        calibrator_: ``LogisticRegression`` from scores to class probabilities, or past
            :data:`MATRIX_SCALING_MAX_WORK` a :class:`TemperatureScaling`.
        classes_: The class labels, as in ``estimator_``.
    """

    def __init__(self, estimator: BaseEstimator, *, cv: int = 5, random_state: int = 0) -> None:
        self.estimator = estimator
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> ScoreCalibrated:
        """Fit the calibrator on out-of-fold scores, then ``estimator`` on all of ``X``."""
        self._calibrate(X, y)
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.classes_ = self.estimator_.classes_
        return self

    def _calibrate(self, X: Any, y: Any, scores: np.ndarray | None = None) -> None:
        """Fit the calibrator on ``scores`` (out-of-fold decision scores of ``X``'s rows), or
        on scores from ``cv`` folds of ``estimator`` when none are given."""
        y = np.asarray(y)
        if scores is None:
            _, counts = np.unique(y, return_counts=True)
            folds = min(self.cv, int(counts.min()))
            if folds < 2:
                raise ValueError("every class needs at least 2 training rows to calibrate scores")
            splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            scores = cross_val_predict(
                clone(self.estimator), X, y, cv=splitter, method="decision_function"
            )
        elif len(scores) != len(y):
            raise ValueError(f"{len(scores)} rows of scores for {len(y)} labels")
        scores = _as_columns(scores)
        self.calibrator_ = calibrator_for(scores).fit(scores, y)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "calibrator_")
        return self.calibrator_.predict_proba(_as_columns(self.decision_function(X)))


def with_probabilities(
    fitted: BaseEstimator,
    X_train: Any,
    y_train: Any,
    *,
    cv: int = 5,
    random_state: int = 0,
    scores: np.ndarray | None = None,
) -> BaseEstimator:
    """``fitted`` itself if it has ``predict_proba``, else a :class:`ScoreCalibrated` head whose
    calibrator is fitted on out-of-fold scores of the training rows ``fitted`` was fitted on,
    and whose ``estimator_`` is ``fitted`` itself (not refitted: the same predictions by
    construction, and one fit fewer). ``scores``: those out-of-fold scores, when the search
    that chose ``fitted`` already has them (``decision_function``'s layout, one row per
    training row); otherwise ``cv`` folds of ``fitted``'s clone compute them."""
    if not needs_calibration(fitted):
        return fitted
    calibrated = ScoreCalibrated(fitted, cv=cv, random_state=random_state)
    calibrated._calibrate(X_train, y_train, scores)
    calibrated.estimator_ = fitted
    calibrated.classes_ = fitted.classes_
    return calibrated
