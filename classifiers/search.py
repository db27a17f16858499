"""Choose one head's hyperparameters by cross-validation on a training split.

:func:`search_head` hands the folds to the head's own search (``HeadSpec.search ==
"internal"``, e.g. the batched linear heads) or runs ``GridSearchCV`` over its grid, and returns
the chosen parameters, the CV score and its spread, the refitted estimator with those
parameters fixed, and notes (grid points dropped for these folds, class weights that could not
be applied, a choice on the edge of the searched range).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.class_weight import compute_sample_weight

from classifiers.calibration import needs_calibration
from classifiers.folds import FoldPlan
from classifiers.heads import HeadSpec

__all__ = ["SCORINGS", "SearchOutcome", "search_head"]

#: Selection scores ``run_sweep(scoring=...)`` accepts (scikit-learn scorer names).
SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro")


@dataclass
class SearchOutcome:
    """What one head's search chose.

    Attributes:
        best_params: Chosen parameters, ``step__param`` keys (the regularisation included).
        cv_score: Mean CV score of ``best_params``.
        cv_fold_scores: Its score on each fold.
        estimator: The head refitted on the whole training split, ``best_params`` fixed.
        points: Every evaluated point: ``{"params", "mean", "std"}`` (JSON-safe).
        class_weight: ``"balanced"`` when it was applied, else ``None``.
        notes: Grid adaptations, unsupported class weights, grid-edge choices.
        cv_decision: For a head without probabilities whose own search kept them (the SVMs'
            ``cv_decision_``), each training row's decision scores at ``best_params``
            from the fold fit that held it out: what its probabilities are calibrated on
            (:func:`classifiers.calibration.with_probabilities`); else ``None``.
    """

    best_params: dict[str, Any]
    cv_score: float
    cv_fold_scores: tuple[float, ...]
    estimator: BaseEstimator
    points: list[dict[str, Any]]
    class_weight: str | None = None
    notes: list[str] = field(default_factory=list)
    cv_decision: np.ndarray | None = None


def _seeded(estimator: BaseEstimator, random_state: int) -> BaseEstimator:
    params = {k: random_state for k in estimator.get_params() if k.endswith("random_state")}
    return estimator.set_params(**params) if params else estimator


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _class_weights(
    spec: HeadSpec, estimator: BaseEstimator, y: np.ndarray, class_weight: str | None
) -> tuple[dict[str, Any], str | None, list[str]]:
    """Apply ``class_weight`` the way ``spec`` takes it; (fit params, applied, notes)."""
    if class_weight is None:
        return {}, None, []
    if spec.class_weight == "param":
        estimator.set_params(clf__class_weight=class_weight)
        return {}, class_weight, []
    if spec.class_weight == "sample_weight":
        return {"clf__sample_weight": compute_sample_weight(class_weight, y)}, class_weight, []
    return (
        {},
        None,
        [f"class_weight={class_weight!r} not applied: {spec.name} has no class weights"],
    )


def edge_notes(
    chosen: dict[str, Any], grid: dict[str, Sequence[Any]], limits: dict[str, tuple[Any, Any]]
) -> list[str]:
    """A note per numeric grid axis (of 2+ values) whose chosen value is its smallest or
    largest, unless that end is the parameter's natural limit (``limits``)."""
    notes = []
    for key, values in grid.items():
        numeric = [v for v in values if isinstance(v, numbers.Real) and not isinstance(v, bool)]
        if len(set(numeric)) < 2 or len(numeric) != len(values) or key not in chosen:
            continue
        low, high = min(numeric), max(numeric)
        floor, ceiling = limits.get(key, (None, None))
        value = chosen[key]
        name = key.split("__")[-1]
        if value == low and low != floor:
            notes.append(
                f"{name}={value:g} is the smallest value searched ({low:g}..{high:g}): the best "
                "may lie below it"
            )
        elif value == high and high != ceiling:
            notes.append(
                f"{name}={value:g} is the largest value searched ({low:g}..{high:g}): the best "
                "may lie above it"
            )
    return notes


def search_head(
    spec: HeadSpec,
    X: np.ndarray,
    y: np.ndarray,
    plan: FoldPlan,
    *,
    use_grid: bool,
    scoring: str,
    class_weight: str | None,
    n_jobs: int | None,
    random_state: int,
) -> SearchOutcome:
    """Cross-validate ``spec`` on ``plan``'s folds of ``(X, y)``, refit the best point on all
    of it; see the module docstring."""
    estimator = _seeded(spec.build(), random_state)
    fit_params, applied, notes = _class_weights(spec, estimator, y, class_weight)
    if spec.search == "internal":
        outcome = _internal(spec, estimator, X, y, plan, use_grid, scoring, n_jobs, fit_params)
    else:
        outcome = _grid(spec, estimator, X, y, plan, use_grid, scoring, n_jobs, fit_params)
    outcome.class_weight = applied
    outcome.notes = notes + outcome.notes
    return outcome


