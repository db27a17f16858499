"""The search results of the heads that cross-validate their own grid, in GridSearchCV's layout.

``RBFSVMHeadCV``, ``MLPHeadCV``, ``KNeighborsHeadCV`` and ``GaussianNBHeadCV`` score every
setting on every fold themselves; :func:`store_search` records that table on the estimator as
``GridSearchCV`` does (``cv_results_``, ``best_index_``, ``best_params_``, ``best_score_``,
``n_splits_``), so the sweep reads every head's search the same way, and
:class:`PredictsWithRefit` gives them the refit's predictions, as ``GridSearchCV`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

__all__ = ["PredictsWithRefit", "search_results", "store_search"]


def search_results(params: list[dict[str, Any]], table: np.ndarray) -> dict[str, Any]:
    """``cv_results_`` for ``table`` (a row per setting of ``params``, a column per fold):
    ``param_<name>`` for each parameter, ``params``, the mean, spread and rank of the scores
    (equal means rank the earlier setting first) and each fold's ``split<k>_test_score``."""
    means, stds = table.mean(axis=1), table.std(axis=1)
    order = sorted(range(len(params)), key=lambda i: (-means[i], i))
    ranks = np.empty(len(params), dtype=np.int64)
    ranks[order] = np.arange(1, len(params) + 1)
    results: dict[str, Any] = {
        f"param_{name}": np.array([p[name] for p in params]) for name in params[0]
    }
    results.update(params=params, mean_test_score=means, std_test_score=stds, rank_test_score=ranks)
    for f in range(table.shape[1]):
        results[f"split{f}_test_score"] = table[:, f]
    return results


def store_search(
    estimator: Any, params: list[dict[str, Any]], table: np.ndarray, best: int
) -> None:
    """Record the search of ``table`` on ``estimator``, its chosen setting at ``best``."""
    results = search_results(params, table)
    estimator.cv_results_ = results
    estimator.best_index_ = best
    estimator.best_params_ = dict(params[best])
    estimator.best_score_ = float(results["mean_test_score"][best])
    estimator.n_splits_ = table.shape[1]


def _of_refit(name: str, doc: str) -> Callable[..., np.ndarray]:
    """The refit's method ``name``, present where the class lists it in ``refit_methods``."""

    def method(self: Any, X: Any) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return getattr(self.best_estimator_, name)(X)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return available_if(lambda self: name in self.refit_methods)(method)


class PredictsWithRefit:
    """``predict`` and, where the refit's class has them (``refit_methods``),
    ``predict_proba``, ``predict_log_proba`` and ``decision_function``, all of
    ``best_estimator_``."""

    refit_methods: tuple[str, ...] = ("predict",)

    predict = _of_refit("predict", "Predictions of the refit.")
    predict_proba = _of_refit("predict_proba", "Class probabilities of the refit.")
    predict_log_proba = _of_refit("predict_log_proba", "Log class probabilities of the refit.")
    decision_function = _of_refit("decision_function", "Decision values of the refit.")
