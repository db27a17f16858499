"""The heads that search their own grid (classifiers.cv_table): each predicts with its refit and
has exactly the prediction methods its refit has."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from classifiers.bayes import GaussianNBHeadCV
from classifiers.kernel import RBFSVMHeadCV
from classifiers.mlp import MLPHeadCV
from classifiers.neighbors import KNeighborsHeadCV

METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function")


@pytest.mark.parametrize(
    "head",
    [
        GaussianNBHeadCV(cv=3),
        KNeighborsHeadCV(n_neighbors=(3,), cv=3),
        RBFSVMHeadCV(Cs=(1.0,), cv=3),
        MLPHeadCV(alphas=(1e-2,), hidden=16, max_epochs=20, cv=3),
    ],
    ids=lambda head: type(head).__name__,
)
def test_a_searching_head_predicts_with_its_refit_alone(problem, head) -> None:
    X, y = problem(3, n_features=12)
    with pytest.raises(NotFittedError):
        head.predict(X)
    head.fit(X[:200], y[:200])
    refit = head.best_estimator_
    assert [m for m in METHODS if hasattr(head, m)] == [m for m in METHODS if hasattr(refit, m)]
    for method in METHODS:
        if hasattr(head, method):
            got = getattr(head, method)(X[200:])
            np.testing.assert_array_equal(got, getattr(refit, method)(X[200:]))
