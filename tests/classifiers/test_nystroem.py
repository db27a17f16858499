"""The RBF SVM's approximation at many rows (classifiers.nystroem, and RBFSVMHeadCV's switch)."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_circles
from sklearn.kernel_approximation import Nystroem
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import classifiers.kernel as kernel
from classifiers.folds import plan_folds
from classifiers.heads import get_head
from classifiers.kernel import RBFSVMHead, RBFSVMHeadCV
from classifiers.linear import LinearHead, LinearHeadCV
from classifiers.nystroem import RBFNystroem
from classifiers.rbf import resolve_gamma
from classifiers.search import search_head


@parametrize_with_checks([RBFNystroem(n_components=20)])
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_map_is_scikit_learns_nystroem(dtype) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 16)).astype(dtype)
    ours = RBFNystroem(gamma=0.05, n_components=64, random_state=0, unit_variance=False)
    ref = Nystroem(gamma=0.05, n_components=64, random_state=0).fit(X)
    np.testing.assert_array_equal(ours.fit(X).components_, ref.components_)
    found = ours.transform(X)
    assert found.dtype == dtype and ours.scale_ == 1.0
    np.testing.assert_allclose(found, ref.transform(X), atol=1e-4)
    # unit_variance: the same map divided by one factor, after which the fitted rows' columns
    # have a mean variance of 1; fit_transform maps them as fit then transform.
    scaled = RBFNystroem(gamma=0.05, n_components=64, random_state=0)
    mapped = scaled.fit_transform(X)
    factor = np.sqrt(np.mean(np.var(ref.transform(X), axis=0)))
    assert scaled.scale_ == pytest.approx(factor, rel=1e-4)
    np.testing.assert_allclose(mapped, ref.transform(X) / factor, atol=1e-3)
    np.testing.assert_allclose(scaled.transform(X), mapped, rtol=1e-6, atol=1e-6)
    assert np.mean(np.var(mapped, axis=0, dtype=np.float64)) == pytest.approx(1.0, rel=1e-4)
    poly = RBFNystroem(
        kernel="poly", degree=2, n_components=32, random_state=0, unit_variance=False
    ).fit(X)
    ref_poly = Nystroem(kernel="poly", degree=2, n_components=32, random_state=0).fit(X)
    np.testing.assert_array_equal(poly.transform(X), ref_poly.transform(X))


def _circles(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Two rings: no linear model beats a coin here; an RBF kernel separates them."""
    X, y = make_circles(n, noise=0.08, factor=0.5, random_state=0)
    return X.astype(np.float32), y


def test_approximation_is_scaler_nystroem_and_linear_svm_at_the_chosen_c() -> None:
    X, y = _circles()
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X[:450], y[:450]))
    head = RBFSVMHeadCV(approximate=True, n_components=50, cv=folds).fit(X[:450], y[:450])
    assert head.approximated_
    C = head.best_params_["C"]
    scaler = StandardScaler().fit(X[:450])
    Z, Z_test = scaler.transform(X[:450]), scaler.transform(X[450:])
    ref_map = Nystroem(gamma=resolve_gamma("scale", Z), n_components=50, random_state=0).fit(Z)
    factor = np.sqrt(np.mean(np.var(ref_map.transform(Z), axis=0)))
    expected = LinearHead("squared_hinge", C=C).fit(ref_map.transform(Z) / factor, y[:450])
    expected_test = ref_map.transform(Z_test) / factor
    # Equal up to the solver's tolerance (the refit starts from the folds' mean solution) and
    # the map's float32 products: decision values of size 1-2 within 0.03.
    np.testing.assert_allclose(
        head.decision_function(X[450:]), expected.decision_function(expected_test), atol=0.03
    )
    np.testing.assert_array_equal(head.predict(X[450:]), expected.predict(expected_test))
    # Its search is the batched linear SVM's on the mapped rows, the same folds.
    mapped = head.best_estimator_[:-1].transform(X[:450])
    search = LinearHeadCV("squared_hinge", cv=folds).fit(mapped, y[:450])
    assert head.best_params_ == search.best_params_
    assert head.best_score_ == search.best_score_
    # A kernel method: the rings that defeat a linear model are separated.
    assert (head.predict(X[450:]) == y[450:]).mean() >= 0.95
    linear = LinearHeadCV("squared_hinge", cv=folds).fit(X[:450], y[:450])
    assert (linear.predict(X[450:]) == y[450:]).mean() <= 0.75
    # The refit is saved and loaded like any head.
    buffer = io.BytesIO()
    joblib.dump(head, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).predict(X), head.predict(X))


def test_auto_approximates_past_max_exact_rows_only() -> None:
    X, y = _circles(300)
    exact = RBFSVMHeadCV(cv=3, max_exact_rows=300, n_components=40).fit(X, y)
    assert not exact.approximated_ and exact.search_notes_ == []
    assert isinstance(exact.best_estimator_, RBFSVMHead)
    approx = RBFSVMHeadCV(cv=3, max_exact_rows=299, n_components=40).fit(X, y)
    assert approx.approximated_
    assert isinstance(approx.best_estimator_, Pipeline)
    assert "approximated on 300 training rows" in approx.search_notes_[0]
    assert "40 landmarks" in approx.search_notes_[0]
    with pytest.raises(ValueError, match="approximate must be"):
        RBFSVMHeadCV(approximate="sometimes").fit(X, y)


def test_kernels_larger_than_the_free_memory_are_approximated_unless_exact_is_asked(
    monkeypatch,
) -> None:
    X, y = _circles(300)
    monkeypatch.setattr(kernel, "available_bytes", lambda: 8 * 300**2)  # one kernel's bytes
    head = RBFSVMHeadCV(cv=3, n_components=40).fit(X, y)
    assert head.approximated_
    with pytest.raises(MemoryError, match="leave it out"):
        RBFSVMHeadCV(cv=3, approximate=False).fit(X, y)


def test_one_c_fits_that_c_and_a_grid_searches_the_linear_path() -> None:
    X, y = _circles(300)
    one = RBFSVMHeadCV(Cs=(0.5,), cv=3, approximate=True, n_components=40).fit(X, y)
    assert list(one.cv_results_["param_C"]) == [0.5]
    path = RBFSVMHeadCV(cv=3, approximate=True, n_components=40).fit(X, y)
    assert len(path.cv_results_["param_C"]) >= 13  # 1e-6 .. 1e6 and its refinement


def test_the_sweep_notes_say_the_head_was_approximated(monkeypatch) -> None:
    X, y = _circles(300)
    monkeypatch.setattr(kernel, "available_bytes", lambda: 8 * 300**2)
    plan = plan_folds(X, y, cv=3, class_names=["inner", "outer"])
    outcome = search_head(
        get_head("rbf_svm"),
        X,
        y,
        plan,
        use_grid=True,
        scoring="accuracy",
        class_weight=None,
        n_jobs=1,
        random_state=0,
    )
    assert any("rbf_svm approximated" in note for note in outcome.notes)
    assert outcome.estimator.predict(X).shape == y.shape
