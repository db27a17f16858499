"""Registry of classifier heads for cached bottleneck features.

A *head* is an ordinary scikit-learn estimator (always a :class:`~sklearn.pipeline.Pipeline`
whose last step is named ``"clf"``), so ``Pipeline``, ``GridSearchCV``, ``cross_validate`` and
``clone`` accept it. Each :class:`HeadSpec` pairs a builder (a fresh, unfitted estimator per
call) with a small hyperparameter grid whose keys are in ``step__param`` form, ready to pass to
``GridSearchCV(param_grid=...)``.

The grids are deliberately small (3 to 6 points): the whole registry, every grid point, 5-fold
CV plus a refit, runs on 2,000 x 1,280 float32 features in well under a minute on two CPU cores
(see ``benchmarks/sweep_speed.py``).

Heads that do not expose ``predict_proba`` (``linear_svm``, ``rbf_svm``) are scored for ROC
curves with ``decision_function``; :func:`classifiers.metrics.scores_for` picks the right one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import check_array

__all__ = ["HEADS", "HeadSpec", "ShapeDualLinearSVC", "get_head", "list_heads"]

#: Seed given to every estimator that takes a ``random_state``.
RANDOM_STATE = 0


@dataclass(frozen=True)
class HeadSpec:
    """One registered head.

    Attributes:
        name: Registry key, e.g. ``"linear_svm"``.
        description: One line for listings and reports.
        build: Returns a fresh, unfitted estimator (a ``Pipeline`` ending in step ``"clf"``).
        grid: Hyperparameter grid, keys in ``step__param`` form (``"clf__C"``); usable directly
            as ``GridSearchCV(param_grid=spec.grid)``. Treat it as read-only; copy before
            changing it.
    """

    name: str
    description: str
    build: Callable[[], BaseEstimator]
    grid: dict[str, list]


def _scaled(clf: BaseEstimator) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", clf)])


#: ``ShapeDualLinearSVC`` uses liblinear's dual solver unless the training rows outnumber the
#: features by more than this factor.
DUAL_MAX_RATIO = 2.0


class ShapeDualLinearSVC(LinearSVC):
    """``LinearSVC`` whose ``dual="auto"`` picks the solver by the data's shape.

    scikit-learn's own ``dual="auto"`` takes the primal solver as soon as rows outnumber
    features. On standardised bottleneck features that is often the slow choice: measured on
    this project's 2-core machine (``benchmarks/heads_speed.py``),

    - 1,430 x 1,280 real EfficientNet-Lite0 rows: dual 0.5 / 1.1 / 1.7 s at C = 1e-4 / 1e-3 /
      1e-2, primal 1.5 / 3.4 / 9.7 s;
    - 10,000 x 2,048 synthetic rows: dual 1.4 / 1.9 / 10.0 s, primal 1.5 / 2.8 / 3.7 s.

    So the dual solver is kept while ``n_samples <= DUAL_MAX_RATIO * n_features`` and the
    primal one is used beyond. Both solve the same convex problem (squared hinge, L2), so the
    choice changes the time, not the model, up to the solver tolerance. Any other ``dual``
    value is passed to ``LinearSVC`` unchanged. ``dual_`` records the solver used.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> ShapeDualLinearSVC:
        if self.dual != "auto":
            self.dual_ = self.dual
            return super().fit(X, y, sample_weight)
        # No copy for arrays and sparse matrices; LinearSVC.fit validates X fully itself.
        X = check_array(X, accept_sparse=True, dtype=None, ensure_all_finite=False)
        n_samples, n_features = X.shape
        chosen = bool(n_samples <= DUAL_MAX_RATIO * n_features)
        self.dual = chosen  # set for the solver only; restored so get_params() is unchanged
        try:
            super().fit(X, y, sample_weight)
        finally:
            self.dual = "auto"
        self.dual_ = chosen
        return self


