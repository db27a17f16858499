"""The feature transforms keep scikit-learn's estimator contract and compute what they say."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers.transforms import TRANSFORMS, SignedPower, make_transform


@parametrize_with_checks([SignedPower(), SignedPower(alpha=0.25), SignedPower(alpha=1.0)])
def test_sklearn_contract(estimator, check) -> None:
    check(estimator)


def test_signed_power_values_signs_and_dtypes() -> None:
    X = np.array([[4.0, -9.0, 0.0], [0.25, 1.0, -0.01]], dtype=np.float32)
    out = SignedPower(0.5).fit_transform(X)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[2.0, -3.0, 0.0], [0.5, 1.0, -0.1]], rtol=1e-6)
    assert X[0, 1] == -9.0  # the input is not changed
    assert np.array_equal(SignedPower(1.0).fit_transform(X), X)
    ints = SignedPower(0.5).fit_transform(np.array([[4, -16]]))
    assert ints.dtype == np.float64 and ints.tolist() == [[2.0, -4.0]]


def test_signed_power_keeps_sparse_input_sparse() -> None:
    X = sp.random(20, 30, density=0.2, format="csr", random_state=0) - 0.5 * sp.eye(20, 30)
    X = sp.csr_matrix(X)
    out = SignedPower(0.5).fit_transform(X)
    assert sp.issparse(out) and out.nnz == X.nnz
    dense = X.toarray()
    np.testing.assert_allclose(out.toarray(), np.sign(dense) * np.sqrt(np.abs(dense)))


@pytest.mark.parametrize("alpha", [0, -1, 1.5, "0.5", True, None])
def test_bad_alpha_is_refused_at_fit(alpha) -> None:
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\]"):
        SignedPower(alpha).fit(np.ones((2, 2)))


def test_named_transforms() -> None:
    X = np.array([[3.0, 4.0], [0.0, 9.0]])
    assert make_transform("none") == "passthrough"
    np.testing.assert_allclose(make_transform("l2").fit_transform(X), [[0.6, 0.8], [0.0, 1.0]])
    np.testing.assert_allclose(make_transform("power").fit_transform(X), np.sqrt(X))
    both = make_transform("power+l2").fit_transform(X)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0)
    np.testing.assert_allclose(both[0], np.sqrt([3, 4]) / np.sqrt(7))
    assert make_transform("power") is not make_transform("power")  # fresh each time
    with pytest.raises(ValueError, match="none, l2, power, power\\+l2"):
        make_transform("sqrt")
    assert set(TRANSFORMS) == {"none", "l2", "power", "power+l2"}


def test_a_head_grid_can_search_over_transforms() -> None:
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(size=(60, 5))) ** 3  # heavy-tailed, non-negative like ReLU features
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    head = Pipeline([("transform", "passthrough"), ("clf", LogisticRegression())])
    grid = GridSearchCV(head, {"transform": [make_transform(n) for n in TRANSFORMS]}, cv=3).fit(
        X, y
    )
    assert len(grid.cv_results_["params"]) == 4
    assert clone(grid.best_estimator_).get_params()["transform"] is not None
