"""Calibrated probabilities for the SVM heads (classifiers.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

from classifiers.calibration import (
    ScoreCalibrated,
    TemperatureScaling,
    needs_calibration,
    with_probabilities,
)
from classifiers.heads import get_head
from featurestore.headfile import load_head, save_head


def _data(n_classes: int) -> tuple[np.ndarray, ...]:
    X, y = make_classification(
        n_samples=400,
        n_features=30,
        n_informative=10,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=1.0,
        flip_y=0.05,
        random_state=0,
    )
    return tuple(train_test_split(X, y, test_size=0.3, stratify=y, random_state=0))


@pytest.mark.parametrize("head", ["linear_svm", "rbf_svm"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_calibrated_head_keeps_predictions_and_gives_useful_probabilities(
    head: str, n_classes: int
) -> None:
    X_tr, X_te, y_tr, y_te = _data(n_classes)
    fitted = get_head(head).build().fit(X_tr, y_tr)
    assert needs_calibration(fitted)
    calibrated = with_probabilities(fitted, X_tr, y_tr, cv=5)
    assert isinstance(calibrated, ScoreCalibrated)
    assert calibrated.estimator_ is fitted  # the sweep's head itself, not a refit
    np.testing.assert_array_equal(calibrated.predict(X_te), fitted.predict(X_te))
    proba = calibrated.predict_proba(X_te)
    assert proba.shape == (len(X_te), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # Far better than knowing nothing (uniform), and confident where the head is right.
    assert log_loss(y_te, proba) < 0.75 * np.log(n_classes)
    right = calibrated.predict(X_te) == y_te
    top = proba.max(axis=1)
    assert top[right].mean() > top[~right].mean()


def test_heads_with_probabilities_are_returned_as_they_are() -> None:
    X_tr, _, y_tr, _ = _data(2)
    fitted = get_head("logreg").build().fit(X_tr, y_tr)
    assert not needs_calibration(fitted)
    assert with_probabilities(fitted, X_tr, y_tr) is fitted


def test_calibrated_head_survives_save_and_load(tmp_path) -> None:
    X_tr, X_te, y_tr, _ = _data(3)
    calibrated = with_probabilities(get_head("linear_svm").build().fit(X_tr, y_tr), X_tr, y_tr)
    path = save_head(calibrated, tmp_path / "head.joblib", metadata={"class_names": ["a"]})
    loaded, _ = load_head(path)
    np.testing.assert_array_equal(loaded.predict_proba(X_te), calibrated.predict_proba(X_te))


def test_calibration_needs_two_rows_per_class() -> None:
    X = np.random.default_rng(0).normal(size=(5, 3))
    y = np.array([0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="at least 2 training rows"):
        ScoreCalibrated(get_head("linear_svm").build()).fit(X, y)


def test_scores_from_the_search_are_used_instead_of_fitting_the_folds_again(monkeypatch) -> None:
    """The sweep passes the linear SVM's out-of-fold scores (``cv_decision_``): the calibrator
    is fitted on them, and the head is not fitted on folds again."""
    X_tr, _, y_tr, _ = _data(3)
    searched = get_head("linear_svm").build().fit(X_tr, y_tr)
    scores = searched[-1].cv_decision_
    assert scores.shape == (len(y_tr), 3)

    def refuse(*args, **kwargs):
        raise AssertionError("the folds were fitted again")

    monkeypatch.setattr("classifiers.calibration.cross_val_predict", refuse)
    calibrated = with_probabilities(searched, X_tr, y_tr, scores=scores)
    assert calibrated.estimator_ is searched
    # The calibrator is the one those scores give.
    expected = LogisticRegression(max_iter=1000).fit(scores.astype(np.float64), y_tr)
    np.testing.assert_array_equal(calibrated.calibrator_.coef_, expected.coef_)
    with pytest.raises(ValueError, match="rows of scores"):
        with_probabilities(searched, X_tr, y_tr, scores=scores[:-1])


def test_temperature_scaling_recovers_the_scale_the_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(0)
    S = rng.normal(size=(4000, 20))
    P = np.exp(2.5 * S) / np.exp(2.5 * S).sum(axis=1, keepdims=True)
    names = np.array([f"c{i:02d}" for i in range(20)])  # labels, not column numbers
    y = names[[rng.choice(20, p=p) for p in P]]
    fitted = TemperatureScaling().fit(S, y)
    assert fitted.scale_ == pytest.approx(2.5, rel=0.1)
    proba = fitted.predict_proba(S)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert log_loss(y, proba, labels=fitted.classes_) < log_loss(y, np.full_like(P, 1 / 20))
    np.testing.assert_array_equal(fitted.predict(S), names[S.argmax(axis=1)])
    with pytest.raises(ValueError, match="scores of shape"):
        TemperatureScaling().fit(S[:, :5], y)


def test_many_classes_of_scores_get_temperature_scaling_and_the_head_keeps_its_answers(
    monkeypatch, tmp_path
) -> None:
    """Past the work budget (rows x classes^2) the calibrator is one temperature: the
    regression's weight per pair of classes grows with the classes squared."""
    X_tr, X_te, y_tr, _ = _data(3)
    searched = get_head("linear_svm").build().fit(X_tr, y_tr)
    scores = searched[-1].cv_decision_
    below = with_probabilities(searched, X_tr, y_tr, scores=scores)
    assert isinstance(below.calibrator_, LogisticRegression)  # 280 x 3^2 is within it
    monkeypatch.setattr("classifiers.calibration.MATRIX_SCALING_MAX_WORK", len(y_tr) * 9 - 1)
    past = with_probabilities(searched, X_tr, y_tr, scores=scores)
    assert isinstance(past.calibrator_, TemperatureScaling) and past.calibrator_.scale_ > 0
    np.testing.assert_array_equal(past.predict(X_te), searched.predict(X_te))
    proba = past.predict_proba(X_te)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(proba.argmax(axis=1), searched.decision_function(X_te).argmax(1))
    path = save_head(past, tmp_path / "head.joblib", metadata={"class_names": ["a"]})
    np.testing.assert_array_equal(load_head(path)[0].predict_proba(X_te), proba)
    X2, _, y2, _ = _data(2)  # two classes: one score column, always the logistic regression
    binary = get_head("linear_svm").build().fit(X2, y2)
    monkeypatch.setattr("classifiers.calibration.MATRIX_SCALING_MAX_WORK", 0)
    two = with_probabilities(binary, X2, y2, scores=binary[-1].cv_decision_)
    assert isinstance(two.calibrator_, LogisticRegression)
