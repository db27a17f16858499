"""Registry of classifier heads for cached bottleneck features.

A *head* is an ordinary scikit-learn estimator (always a :class:`~sklearn.pipeline.Pipeline`
whose last step is named ``"clf"``), so ``Pipeline``, ``GridSearchCV``, ``cross_validate`` and
``clone`` accept it. Each :class:`HeadSpec` pairs a builder (a fresh, unfitted estimator per
call) with how its hyperparameters are chosen:

- ``search="grid"``: a small grid in ``step__param`` form, for ``GridSearchCV(param_grid=...)``;
- ``search="internal"``: the last step searches itself by cross-validation (the linear heads,
  :class:`classifiers.linear.LinearHeadCV`: a wide path of C solved as one batched problem, every
  CV fold at once). Its ``grid`` is the one point ``{"clf__Cs": [the path]}``, so
  ``GridSearchCV(param_grid=spec.grid)`` still runs it (nested); the sweep instead hands it the
  folds and reads ``best_params_``, ``best_score_`` and ``cv_results_``.

Heads that do not expose ``predict_proba`` (``linear_svm``, ``rbf_svm``) are scored for ROC
curves with ``decision_function``; :func:`classifiers.metrics.scores_for` picks the right one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils import check_array

from classifiers.bayes import VAR_SMOOTHINGS, GaussianNBHeadCV
from classifiers.kernel import RBFSVMHeadCV
from classifiers.linear import DEFAULT_CS, LinearHeadCV
from classifiers.mlp import MLPHeadCV
from classifiers.neighbors import KNeighborsHeadCV
from classifiers.nystroem import MAX_EXACT_ROWS, N_COMPONENTS

__all__ = [
    "HEADS",
    "FoldShape",
    "HeadSpec",
    "ShapeDualLinearSVC",
    "get_head",
    "list_heads",
]

#: Seed given to every estimator that takes a ``random_state``.
RANDOM_STATE = 0


@dataclass(frozen=True)
class FoldShape:
    """What a grid may need to know about the CV folds it will be fitted on.

    Attributes:
        n_classes: Classes in the training split.
        min_train_rows: Rows in the smallest CV training part (the smallest fit of the search).
        min_class_rows: Rows of the rarest class in any CV training part.
        n_features: Columns of the rows.
    """

    n_classes: int
    min_train_rows: int
    min_class_rows: int
    n_features: int


#: ``adapt(grid, shape) -> (grid, notes)``: the grid points that can work on these folds, and
#: a note for every point dropped or changed.
Adapter = Callable[[dict[str, list], FoldShape], tuple[dict[str, list], list[str]]]


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
        search: ``"grid"`` (the sweep runs ``GridSearchCV`` over ``grid``) or ``"internal"``
            (the ``clf`` step searches itself: it takes ``cv`` and ``scoring`` parameters and
            exposes ``best_params_``, ``best_score_`` and ``cv_results_``).
        defaults: Parameters the sweep sets when it runs without a search (``use_grid=False``)
            on an internal-search head: its single default point.
            An internal-search head's ``grid`` holds one point whose values are its search
            lists (``{"clf__n_neighbors": [(1, 5, 15)]}``); ``adapt`` sees those lists.
        class_weight: How the head takes ``class_weight="balanced"``: ``"param"`` (its ``clf``
            step has a ``class_weight`` parameter), ``"sample_weight"`` (balanced weights go to
            ``fit`` as ``clf__sample_weight``; for naive Bayes that is exactly equal class
            priors), or ``None`` (not supported; the sweep says so in the result's notes).
        regularization: The parameter that sets the regularisation strength, if any (reported
            as the chosen regularisation).
        adapt: Fits the grid to the folds (e.g. no more neighbours than rows); ``None`` keeps it.
        limits: Per grid key, the natural (lowest, highest) value (``None`` = unbounded): a
            chosen value there is not reported as lying on the grid's edge.
        cost: ``cost(rows, columns, classes)``, the rough seconds of a fit with its search
            on one core: a sweep that fits side by side starts the longest fits first
            (:mod:`classifiers.pool`). Only the order depends on it.
        uses_torch: ``uses_torch(rows, columns, classes)``, whether a fit may import torch: a
            sweep fitting side by side imports it (seconds) before forking its workers only
            if some fit does (:mod:`classifiers.pool`). Only that depends on it.
    """

    name: str
    description: str
    build: Callable[[], BaseEstimator]
    grid: dict[str, list]
    search: str = "grid"
    defaults: dict[str, Any] = field(default_factory=dict)
    class_weight: str | None = None
    regularization: str | None = None
    adapt: Adapter | None = None
    limits: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    cost: Callable[[int, int, int], float] = lambda rows, width, classes: 1e-6 * rows * width
    uses_torch: Callable[[int, int, int], bool] = lambda rows, width, classes: True


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


