"""The RBF arithmetic shared by the RBF heads (classifiers.rbf)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import rbf_kernel as sklearn_rbf

from classifiers.rbf import rbf_kernel, resolve_gamma, standardize, standardizer


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_is_scikit_learns_in_either_precision(dtype) -> None:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(700, 12)).astype(np.float32)  # more rows than one block
    B = rng.normal(size=(90, 12)).astype(np.float32)
    expected = sklearn_rbf(A.astype(np.float64), B.astype(np.float64), gamma=0.05)
    found = rbf_kernel(A, B, 0.05, dtype=dtype)
    assert found.dtype == dtype
    np.testing.assert_allclose(found, expected, atol=1e-5)
    square = rbf_kernel(A, None, 0.05)
    np.testing.assert_allclose(square, square.T, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(square[:512, 512:], square[512:, :512].T)  # mirrored
    np.testing.assert_allclose(square, sklearn_rbf(A.astype(np.float64), gamma=0.05), atol=1e-5)


def test_scale_gamma_is_svcs_on_standardised_rows() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(3.0, 2.0, size=(200, 7))
    mean, scale = standardizer(X)
    Z = standardize(X, mean, scale)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-5)
    assert resolve_gamma("scale", Z) == pytest.approx(1.0 / (7 * Z.astype(np.float64).var()))
    assert resolve_gamma(0.5, Z) == 0.5
    with pytest.raises(ValueError, match="gamma must be"):
        resolve_gamma(-1, Z)