def _linear_svm() -> Pipeline:
    # C=1e-3: the middle of the grid. LinearSVC's own default, C=1, does not converge within
    # 5,000 iterations on 10,000 x 2,048 standardised rows (120 s).
    return _scaled(
        ShapeDualLinearSVC(C=1e-3, dual="auto", max_iter=5000, random_state=RANDOM_STATE)
    )


def _rbf_svm() -> Pipeline:
    # No probability calibration (an extra internal 5-fold CV); ROC uses decision_function.
    return _scaled(SVC(kernel="rbf", gamma="scale", random_state=RANDOM_STATE))


def _gaussian_nb() -> Pipeline:
    # Naive Bayes models each feature's own variance: scaling would not change it.
    return Pipeline([("clf", GaussianNB())])


def _logreg() -> Pipeline:
    return _scaled(LogisticRegression(solver="lbfgs", max_iter=3000, random_state=RANDOM_STATE))


def _mlp() -> Pipeline:
    return _scaled(
        MLPClassifier(
            hidden_layer_sizes=(256,),
            # 3e-3 rather than adam's 1e-3: about 40% fewer epochs to the early stop at the
            # same accuracy on 1280-d standardised features (benchmarks/sweep_speed.py).
            learning_rate_init=3e-3,
            early_stopping=True,
            validation_fraction=0.1,
            n_iter_no_change=10,
            max_iter=200,
            random_state=RANDOM_STATE,
        )
    )


def _knn() -> Pipeline:
    return _scaled(KNeighborsClassifier(n_neighbors=5, weights="distance", algorithm="brute"))


_SPECS = (
    HeadSpec(
        name="linear_svm",
        description=(
            "Linear SVM (LinearSVC, squared hinge, one-vs-rest, solver by shape) on "
            "standardised features"
        ),
        build=_linear_svm,
        # Standardised 1280-d features are nearly separable: small C (strong regularisation)
        # usually wins, and large C only slows the solver down.
        grid={"clf__C": [1e-4, 1e-3, 1e-2]},
    ),
    HeadSpec(
        name="rbf_svm",
        description="RBF-kernel SVM (SVC, gamma='scale') on standardised features",
        build=_rbf_svm,
        grid={"clf__C": [1.0, 10.0, 100.0]},
    ),
    HeadSpec(
        name="gaussian_nb",
        description="Gaussian naive Bayes on raw features",
        build=_gaussian_nb,
        # var_smoothing adds a fraction of the largest feature variance to every variance.
        grid={"clf__var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]},
    ),
    HeadSpec(
        name="logreg",
        description="Multinomial logistic regression (L2, lbfgs) on standardised features",
        build=_logreg,
        grid={"clf__C": [1e-3, 1e-2, 1e-1]},
    ),
    HeadSpec(
        name="mlp",
        description="MLP, one hidden layer of 256 ReLU units, adam, early stopping",
        build=_mlp,
        # alpha is the L2 penalty.
        grid={"clf__alpha": [1e-4, 1e-2, 1.0]},
    ),
    HeadSpec(
        name="knn",
        description="k-nearest neighbours (distance-weighted) on standardised features",
        build=_knn,
        grid={"clf__n_neighbors": [1, 5, 15], "clf__metric": ["euclidean", "cosine"]},
    ),
)

#: Every registered head, by name, in registry order.
HEADS: dict[str, HeadSpec] = {spec.name: spec for spec in _SPECS}


def get_head(name: str) -> HeadSpec:
    """Return the registered head called ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the allowed names.
    """
    try:
        return HEADS[name]
    except (KeyError, TypeError):
        allowed = ", ".join(HEADS)
        raise ValueError(
            f"unknown head {name!r}; expected one of: {allowed} "
            "(classifiers.list_heads() lists them with descriptions)"
        ) from None


def list_heads() -> list[HeadSpec]:
    """Return every registered head, in registry order."""
    return list(HEADS.values())