def _linear_head(loss: str) -> Pipeline:
    return _scaled(LinearHeadCV(loss, random_state=RANDOM_STATE))


def _linear_svm() -> Pipeline:
    return _linear_head("squared_hinge")


def _logreg() -> Pipeline:
    return _linear_head("log_loss")


def _rbf_svm() -> Pipeline:
    # Standardises each fold itself. No probability calibration (an extra internal 5-fold CV);
    # ROC uses decision_function.
    return Pipeline([("clf", RBFSVMHeadCV(random_state=RANDOM_STATE))])


def _gaussian_nb() -> Pipeline:
    # Naive Bayes models each feature's own variance: scaling would not change it.
    return Pipeline([("clf", GaussianNBHeadCV(VAR_SMOOTHINGS))])


def _mlp() -> Pipeline:
    # 256 ReLU units, Adam at 3e-3 (rather than 1e-3: about 40% fewer epochs to the early stop
    # at the same accuracy on 1280-d standardised features), early stopping on 10% of each
    # fit's rows; standardises (and reduces to 256 principal directions) each fold itself.
    return Pipeline([("clf", MLPHeadCV(random_state=RANDOM_STATE))])


def _knn() -> Pipeline:
    # Standardises each CV fold with its own training rows itself (no scaler step in front).
    return Pipeline([("clf", KNeighborsHeadCV(random_state=RANDOM_STATE))])


# Rough seconds of each head's whole search on one core (sweep order only), fitted to the
# per-pair times of benchmarks/RESULTS.md (sessions 13-14: digits, caltech101, 100 classes) on
# a 2-core CPU without AVX-512: the linear heads grow with rows x columns and rows x classes
# (the linear SVM more with columns, logistic regression more with classes), the MLP with rows
# (its input is at most 256 principal directions), the exact RBF SVM and kNN with
# rows^2 x columns, naive Bayes with rows x columns x classes.
def _linear_svm_cost(rows: int, width: int, classes: int) -> float:
    return 1.2e-6 * rows * width + 3e-5 * rows * classes


def _logreg_cost(rows: int, width: int, classes: int) -> float:
    return 4e-7 * rows * width + 5.5e-5 * rows * classes


def _mlp_cost(rows: int, width: int, classes: int) -> float:
    return 1.6e-5 * rows * min(width, 256)


def _rbf_svm_cost(rows: int, width: int, classes: int) -> float:
    if rows <= MAX_EXACT_ROWS:  # the kernel's products and libsvm grow alike
        return 5e-10 * rows**2 * width
    return 5e-10 * MAX_EXACT_ROWS**2 * width + 1e-6 * rows * width  # the Nystroem map


def _knn_cost(rows: int, width: int, classes: int) -> float:
    return 8.5e-11 * rows**2 * width


def _gaussian_nb_cost(rows: int, width: int, classes: int) -> float:
    return 2e-9 * rows * width * classes


def _fewer_neighbours(grid: dict[str, list], shape: FoldShape) -> tuple[dict[str, list], list[str]]:
    """kNN cannot ask for more neighbours than the smallest CV training part has rows."""
    key = "clf__n_neighbors"
    values = grid.get(key)
    if not values:
        return grid, []
    fits = [k for k in values if k <= shape.min_train_rows]
    if len(fits) == len(values):
        return grid, []
    dropped = [k for k in values if k > shape.min_train_rows]
    kept = fits or [shape.min_train_rows]
    note = (
        f"n_neighbors {dropped} dropped from the grid: the smallest CV training part has "
        f"{shape.min_train_rows} rows"
        + ("" if fits else f"; n_neighbors={shape.min_train_rows} used instead")
    )
    return {**grid, key: kept}, [note]


