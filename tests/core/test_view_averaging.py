"""ViewAveraged: a head's scores averaged over each image's views (test-time averaging)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from featurestore.views import ViewAveraged, average_views


class Scores:
    """A fitted 'head' whose decision value of class c on a row is the row's column c."""

    classes_ = np.array(["ant", "bee", "wasp"])

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=float)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.asarray(X).argmax(axis=1)]


class Binary(Scores):
    classes_ = np.array([3, 7])

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=float)[:, 0]


class Indexed(Scores):
    classes_ = np.array([0, 1, 2])  # as the sweep's heads: class indices


class VotesOnly:
    classes_ = np.array([0, 1])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X)[:, 0] > 0).astype(int)


def test_the_mean_of_the_views_decides_not_the_identity_view() -> None:
    # image 0: the identity view says ant, the other two views say bee strongly
    X = np.array(
        [
            [[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]],
            [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]],
        ]
    )
    avg = ViewAveraged(Scores())
    assert np.allclose(avg.decision_function(X), [[1 / 3, 2, 0], [5 / 3, 0, 2 / 3]])
    assert avg.predict(X).tolist() == ["bee", "ant"]
    assert Scores().predict(X[:, 0]).tolist() == ["ant", "wasp"]  # identity view alone
    # the same as the library's key-based helper over image-major rows
    means, keys = average_views(X.reshape(6, 3), ["a"] * 3 + ["b"] * 3)
    assert keys == ["a", "b"] and np.allclose(means, avg.decision_function(X))


def test_binary_decision_values_positive_means_the_second_class() -> None:
    X = np.array([[[1.0], [-3.0]], [[-1.0], [4.0]]])
    assert ViewAveraged(Binary()).predict(X).tolist() == [3, 7]


def test_a_head_with_only_predict_takes_the_most_frequent_view_vote() -> None:
    X = np.array([[[1.0], [-1.0], [-2.0]], [[1.0], [1.0], [-1.0]], [[1.0], [-1.0], [0.5]]])
    assert ViewAveraged(VotesOnly()).predict(X).tolist() == [0, 1, 1]


def test_one_view_predicts_as_the_head_itself() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    for head in (LogisticRegression().fit(X, y), KNeighborsClassifier(3).fit(X, y)):
        avg = ViewAveraged(head)
        assert np.array_equal(avg.predict(X[:, None, :]), head.predict(X))
        assert np.allclose(avg.predict_proba(X[:, None, :]), head.predict_proba(X))


def test_input_must_be_images_by_views_by_features() -> None:
    with pytest.raises(ValueError, match="images, views, features"):
        ViewAveraged(Scores()).predict(np.zeros((4, 3)))


def test_averages_exist_only_where_the_head_has_them() -> None:
    """A head without probabilities (a linear SVM) gives an average without them, so
    ``evaluate`` scores its ROC by decision values (it raised AttributeError in a views
    sweep of the SVMs)."""
    from classifiers.metrics import evaluate

    avg = ViewAveraged(Indexed())
    assert hasattr(avg, "decision_function") and not hasattr(avg, "predict_proba")
    assert not hasattr(ViewAveraged(VotesOnly()), "decision_function")
    X = np.random.default_rng(0).normal(size=(30, 2, 3))
    metrics = evaluate(avg, X, avg.predict(X), class_names=["a", "b", "c"])
    assert metrics.summary["accuracy"] == 1.0 and 0.5 < metrics.summary["roc_auc"] <= 1.0
    restored = pickle.loads(pickle.dumps(avg))
    np.testing.assert_array_equal(restored.decision_function(X), avg.decision_function(X))