def _internal(
    spec: HeadSpec,
    estimator: Pipeline,
    X: np.ndarray,
    y: np.ndarray,
    plan: FoldPlan,
    use_grid: bool,
    scoring: str,
    n_jobs: int | None,
    fit_params: dict[str, Any],
) -> SearchOutcome:
    if not use_grid:
        estimator.set_params(**spec.defaults)
    notes: list[str] = []
    if spec.adapt is not None:
        params = estimator.get_params()
        space = {key: list(params[key]) for key in spec.grid}
        adapted, notes = spec.adapt(space, plan.shape)
        # A search list stays a list; any other parameter the adaptation names is set.
        estimator.set_params(**{k: tuple(v) if k in space else v[0] for k, v in adapted.items()})
    settings: dict[str, Any] = {"clf__cv": [tuple(s) for s in plan.splits], "clf__scoring": scoring}
    if "clf__n_jobs" in estimator.get_params():
        settings["clf__n_jobs"] = n_jobs
    estimator.set_params(**settings)
    estimator.fit(X, y, **fit_params)
    inner = estimator[-1]
    results = inner.cv_results_
    best = inner.best_index_
    folds = tuple(float(results[f"split{k}_test_score"][best]) for k in range(inner.n_splits_))
    chosen = {f"clf__{k}": _plain(v) for k, v in inner.best_params_.items()}
    points = [
        {
            "params": {f"clf__{k}": _plain(v) for k, v in params.items()},
            "mean": float(mean),
            "std": float(std),
        }
        for params, mean, std in zip(
            results["params"], results["mean_test_score"], results["std_test_score"], strict=True
        )
    ]
    # The refit, with the chosen value fixed: what gets saved and calibrated (its clone
    # refits at that value instead of searching again).
    fixed = Pipeline([*estimator.steps[:-1], ("clf", inner.best_estimator_)])
    searched = {
        f"clf__{k[len('param_') :]}": sorted({_plain(v) for v in results[k]})
        for k in results
        if k.startswith("param_")
    }
    return SearchOutcome(
        best_params=chosen,
        cv_score=float(inner.best_score_),
        cv_fold_scores=folds,
        estimator=fixed,
        points=points,
        # What the head says about how it was fitted (e.g. an approximation at many rows).
        notes=notes
        + list(getattr(inner, "search_notes_", []))
        + edge_notes(chosen, searched, spec.limits),
        # Only where the saved head will need them: they are as large as the rows' scores.
        cv_decision=getattr(inner, "cv_decision_", None) if needs_calibration(fixed) else None,
    )


def _default_grid(spec: HeadSpec, estimator: BaseEstimator) -> dict[str, list]:
    """Each grid key at the head's default value (for ``use_grid=False``)."""
    params = estimator.get_params()
    return {key: [params[key]] for key in spec.grid if key in params}


def _grid(
    spec: HeadSpec,
    estimator: BaseEstimator,
    X: np.ndarray,
    y: np.ndarray,
    plan: FoldPlan,
    use_grid: bool,
    scoring: str,
    n_jobs: int | None,
    fit_params: dict[str, Any],
) -> SearchOutcome:
    grid = (
        {k: list(v) for k, v in spec.grid.items()} if use_grid else _default_grid(spec, estimator)
    )
    notes: list[str] = []
    if spec.adapt is not None:
        adapted, notes = spec.adapt(grid, plan.shape)
        if not use_grid:  # search only what the adaptation changed
            adapted = {k: v for k, v in adapted.items() if grid.get(k) != v}
        grid = adapted
    elif not use_grid:
        grid = {}
    search = GridSearchCV(
        estimator,
        grid,
        scoring=scoring,
        cv=[tuple(s) for s in plan.splits],
        # By default in this process: the grid heads left (Gaussian naive Bayes) fit in
        # milliseconds, and starting worker processes took 6-10 s on the loaded 2-core machine.
        n_jobs=1 if n_jobs is None else n_jobs,
        refit=True,
        error_score="raise",
    )
    search.fit(X, y, **fit_params)
    results = search.cv_results_
    best = search.best_index_
    folds = tuple(float(results[f"split{k}_test_score"][best]) for k in range(search.n_splits_))
    chosen = {k: _plain(v) for k, v in search.best_params_.items()}
    points = [
        {"params": {k: _plain(v) for k, v in params.items()}, "mean": float(m), "std": float(s)}
        for params, m, s in zip(
            results["params"], results["mean_test_score"], results["std_test_score"], strict=True
        )
    ]
    return SearchOutcome(
        best_params=chosen,
        cv_score=float(search.best_score_),
        cv_fold_scores=folds,
        estimator=search.best_estimator_,
        points=points,
        notes=notes + edge_notes(chosen, grid, spec.limits),
    )
