"""Honest model selection in the sweep: ordering by CV score on the training split only, image
groups kept in one fold, selection scores, class weights, imbalance notes, grids that adapt to
the data, failures that lose nothing, grid-edge notes, and the test accuracy's interval."""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GridSearchCV
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from classifiers import heads as heads_module
from classifiers.heads import HeadSpec
from classifiers.metrics import wilson_interval
from classifiers.search import edge_notes
from classifiers.sweep import FeatureSet, HeadFailure, SweepResults, rank_key, run_sweep


class Recorder(ClassifierMixin, BaseEstimator):
    """Nearest centroid (shrunk towards the mean) that records its training rows; ``fail``
    makes ``fit`` raise."""

    fitted_on: ClassVar[list[np.ndarray]] = []

    def __init__(self, shrink: float = 0.0, fail: bool = False) -> None:
        self.shrink = shrink
        self.fail = fail

    def fit(self, X, y, sample_weight=None):
        if self.fail:
            raise RuntimeError("this head always fails")
        type(self).fitted_on.append(np.array(X, copy=True))
        self.classes_ = np.unique(y)
        centre = X.mean(axis=0)
        self.centroids_ = np.stack(
            [
                (1 - self.shrink) * X[y == c].mean(axis=0) + self.shrink * centre
                for c in self.classes_
            ]
        )
        return self

    def predict(self, X):
        distances = ((X[:, None, :] - self.centroids_[None]) ** 2).sum(axis=2)
        return self.classes_[distances.argmin(axis=1)]


def _register(monkeypatch, name: str, **spec_kw) -> HeadSpec:
    defaults = {
        "description": "test head",
        "build": lambda: Pipeline([("clf", Recorder())]),
        "grid": {"clf__shrink": [0.0, 0.5, 0.9]},
    }
    spec = HeadSpec(name=name, **{**defaults, **spec_kw})
    monkeypatch.setitem(heads_module.HEADS, name, spec)
    return spec


@pytest.fixture
def recorder(monkeypatch) -> HeadSpec:
    Recorder.fitted_on.clear()
    return _register(monkeypatch, "recorder", limits={"clf__shrink": (0.0, None)})


def test_the_best_cv_score_ranks_first_even_when_another_tests_better(
    make_feature_set, replace_fs
) -> None:
    clean = make_feature_set("clean", class_sep=2.5)
    hard = make_feature_set("hard", class_sep=0.6, seed=3)
    rng = np.random.default_rng(0)
    # "clean" is easy to learn but its test split is noise; "hard" is hard but tests honestly.
    clean = replace_fs(clean, X_test=rng.normal(size=clean.X_test.shape).astype(np.float32))
    results = run_sweep([clean, hard], heads=["gaussian_nb"], cv=3)
    by_set = {r.feature_set: r for r in results}
    assert by_set["hard"].accuracy > by_set["clean"].accuracy  # the test split prefers "hard"
    assert by_set["clean"].cv_score > by_set["hard"].cv_score  # CV prefers "clean"
    assert results[0].feature_set == "clean"  # and CV decides


def test_rank_key_breaks_ties_by_spread_then_fit_time(good: FeatureSet) -> None:
    (base,) = run_sweep([good], heads=["gaussian_nb"], cv=3)

    def variant(**changes):
        fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
        return type(base)(**{**fields, **changes})

    steady = variant(head="steady", cv_std=0.01, fit_seconds=5.0)
    shaky = variant(head="shaky", cv_std=0.05, fit_seconds=0.1)
    quick = variant(head="quick", cv_std=0.01, fit_seconds=1.0)
    better = variant(head="better", cv_score=base.cv_score + 0.01, cv_std=0.2, fit_seconds=9.0)
    ordered = sorted([shaky, steady, quick, better], key=rank_key)
    assert [r.head for r in ordered] == ["better", "quick", "steady", "shaky"]


def test_every_result_reports_its_test_accuracy_with_a_wilson_interval(good) -> None:
    assert wilson_interval(45, 50) == pytest.approx((0.786398, 0.956524), abs=1e-6)
    assert wilson_interval(50, 50) == pytest.approx((0.928652, 1.0), abs=1e-6)
    for r in run_sweep([good], heads=["gaussian_nb", "knn"], cv=3):
        low, high = r.accuracy_ci95
        correct = round(r.accuracy * r.n_test)
        assert (low, high) == pytest.approx(wilson_interval(correct, r.n_test))
        assert low <= r.accuracy <= high
        assert r.evaluation.summary["accuracy_ci95"] == [low, high]