def _early_stopping_fits(
    grid: dict[str, list], shape: FoldShape
) -> tuple[dict[str, list], list[str]]:
    """Early stopping holds out a stratified 10% of each fit's rows: it needs a row of every
    class there and two rows of every class in the fit."""
    held_out = math.ceil(0.1 * shape.min_train_rows)
    if held_out >= shape.n_classes and shape.min_class_rows >= 2:
        return grid, []
    note = (
        f"early stopping off: the 10% validation part of the smallest CV training part "
        f"({shape.min_train_rows} rows, rarest class {shape.min_class_rows}) cannot hold every "
        f"one of the {shape.n_classes} classes"
    )
    return {**grid, "clf__early_stopping": [False]}, [note]


_SPECS = (
    HeadSpec(
        name="linear_svm",
        description=(
            "Linear SVM (squared hinge, one-vs-rest, L2) on standardised features; C chosen by "
            "its own CV over 1e-6..1e6, every fold and class solved as one batched problem"
        ),
        build=_linear_svm,
        grid={"clf__Cs": [DEFAULT_CS]},
        search="internal",
        # The previous default (LinearSVC at C=1e-3, the middle of its old grid).
        defaults={"clf__Cs": [1e-3], "clf__refine": 0},
        class_weight="param",
        regularization="clf__C",
        cost=_linear_svm_cost,
    ),
    HeadSpec(
        name="rbf_svm",
        description=(
            "RBF-kernel SVM (SVC, one-vs-one, gamma='scale') on standardised features, "
            "fitted through one precomputed kernel per fold; C in 1, 10, 100. Past "
            f"{MAX_EXACT_ROWS:,} training rows: a Nystroem map ({N_COMPONENTS:,} landmarks) "
            "and the batched linear SVM"
        ),
        build=_rbf_svm,
        grid={"clf__Cs": [(1.0, 10.0, 100.0)]},
        search="internal",
        defaults={"clf__Cs": (1.0,)},  # SVC's default C
        class_weight="param",
        regularization="clf__C",
        cost=_rbf_svm_cost,
        # numpy and scikit-learn; the Nystroem approximation's batched linear SVM uses torch.
        uses_torch=lambda rows, width, classes: rows > MAX_EXACT_ROWS,
    ),
    HeadSpec(
        name="gaussian_nb",
        description=(
            "Gaussian naive Bayes on raw features (class scores as matrix products); "
            "var_smoothing in 1e-9, 1e-6, 1e-3, 1e-1 chosen by its own CV, one fit per fold"
        ),
        build=_gaussian_nb,
        # var_smoothing adds a fraction of the largest feature variance to every variance.
        grid={"clf__var_smoothings": [VAR_SMOOTHINGS]},
        search="internal",
        defaults={"clf__var_smoothings": (1e-9,)},  # GaussianNB's default
        class_weight="sample_weight",
        regularization="clf__var_smoothing",
        cost=_gaussian_nb_cost,
        uses_torch=lambda rows, width, classes: False,  # numpy only
    ),
    HeadSpec(
        name="logreg",
        description=(
            "Multinomial logistic regression (L2) on standardised features; C chosen by its "
            "own CV over 1e-6..1e6, every fold solved as one batched problem"
        ),
        build=_logreg,
        grid={"clf__Cs": [DEFAULT_CS]},
        search="internal",
        defaults={"clf__Cs": [1.0], "clf__refine": 0},  # LogisticRegression's default C
        class_weight="param",
        regularization="clf__C",
        cost=_logreg_cost,
    ),
    HeadSpec(
        name="mlp",
        description=(
            "MLP, one hidden layer of 256 ReLU units, adam, early stopping; alpha (L2) in "
            "1e-4, 1e-2, 1 chosen with every fold and alpha trained as one batch"
        ),
        build=_mlp,
        grid={"clf__alphas": [(1e-4, 1e-2, 1.0)]},
        search="internal",
        defaults={"clf__alphas": (1e-4,)},  # MLPClassifier's default alpha
        class_weight="sample_weight",
        regularization="clf__alpha",
        adapt=_early_stopping_fits,
        cost=_mlp_cost,
    ),
    HeadSpec(
        name="knn",
        description=(
            "k-nearest neighbours (distance-weighted) on standardised features; k in 1, 5, 15 "
            "and the metric (euclidean, cosine) chosen by its own CV from one distance pass "
            "per fold"
        ),
        build=_knn,
        grid={"clf__n_neighbors": [(1, 5, 15)], "clf__metrics": [("euclidean", "cosine")]},
        search="internal",
        defaults={"clf__n_neighbors": (5,), "clf__metrics": ("euclidean",)},
        adapt=_fewer_neighbours,
        limits={"clf__n_neighbors": (1, None)},
        cost=_knn_cost,
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
