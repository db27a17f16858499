"""LabelledClassifier: a scikit-learn classifier that predicts names with an index-trained
inner classifier; it passes scikit-learn's estimator checks and survives joblib."""

from __future__ import annotations

import io
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers.heads import get_head
from classifiers.labelled import LabelledClassifier

NAMES = ["ant", "bee", "wasp"]


@parametrize_with_checks([LabelledClassifier()])
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=120, n_features=8, n_informative=5, n_classes=3, random_state=0
    )
    return X, y


def test_from_fitted_predicts_the_names_of_the_indices(data) -> None:
    X, y = data
    inner = get_head("logreg").build().fit(X, y)  # a head's Pipeline, trained on indices
    wrapped = LabelledClassifier.from_fitted(inner, NAMES)
    np.testing.assert_array_equal(wrapped.predict(X), np.array(NAMES)[inner.predict(X)])
    np.testing.assert_array_equal(wrapped.predict_proba(X), inner.predict_proba(X))
    assert list(wrapped.classes_) == NAMES and wrapped.n_features_in_ == 8


def test_fit_takes_names_and_keeps_the_given_order(data) -> None:
    X, y = data
    names = np.array(["wasp", "ant", "bee"])  # not sorted: index i stands for names[i]
    model = LabelledClassifier(LogisticRegression(max_iter=500), class_names=names).fit(X, names[y])
    assert list(model.classes_) == list(names)
    assert list(model.estimator_.classes_) == [0, 1, 2]
    plain = LogisticRegression(max_iter=500).fit(X, y)  # the same model on the indices
    np.testing.assert_array_equal(model.predict(X), names[plain.predict(X)])


def test_a_class_missing_from_training_keeps_the_columns_aligned(data) -> None:
    X, y = data
    keep = y != 1
    model = LabelledClassifier.from_fitted(LogisticRegression().fit(X[keep], y[keep]), NAMES)
    assert list(model.classes_) == ["ant", "wasp"]
    assert model.predict_proba(X).shape == (len(X), 2)
    assert set(model.predict(X)) <= {"ant", "wasp"}


def test_an_unknown_label_is_an_error(data) -> None:
    X, y = data
    with pytest.raises(ValueError, match="not in class_names"):
        LabelledClassifier(class_names=["a", "b"]).fit(X, np.array(NAMES)[y])


def test_from_fitted_refuses_unfitted_or_foreign_classifiers(data) -> None:
    X, y = data
    with pytest.raises(NotFittedError):
        LabelledClassifier.from_fitted(LogisticRegression(), NAMES)
    with pytest.raises(ValueError, match="not indices"):
        LabelledClassifier.from_fitted(LogisticRegression().fit(X, y + 5), NAMES)


def test_methods_follow_the_inner_classifier(data) -> None:
    X, y = data
    svm = LabelledClassifier.from_fitted(LinearSVC().fit(X, y), NAMES)
    assert not hasattr(svm, "predict_proba")  # LinearSVC has none
    assert svm.decision_function(X).shape == (len(X), 3)


def test_clone_and_joblib_round_trip(data, tmp_path: Path) -> None:
    X, y = data
    model = LabelledClassifier.from_fitted(LogisticRegression().fit(X, y), NAMES)
    fresh = clone(model)
    assert not hasattr(fresh, "estimator_") and fresh.class_names == NAMES
    buf = io.BytesIO()
    joblib.dump(model, buf)
    again = joblib.load(io.BytesIO(buf.getvalue()))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