def _five_copies(fs: FeatureSet) -> FeatureSet:
    """The manifest that lists every training image 5 times (keys = image ids)."""
    index = np.repeat(np.arange(len(fs.y_train)), 5)
    return FeatureSet(
        name=fs.name,
        X_train=fs.X_train[index],
        y_train=fs.y_train[index],
        X_test=fs.X_test,
        y_test=fs.y_test,
        class_names=fs.class_names,
        groups_train=np.array([f"img{i}" for i in index]),
    )


def test_rows_of_one_image_never_straddle_a_fold(make_feature_set, recorder) -> None:
    fs = _five_copies(make_feature_set("hard", class_sep=0.5, seed=2))
    (result,) = run_sweep([fs], heads=["recorder"], cv=4, n_jobs=1)
    assert len(Recorder.fitted_on) == 3 * 4 + 1
    for X in Recorder.fitted_on:
        # Every image has 5 identical rows: a fit sees all 5 of them or none.
        _, counts = np.unique(X, axis=0, return_counts=True)
        assert set(counts) == {5}
    assert any("have more than one training row" in n for n in result.notes)


def test_grouped_cv_no_longer_scores_memorised_copies(make_feature_set) -> None:
    fs = _five_copies(make_feature_set("hard", class_sep=0.5, seed=2))
    (grouped,) = run_sweep([fs], heads=["knn"], cv=4)
    # 1-NN would find each held-out row's own copy in an ungrouped fold: CV 1.0.
    assert grouped.cv_score < 0.9
    assert abs(grouped.cv_score - grouped.accuracy) < 0.2


def test_groups_given_to_run_sweep_reach_the_folds(make_feature_set, recorder) -> None:
    fs = _five_copies(make_feature_set("hard", class_sep=0.5, seed=2))
    plain = FeatureSet(
        **{**{k: getattr(fs, k) for k in fs.__dataclass_fields__}, "groups_train": None}
    )
    # Distinct rows per copy, so the identical-row fallback cannot do the grouping.
    jitter = np.random.default_rng(0).normal(scale=1e-3, size=plain.X_train.shape)
    plain = FeatureSet(
        **{
            **{k: getattr(plain, k) for k in plain.__dataclass_fields__},
            "X_train": plain.X_train + jitter.astype(np.float32),
        }
    )
    run_sweep([plain], heads=["recorder"], cv=4, n_jobs=1, groups=fs.groups_train)
    train_rows = {
        row.tobytes(): key for row, key in zip(plain.X_train, fs.groups_train, strict=True)
    }
    for X in Recorder.fitted_on:
        _, counts = np.unique([train_rows[row.tobytes()] for row in X], return_counts=True)
        assert set(counts) == {5}
    with pytest.raises(ValueError, match="training rows"):
        run_sweep([plain], heads=["recorder"], groups=fs.groups_train[:-1])


def test_internal_search_heads_get_the_same_folds(make_feature_set, monkeypatch) -> None:
    seen: list = []

    class SelfSearching(Recorder):
        def __init__(self, shrink=0.0, fail=False, cv=None, scoring=None):
            super().__init__(shrink, fail)
            self.cv, self.scoring = cv, scoring

        def fit(self, X, y, sample_weight=None):
            seen.append((self.cv, self.scoring))
            super().fit(X, y)
            self.best_params_ = {"shrink": 0.0}
            self.best_score_ = 0.5
            self.best_index_ = 0
            self.n_splits_ = len(self.cv)
            scores = {f"split{k}_test_score": np.array([0.5]) for k in range(self.n_splits_)}
            self.cv_results_ = {
                "params": [{"shrink": 0.0}],
                "param_shrink": np.array([0.0]),
                "mean_test_score": np.array([0.5]),
                "std_test_score": np.array([0.0]),
                **scores,
            }
            self.best_estimator_ = Recorder().fit(X, y)
            return self

    _register(
        monkeypatch,
        "inner",
        build=lambda: Pipeline([("clf", SelfSearching())]),
        grid={},
        search="internal",
    )
    fs = _five_copies(make_feature_set("hard", class_sep=0.5, seed=2))
    (result,) = run_sweep([fs], heads=["inner"], cv=4, scoring="f1_macro")
    ((folds, scoring),) = seen
    assert scoring == "f1_macro" and len(folds) == 4
    for train, test in folds:
        assert not set(fs.groups_train[train]) & set(fs.groups_train[test])
    assert result.best_params == {"clf__shrink": 0.0} and result.cv_score == 0.5
    assert isinstance(result.estimator[-1], Recorder)  # the refit, parameters fixed


