"""The naive Bayes and k-NN heads' own estimators (classifiers.bayes, classifiers.neighbors):
scikit-learn's models, computed faster."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers.bayes import GaussianNBHead
from classifiers.neighbors import KNeighborsHeadCV


@parametrize_with_checks([GaussianNBHead(), KNeighborsHeadCV(n_neighbors=(1, 3), cv=3)])
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("var_smoothing", [1e-9, 1e-3, 1e-1])
def test_naive_bayes_scores_equal_scikit_learns(problem, var_smoothing: float) -> None:
    X, y = problem(5, n_features=30, class_sep=1.0)
    X = X.astype(np.float64)  # scikit-learn's GaussianNB keeps float32 rows in float32
    weights = 1.0 + (np.arange(len(y)) % 3)
    ours = GaussianNBHead(var_smoothing=var_smoothing).fit(X, y, sample_weight=weights)
    ref = GaussianNB(var_smoothing=var_smoothing).fit(X, y, sample_weight=weights)
    np.testing.assert_allclose(ours.predict_log_proba(X), ref.predict_log_proba(X), atol=1e-7)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_knn_search_scores_every_point_as_grid_search_does(problem) -> None:
    X, y = problem(3, class_sep=0.8)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    ours = KNeighborsHeadCV(n_neighbors=(1, 5, 15), cv=folds).fit(X, y)
    ref = GridSearchCV(
        Pipeline(
            [
                ("scale", StandardScaler()),
                ("knn", KNeighborsClassifier(weights="distance", algorithm="brute")),
            ]
        ),
        {"knn__n_neighbors": [1, 5, 15], "knn__metric": ["euclidean", "cosine"]},
        cv=folds,
    ).fit(X, y)
    expected = {
        (p["knn__n_neighbors"], p["knn__metric"]): m
        for p, m in zip(ref.cv_results_["params"], ref.cv_results_["mean_test_score"], strict=True)
    }
    got = {
        (p["n_neighbors"], p["metric"]): m
        for p, m in zip(
            ours.cv_results_["params"], ours.cv_results_["mean_test_score"], strict=True
        )
    }
    assert got == pytest.approx(expected)
    assert ours.best_score_ == pytest.approx(ref.best_score_)
    np.testing.assert_array_equal(ours.predict(X), ours.best_estimator_.predict(X))
    assert ours.best_estimator_[-1].n_neighbors == ours.best_params_["n_neighbors"]


def test_knn_refuses_more_neighbours_than_a_fold_has_rows(problem) -> None:
    X, y = problem(2)
    with pytest.raises(ValueError, match="exceeds the"):
        KNeighborsHeadCV(n_neighbors=(1, 500), cv=3).fit(X[:40], y[:40])
