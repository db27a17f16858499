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

from classifiers.bayes import GaussianNBHead, GaussianNBHeadCV
from classifiers.neighbors import KNeighborsHead, KNeighborsHeadCV


@parametrize_with_checks(
    [
        GaussianNBHead(),
        GaussianNBHeadCV(var_smoothings=(1e-9, 1e-2), cv=3),
        KNeighborsHeadCV(n_neighbors=(1, 3), cv=3),
        KNeighborsHead(3, "cosine"),
    ]
)
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


@pytest.mark.parametrize("weighted", [False, True])
def test_naive_bayes_search_scores_every_value_as_grid_search_does(problem, weighted) -> None:
    X, y = problem(4, n_features=30, class_sep=0.7)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    weights = 1.0 + (np.arange(len(y)) % 3) if weighted else None
    values = [1e-9, 1e-3, 1e-2, 1e-1, 0.5]
    ours = GaussianNBHeadCV(values, cv=folds).fit(X, y, sample_weight=weights)
    # As the sweep passes them: the weights reach each fit, not the accuracy.
    ref = GridSearchCV(
        Pipeline([("clf", GaussianNBHead())]), {"clf__var_smoothing": values}, cv=folds
    )
    ref.fit(X, y, clf__sample_weight=weights)
    for f in range(len(folds)):  # fold by fold, to the last bit
        key = f"split{f}_test_score"
        np.testing.assert_array_equal(ours.cv_results_[key], ref.cv_results_[key])
    assert len(set(ours.cv_results_["mean_test_score"])) > 2  # the values do differ here
    assert ours.best_params_ == {"var_smoothing": ref.best_params_["clf__var_smoothing"]}
    np.testing.assert_array_equal(
        ours.predict_log_proba(X), ref.best_estimator_.predict_log_proba(X)
    )


def test_naive_bayes_search_fits_each_fold_once(problem, monkeypatch) -> None:
    X, y = problem(3, n_features=30)
    fits = []
    fit = GaussianNBHead.fit
    monkeypatch.setattr(
        GaussianNBHead, "fit", lambda self, *a, **k: fits.append(1) or fit(self, *a, **k)
    )
    GaussianNBHeadCV([1e-9, 1e-6, 1e-3, 1e-1], cv=5).fit(X, y)
    assert len(fits) == 5 + 1  # a fit per fold, and the refit


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
    assert ours.best_estimator_.n_neighbors == ours.best_params_["n_neighbors"]


def test_knn_refuses_more_neighbours_than_a_fold_has_rows(problem) -> None:
    X, y = problem(2)
    with pytest.raises(ValueError, match="exceeds the"):
        KNeighborsHeadCV(n_neighbors=(1, 500), cv=3).fit(X[:40], y[:40])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("standardize", [True, False])
def test_knn_predicts_as_scikit_learn_does(problem, metric: str, standardize: bool) -> None:
    X, y = problem(4, class_sep=0.8)
    train, test = X[:180], X[180:]
    head = KNeighborsHead(7, metric, standardize=standardize).fit(train, y[:180])
    sklearn = head.estimator_  # the fitted scikit-learn model, as it predicts without torch
    np.testing.assert_allclose(head.predict_proba(test), sklearn.predict_proba(test), atol=1e-6)
    np.testing.assert_array_equal(head.predict(test), sklearn.predict(test))
    if metric == "cosine" and not standardize:
        # Every row's cosine distance from a zero row is 1: 7 neighbours of equal weight.
        zero_shares = head.predict_proba(np.zeros((1, X.shape[1]), dtype=X.dtype)) * 7
        np.testing.assert_allclose(zero_shares, np.round(zero_shares), atol=1e-9)
    # A training row is at distance 0 from itself and takes all of the weight (scikit-learn's
    # products leave it a little away, so the other neighbours keep shares of about 1e-6).
    np.testing.assert_array_equal(head.predict_proba(train[:40]), np.eye(4)[y[:40]])
    np.testing.assert_array_equal(head.predict(train[:40]), sklearn.predict(train[:40]))


def test_knn_search_refits_its_choice(problem) -> None:
    X, y = problem(3)
    search = KNeighborsHeadCV(n_neighbors=(1, 5), metrics=("cosine",), cv=3).fit(X, y)
    refit = search.best_estimator_
    assert isinstance(refit, KNeighborsHead)
    assert (refit.n_neighbors, refit.metric) == (
        search.best_params_["n_neighbors"],
        search.best_params_["metric"],
    )
    np.testing.assert_array_equal(search.predict_proba(X[:30]), refit.predict_proba(X[:30]))


def test_knn_searches_the_neighbours_once_for_predict_then_predict_proba(
    problem, monkeypatch
) -> None:
    X, y = problem(3)
    head = KNeighborsHead(5).fit(X[:200], y[:200])
    calls = []
    search = KNeighborsHead._search
    monkeypatch.setattr(
        KNeighborsHead, "_search", lambda self, *a: calls.append(1) or search(self, *a)
    )
    labels = head.predict(X[200:])
    shares = head.predict_proba(X[200:])
    assert len(calls) == 1
    np.testing.assert_array_equal(labels, head.classes_[shares.argmax(axis=1)])
    shares[:] = 0  # the kept shares are the head's own: a caller's edit must not reach them
    assert head.predict_proba(X[200:]).sum() == pytest.approx(len(X) - 200)
    head.predict_proba(X[:10])
    assert len(calls) == 2
    KNeighborsHead(5).fit(X[:200], y[:200]).predict(X[:10])  # another fit: its own search
    assert len(calls) == 3


def test_knn_predicts_through_scikit_learn_without_torch(problem, monkeypatch) -> None:
    X, y = problem(3)
    head = KNeighborsHead(5).fit(X[:200], y[:200])
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch fails
    np.testing.assert_array_equal(
        head.predict_proba(X[200:]), head.estimator_.predict_proba(X[200:])
    )