def _imbalanced(make_feature_set, replace_fs) -> FeatureSet:
    fs = make_feature_set("skewed", class_sep=1.0, seed=5)
    keep = (fs.y_train != 2) | (np.arange(len(fs.y_train)) % 6 == 0)  # c2: ~10 of 60 rows
    return replace_fs(fs, X_train=fs.X_train[keep], y_train=fs.y_train[keep])


#: scikit-learn's own searches equivalent to two registered heads.
REFERENCES = {
    "gaussian_nb": (
        Pipeline([("clf", GaussianNB())]),
        {"clf__var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]},
    ),
    "knn": (
        Pipeline(
            [
                ("scale", StandardScaler()),
                ("clf", KNeighborsClassifier(weights="distance", algorithm="brute")),
            ]
        ),
        {"clf__n_neighbors": [1, 5, 15], "clf__metric": ["euclidean", "cosine"]},
    ),
}


@pytest.mark.parametrize("scoring", ["balanced_accuracy", "f1_macro"])
def test_selection_scoring_is_used_for_the_search_and_the_order(
    make_feature_set, replace_fs, scoring: str
) -> None:
    fs = _imbalanced(make_feature_set, replace_fs)
    results = run_sweep([fs], heads=list(REFERENCES), cv=3, scoring=scoring, n_jobs=1)
    folds = [(np.asarray(a), np.asarray(b)) for a, b in _folds_of(fs, 3)]
    for r in results:
        assert r.scoring == scoring
        # scikit-learn's search with its scorer of that name gives the same CV score.
        estimator, grid = REFERENCES[r.head]
        search = GridSearchCV(estimator, grid, scoring=scoring, cv=folds)
        search.fit(fs.X_train, fs.y_train)
        assert r.cv_score == pytest.approx(search.best_score_)
    assert [r.cv_score for r in results] == sorted((r.cv_score for r in results), reverse=True)


def _folds_of(fs: FeatureSet, cv: int):
    from classifiers.folds import plan_folds

    return plan_folds(fs.X_train, fs.y_train, cv=cv, class_names=fs.class_names).splits


def test_imbalance_is_noted_by_the_stated_rule(make_feature_set, replace_fs, good) -> None:
    fs = _imbalanced(make_feature_set, replace_fs)
    counts = np.bincount(fs.y_train)
    assert counts.max() / counts.min() > 3
    (result,) = run_sweep([fs], heads=["gaussian_nb"], cv=3)
    (note,) = [n for n in result.notes if "imbalanced" in n]
    assert f"smallest 'c2' {counts.min()}" in note and "balanced_accuracy" in note
    (balanced,) = run_sweep([good], heads=["gaussian_nb"], cv=3)
    assert not any("imbalanced" in n for n in balanced.notes)


def test_balanced_class_weight_reaches_every_head_that_has_one(
    make_feature_set, replace_fs
) -> None:
    fs = _imbalanced(make_feature_set, replace_fs)
    heads = ["logreg", "linear_svm", "rbf_svm", "gaussian_nb", "knn"]
    results = {r.head: r for r in run_sweep([fs], heads=heads, cv=3, class_weight="balanced")}
    for name in ("logreg", "linear_svm", "rbf_svm"):
        assert results[name].estimator[-1].class_weight == "balanced"
        assert results[name].class_weight == "balanced"
    assert results["gaussian_nb"].class_weight == "balanced"
    # Balanced sample weights give naive Bayes equal class priors.
    np.testing.assert_allclose(results["gaussian_nb"].estimator[-1].class_prior_, 1 / 3, rtol=1e-6)
    assert results["knn"].class_weight is None
    assert any("not applied: knn has no class weights" in n for n in results["knn"].notes)
    # The balanced linear head predicts the rare class more often than the plain one.
    (plain,) = run_sweep([fs], heads=["logreg"], cv=3)
    rare = fs.X_test[fs.y_test == 2]
    assert (results["logreg"].estimator.predict(rare) == 2).sum() >= (
        plain.estimator.predict(rare) == 2
    ).sum()


def test_knn_on_sixteen_training_images_drops_grid_points_that_cannot_work(
    make_feature_set, replace_fs
) -> None:
    fs = make_feature_set("tiny", n_classes=2, class_sep=2.0)
    keep = np.concatenate([np.flatnonzero(fs.y_train == c)[:8] for c in (0, 1)])
    tiny = replace_fs(fs, X_train=fs.X_train[keep], y_train=fs.y_train[keep])
    (result,) = run_sweep([tiny], heads=["knn"], cv=5)
    assert result.best_params["clf__n_neighbors"] in (1, 5)
    assert any("n_neighbors [15] dropped" in n for n in result.notes)
    assert result.accuracy >= 0.8


def test_mlp_on_few_rows_runs_without_early_stopping(make_feature_set, replace_fs) -> None:
    fs = make_feature_set("tiny", n_classes=3, class_sep=2.0)
    keep = np.concatenate([np.flatnonzero(fs.y_train == c)[:6] for c in range(3)])
    tiny = replace_fs(fs, X_train=fs.X_train[keep], y_train=fs.y_train[keep])
    (result,) = run_sweep([tiny], heads=["mlp"], cv=3, use_grid=False)
    assert any("early stopping off" in n for n in result.notes)
    assert result.estimator[-1].early_stopping is False


def test_a_failing_head_is_recorded_and_the_others_go_on(
    good, replace_fs, monkeypatch, caplog
) -> None:
    _register(monkeypatch, "broken", build=lambda: Pipeline([("clf", Recorder(fail=True))]))
    with caplog.at_level(logging.DEBUG, logger="classifiers.sweep"):
        results = run_sweep([good], heads=["gaussian_nb", "broken", "knn"], cv=3, n_jobs=1)
    # One line for the failure; its traceback only at DEBUG (the command line's -vv).
    (warned,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned.getMessage() == "good / broken failed: RuntimeError: this head always fails"
    assert all("Traceback" not in r.getMessage() for r in caplog.records if r.levelno > 10)
    assert any("Traceback" in r.getMessage() for r in caplog.records if r.levelno == 10)
    assert isinstance(results, SweepResults)
    assert {r.head for r in results} == {"gaussian_nb", "knn"}
    (failure,) = results.failures
    assert isinstance(failure, HeadFailure)
    assert (failure.feature_set, failure.head) == ("good", "broken")
    assert failure.error == "RuntimeError: this head always fails"
    assert 'raise RuntimeError("this head always fails")' in failure.traceback
    # One pair that fails raises its own error, as it was raised (the caller records it).
    with pytest.raises(RuntimeError, match=r"^this head always fails$"):
        run_sweep([good], heads=["broken"], cv=3, n_jobs=1)
    with pytest.raises(RuntimeError, match=r"every head failed.*this head always fails"):
        run_sweep([good, replace_fs(good, name="other")], heads=["broken"], cv=3, n_jobs=1)


def test_a_choice_on_the_grids_edge_carries_a_note(good, recorder) -> None:
    notes = edge_notes({"clf__C": 100.0}, {"clf__C": [1.0, 10.0, 100.0]}, {})
    assert notes == ["C=100 is the largest value searched (1..100): the best may lie above it"]
    assert edge_notes({"clf__C": 10.0}, {"clf__C": [1.0, 10.0, 100.0]}, {}) == []
    assert edge_notes({"clf__m": "cosine"}, {"clf__m": ["cosine", "euclidean"]}, {}) == []
    # A natural limit is no edge: shrink=0 cannot go lower.
    assert (
        edge_notes({"clf__shrink": 0.0}, {"clf__shrink": [0.0, 0.5]}, {"clf__shrink": (0.0, None)})
        == []
    )
    (result,) = run_sweep([good], heads=["recorder"], cv=3, n_jobs=1)
    if result.best_params["clf__shrink"] == 0.9:
        assert any("largest value searched" in n for n in result.notes)
    else:
        assert not any("searched" in n for n in result.notes)


def test_linear_heads_report_their_chosen_regularisation(good) -> None:
    for r in run_sweep([good], heads=["logreg", "linear_svm"], cv=3):
        assert r.regularization == {"param": "clf__C", "value": r.best_params["clf__C"]}
        assert r.best_params["clf__C"] == r.estimator[-1].C
        searched = [p["params"]["clf__C"] for p in r.search]
        assert min(searched) == 1e-6 and max(searched) == 1e6
        assert r.cv_score == max(p["mean"] for p in r.search)
