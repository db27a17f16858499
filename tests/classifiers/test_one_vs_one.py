"""libsvm's one-vs-one votes and values as matrix products (classifiers.one_vs_one)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import SVC

from classifiers.one_vs_one import OneVsOne
from classifiers.rbf import rbf_kernel


@pytest.mark.parametrize("n_classes", [2, 3, 7])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_one_vs_one_products_give_libsvms_votes_and_values(
    problem, n_classes: int, class_weight
) -> None:
    """Predictions and decision values as matrix products equal libsvm's own, from a kernel
    whose columns are every training row (the search) or the support vectors only (a head)."""
    X, y = problem(n_classes, class_sep=1.5, n_samples=400)
    X = X.astype(np.float32)
    K_train, K_test = rbf_kernel(X[:300], X[:300], 0.05), rbf_kernel(X[300:], X[:300], 0.05)
    svc = SVC(kernel="precomputed", C=5.0, class_weight=class_weight).fit(K_train, y[:300])
    assert 0 < len(svc.support_) < 300  # some rows are not support vectors
    every_row = OneVsOne(svc, columns=svc.support_)
    support_only = OneVsOne(svc)
    expected = svc.predict(K_test)
    np.testing.assert_array_equal(svc.classes_[every_row.predict(K_test)], expected)
    np.testing.assert_array_equal(
        svc.classes_[support_only.predict(K_test[:, svc.support_])], expected
    )
    np.testing.assert_allclose(
        every_row.scores(K_test), svc.decision_function(K_test), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_predictions_and_scores_in_one_pass_are_each_alone(problem, n_classes: int) -> None:
    """``predict_and_scores`` gives ``predict`` and ``scores``, also where a pair's value is
    exactly 0 (``predict`` gives that pair to its second class, ``scores`` to its first)."""
    X, y = problem(n_classes, class_sep=1.5, n_samples=400)
    X = X.astype(np.float32)
    K_train, K_test = rbf_kernel(X[:300], X[:300], 0.05), rbf_kernel(X[300:], X[:300], 0.05)
    svc = SVC(kernel="precomputed", C=5.0).fit(K_train, y[:300])
    ovo, K_test = OneVsOne(svc), K_test[:, svc.support_]
    K_test[:5] = 0.0  # rows far from every support vector: their values are the intercepts
    ovo.bias[0, 1] = ovo.bias[1, 0] = 0.0  # ... and pair (0, 1)'s is exactly 0
    labels, scores = ovo.predict_and_scores(K_test)
    np.testing.assert_array_equal(labels, ovo.predict(K_test))
    np.testing.assert_array_equal(scores, ovo.scores(K_test))
    if n_classes > 2:  # scores' votes (their rounded values): pair (i, j) to i when >= 0
        i, j = np.triu_indices(n_classes, 1)
        first = ovo.bias[i, j] >= 0
        votes = np.bincount(np.where(first, i, j), minlength=n_classes)
        np.testing.assert_array_equal(np.rint(scores[:5]), np.tile(votes, (5, 1)))
