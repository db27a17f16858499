"""Tests of the sweep (selection on the training split only) and of the test-split metrics."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_info

from classifiers import heads as heads_module
from classifiers.heads import HeadSpec
from classifiers.metrics import evaluate, scores_for
from classifiers.sweep import FeatureSet, SweepResult, rank_key, run_sweep

FAST = ["gaussian_nb", "logreg", "knn"]


def test_sweep_covers_every_pair_and_ranks_best_first(good: FeatureSet, make_feature_set) -> None:
    noisy = make_feature_set("noisy", class_sep=0.3, seed=1)
    results = run_sweep([noisy, good], heads=FAST, cv=3)
    assert len(results) == 6
    assert {(r.feature_set, r.head) for r in results} == {
        (fs, h) for fs in ("good", "noisy") for h in FAST
    }
    assert results == sorted(results, key=rank_key)
    # Ordered by CV score (training split only), no longer by test accuracy (issue B).
    cv_scores = [r.cv_score for r in results]
    assert cv_scores == sorted(cv_scores, reverse=True)
    by_set = {fs: [r for r in results if r.feature_set == fs] for fs in ("good", "noisy")}
    assert min(r.accuracy for r in by_set["good"]) >= 0.9
    assert max(r.accuracy for r in by_set["noisy"]) < min(r.accuracy for r in by_set["good"])
    for r in results:
        assert isinstance(r, SweepResult)
        assert (r.n_train, r.n_test, r.n_features) == (180, 60, 20)
        assert r.cv_folds == 3 and r.cv_note is None
        assert r.fit_seconds > 0 and r.predict_seconds > 0
        spec = heads_module.get_head(r.head)
        # The chosen point is one of the points searched (the head's own search or its grid).
        assert r.best_params in [point["params"] for point in r.search]
        if spec.search == "grid":
            assert r.best_params.keys() == spec.grid.keys()
            assert all(r.best_params[k] in spec.grid[k] for k in spec.grid)
        assert r.cv_score == pytest.approx(np.mean(r.cv_fold_scores))
        assert r.cv_std == pytest.approx(np.std(r.cv_fold_scores))
        fs = good if r.feature_set == "good" else noisy
        # The stored evaluation is the refitted best estimator on the test split.
        pred = r.estimator.predict(fs.X_test)
        assert r.accuracy == pytest.approx(accuracy_score(fs.y_test, pred))
        assert r.provenance == fs.provenance


class SpyCentroid(ClassifierMixin, BaseEstimator):
    """Nearest shrunk centroid that records every array it is fitted on."""

    fitted_on: ClassVar[list[np.ndarray]] = []
    threads: ClassVar[list[int]] = []

    def __init__(self, shrink: float = 0.0, random_state: int | None = None) -> None:
        self.shrink = shrink
        self.random_state = random_state

    def fit(self, X, y):
        type(self).fitted_on.append(np.array(X, copy=True))
        type(self).threads.append(max(p["num_threads"] for p in threadpool_info()))
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


@pytest.fixture
def spy_head(monkeypatch):
    SpyCentroid.fitted_on.clear()
    SpyCentroid.threads.clear()
    spec = HeadSpec(
        name="spy",
        description="records its training data",
        build=lambda: Pipeline([("clf", SpyCentroid())]),
        grid={"clf__shrink": [0.0, 0.5, 0.9]},
    )
    monkeypatch.setitem(heads_module.HEADS, "spy", spec)
    return spec


def test_test_rows_never_reach_fit(good: FeatureSet, spy_head) -> None:
    # n_jobs=1: the spy records its fits in this process.
    (result,) = run_sweep([good], heads=["spy"], cv=4, random_state=3, n_jobs=1)
    # 3 grid points x 4 folds, plus the refit on the whole training split.
    assert len(SpyCentroid.fitted_on) == 3 * 4 + 1
    train_rows = {row.tobytes() for row in good.X_train}
    test_rows = {row.tobytes() for row in good.X_test}
    for X in SpyCentroid.fitted_on:
        rows = {row.tobytes() for row in X}
        assert rows <= train_rows
        assert not rows & test_rows
    np.testing.assert_array_equal(SpyCentroid.fitted_on[-1], good.X_train)
    assert result.estimator[-1].random_state == 3  # the sweep seed reaches the head
    assert set(SpyCentroid.threads) == {1}  # BLAS/OpenMP pools limited while fitting


def test_grid_search_runs_in_this_process_by_default(good: FeatureSet, spy_head) -> None:
    """Worker processes cost seconds to start; the grid heads fit in milliseconds."""
    run_sweep([good], heads=["spy"], cv=3)
    assert len(SpyCentroid.fitted_on) == 3 * 3 + 1  # every fit seen here, none in a worker


def test_blas_threads_none_leaves_the_pools_alone(good: FeatureSet, spy_head) -> None:
    outside = max(p["num_threads"] for p in threadpool_info())
    run_sweep([good], heads=["spy"], cv=2, blas_threads=None, n_jobs=1)
    assert set(SpyCentroid.threads) == {outside}


@pytest.mark.parametrize("head", ["spy", "logreg", "knn"])
def test_selection_ignores_the_test_split(
    replace_fs, good: FeatureSet, spy_head, head: str
) -> None:
    (clean,) = run_sweep([good], heads=[head], cv=3)
    rng = np.random.default_rng(0)
    corrupted = replace_fs(
        good,
        X_test=rng.normal(size=good.X_test.shape).astype(np.float32),
        y_test=rng.permutation(good.y_test),
    )
    (dirty,) = run_sweep([corrupted], heads=[head], cv=3)
    assert dirty.cv_score == clean.cv_score
    assert dirty.best_params == clean.best_params
    np.testing.assert_array_equal(
        dirty.estimator.predict(good.X_test), clean.estimator.predict(good.X_test)
    )
    # ...while the test split really is what gets evaluated.
    assert clean.accuracy >= 0.85
    assert dirty.accuracy < clean.accuracy - 0.3


def test_folds_shrink_for_small_classes_and_say_so(replace_fs, good: FeatureSet) -> None:
    keep = np.ones(len(good.y_train), dtype=bool)
    keep[np.flatnonzero(good.y_train == 2)[3:]] = False  # class c2 keeps 3 training items
    small = replace_fs(good, X_train=good.X_train[keep], y_train=good.y_train[keep])
    (result,) = run_sweep([small], heads=["gaussian_nb"], cv=5)
    assert result.cv_folds == 3
    assert "reduced from 5 to 3" in result.cv_note and "'c2'" in result.cv_note


def test_a_class_with_one_training_item_is_refused_before_any_fit(
    replace_fs, good, spy_head
) -> None:
    keep = np.ones(len(good.y_train), dtype=bool)
    keep[np.flatnonzero(good.y_train == 1)[1:]] = False
    tiny = replace_fs(good, name="tiny", X_train=good.X_train[keep], y_train=good.y_train[keep])
    with pytest.raises(ValueError, match="class 'c1' has 1 training item"):
        run_sweep([good, tiny], heads=["spy"])
    assert SpyCentroid.fitted_on == []  # validated up front, nothing fitted


def test_use_grid_false_cross_validates_the_defaults(good: FeatureSet) -> None:
    (result,) = run_sweep([good], heads=["logreg"], cv=3, use_grid=False)
    # The linear heads report the C they used (LogisticRegression's default without a search).
    assert result.best_params == {"clf__C": 1.0}
    assert [point["params"] for point in result.search] == [{"clf__C": 1.0}]
    assert 0.85 <= result.cv_score <= 1.0


def test_sweep_is_deterministic_and_reports_progress(good: FeatureSet) -> None:
    lines: list[str] = []
    first = run_sweep([good], heads=["knn", "gaussian_nb"], cv=3, progress=lines.append)
    second = run_sweep([good], heads=["knn", "gaussian_nb"], cv=3)

    # Every cell is the same; the order of results whose CV score and spread tie exactly
    # follows their fit time (rank_key), which the clock decides, so cells are compared by name.
    def cells(results):
        return {r.head: (r.cv_score, r.cv_std, r.best_params, r.accuracy) for r in results}

    assert cells(first) == cells(second)
    assert len(lines) == 4 and lines[0].startswith("[1/2]")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": ["nope"]}, "unknown head 'nope'"),
        ({"heads": []}, "heads is empty"),
        ({"cv": 1}, "cv must be an integer >= 2"),
        ({"blas_threads": 0}, "blas_threads must be None or an integer >= 1"),
    ],
)
def test_bad_arguments_are_rejected(good: FeatureSet, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        run_sweep([good], **kwargs)


def test_duplicate_and_missing_feature_sets_are_rejected(good: FeatureSet) -> None:
    with pytest.raises(ValueError, match="unique"):
        run_sweep([good, good], heads=["gaussian_nb"])
    with pytest.raises(ValueError, match="empty"):
        run_sweep([], heads=["gaussian_nb"])


def test_feature_set_validates_its_arrays(replace_fs, good: FeatureSet) -> None:
    with pytest.raises(ValueError, match="one label per row"):
        replace_fs(good, y_train=good.y_train[:-1])
    with pytest.raises(ValueError, match="X_train has 20 features but X_test has 19"):
        replace_fs(good, X_test=good.X_test[:, :19])
    with pytest.raises(ValueError, match="integer class indices"):
        replace_fs(good, y_test=good.y_test.astype(float))
    with pytest.raises(ValueError, match=r"values must be in 0\.\.2"):
        replace_fs(good, y_test=good.y_test + 1)


@pytest.mark.parametrize("head", ["logreg", "linear_svm"])
def test_evaluate_matches_scikit_learn(good: FeatureSet, head: str) -> None:
    estimator = heads_module.get_head(head).build().fit(good.X_train, good.y_train)
    ev = evaluate(estimator, good.X_test, good.y_test, class_names=good.class_names)
    pred = estimator.predict(good.X_test)
    s = ev.summary
    assert s["accuracy"] == pytest.approx(accuracy_score(good.y_test, pred))
    assert s["macro_f1"] == pytest.approx(f1_score(good.y_test, pred, average="macro"))
    assert s["roc_auc_average"] == "macro-ovr"
    scores = scores_for(estimator, good.X_test)
    per_class = [roc_auc_score(good.y_test == c, scores[:, c]) for c in range(3)]
    assert s["roc_auc"] == pytest.approx(np.mean(per_class))
    if head == "logreg":  # probabilities: scikit-learn's own multiclass OvR must agree
        assert s["roc_auc"] == pytest.approx(
            roc_auc_score(good.y_test, scores, multi_class="ovr", average="macro")
        )
    matrix = np.array(s["confusion_matrix"])
    assert matrix.sum() == len(good.y_test) and np.trace(matrix) == (pred == good.y_test).sum()
    assert {k: v["support"] for k, v in s["per_class"].items()} == {
        f"c{c}": int((good.y_test == c).sum()) for c in range(3)
    }
    np.testing.assert_array_equal(ev.y_pred, pred)


def test_evaluate_binary_and_uncomputable_auc(make_feature_set) -> None:
    fs = make_feature_set("bin", n_classes=2)
    estimator = heads_module.get_head("rbf_svm").build().fit(fs.X_train, fs.y_train)
    ev = evaluate(estimator, fs.X_test, fs.y_test, class_names=fs.class_names)
    assert ev.summary["score_kind"] == "decision_function"
    assert ev.summary["roc_auc"] == pytest.approx(
        roc_auc_score(fs.y_test, estimator.decision_function(fs.X_test))
    )
    only_ones = fs.y_test == 1
    single = evaluate(
        estimator, fs.X_test[only_ones], fs.y_test[only_ones], class_names=fs.class_names
    )
    assert single.summary["roc_auc"] is None
    assert "only one of the two classes" in single.summary["roc_auc_reason"]
    with pytest.raises(ValueError, match=r"indices in 0\.\.1"):
        evaluate(estimator, fs.X_test, fs.y_test + 5, class_names=fs.class_names)
