"""The RBF-SVM and MLP heads' own estimators (classifiers.kernel, classifiers.mlp)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers.kernel import RBFSVMHead, RBFSVMHeadCV
from classifiers.mlp import MLPHead, MLPHeadCV, _fit_batch


def _expected_failures(estimator) -> dict[str, str]:
    """Repeated rows and weight 2 give the MLPs the same loss, but not the same mini-batches
    and early-stopping rows (as scikit-learn's MLPClassifier). The RBF head weighs its scaling
    and gamma and drops rows of weight 0, so what is left is libsvm's own tolerance (decision
    values agree to ~5e-5; scikit-learn expects its SVC to fail this check too); the search's
    predictions do agree."""
    check = "check_sample_weight_equivalence_on_dense_data"
    if isinstance(estimator, (MLPHead, MLPHeadCV)):
        return {check: "stochastic mini-batches"}
    if isinstance(estimator, RBFSVMHead):
        return {check: "libsvm's solver tolerance"}
    return {}


@parametrize_with_checks(
    [
        RBFSVMHead(),
        RBFSVMHeadCV(Cs=(1.0, 10.0), cv=3, n_jobs=1),
        MLPHead(hidden=64, max_epochs=100),
        MLPHeadCV(hidden=64, alphas=(1e-4, 1.0), cv=3, max_epochs=100),
    ],
    expected_failed_checks=_expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


def _rbf_reference() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf", gamma="scale"))])


@pytest.mark.parametrize("n_classes", [2, 4])
def test_rbf_head_is_scikit_learns_svc(problem, n_classes: int) -> None:
    X, y = problem(n_classes, class_sep=0.8, n_samples=300)
    # Both solved to a tight tolerance: what is left is the float32 kernel products'.
    ours = RBFSVMHead(C=3.0, tol=1e-7).fit(X[:200], y[:200])
    ref = _rbf_reference().set_params(svc__C=3.0, svc__tol=1e-7).fit(X[:200], y[:200])
    np.testing.assert_array_equal(ours.predict(X[200:]), ref.predict(X[200:]))
    np.testing.assert_allclose(
        ours.decision_function(X[200:]), ref.decision_function(X[200:]), atol=1e-4
    )


def test_rbf_heads_reuse_a_kernel_only_for_their_own_fit_and_the_same_rows(problem) -> None:
    X, y = problem(3, class_sep=0.8, n_samples=240)
    first = RBFSVMHead(C=3.0).fit(X[:120], y[:120])
    second = RBFSVMHead(C=0.3).fit(X[120:], y[120:])
    expected = second.decision_function(X)
    first.decision_function(X)  # the kept kernel is now the first head's
    np.testing.assert_array_equal(second.decision_function(X), expected)
    changed = X.copy()
    changed[0] += 1.0  # the same array shape, other content: a new kernel
    np.testing.assert_array_equal(second.decision_function(changed)[1:], expected[1:])
    assert not np.array_equal(second.decision_function(changed)[0], expected[0])


def test_rbf_heads_refuse_kernels_larger_than_the_free_memory(problem, monkeypatch) -> None:
    import classifiers.kernel as kernel

    X, y = problem(3, class_sep=0.8, n_samples=300)
    monkeypatch.setattr(kernel, "available_bytes", lambda: 8 * 300**2)  # one kernel's bytes
    with pytest.raises(MemoryError, match=r"rbf_svm needs .* GiB .* on 300 training rows"):
        RBFSVMHead().fit(X, y)
    with pytest.raises(MemoryError, match="leave it out"):
        RBFSVMHeadCV(Cs=(1.0,), cv=3, n_jobs=2, approximate=False).fit(X, y)
    # Room for the refit's kernel and one fold's: the search runs on one thread.
    monkeypatch.setattr(kernel, "available_bytes", lambda: int(8 * 2.6 * 300**2))
    threads = []
    search = kernel._search
    monkeypatch.setattr(kernel, "_search", lambda *a: threads.append(a[-1]) or search(*a))
    RBFSVMHeadCV(Cs=(1.0,), cv=3, n_jobs=2).fit(X, y)
    assert threads == [1]


def test_rbf_head_leaves_out_rows_of_weight_zero(problem) -> None:
    """A row of weight 0 changes nothing: not the scaling, gamma, nor the support vectors."""
    X, y = problem(3, class_sep=0.8, n_samples=240)
    weights = np.where(np.arange(len(y)) % 4 == 0, 0.0, 1.0)
    kept = weights > 0
    weighted = RBFSVMHead(C=3.0).fit(X, y, sample_weight=weights)
    removed = RBFSVMHead(C=3.0).fit(X[kept], y[kept])
    assert weighted.gamma_ == pytest.approx(removed.gamma_)
    np.testing.assert_allclose(weighted.mean_, removed.mean_)
    np.testing.assert_allclose(
        weighted.decision_function(X), removed.decision_function(X), atol=1e-8
    )


def test_rbf_search_scores_every_c_as_grid_search_does(problem) -> None:
    X, y = problem(3, class_sep=0.8)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    ours = RBFSVMHeadCV(Cs=(0.1, 1.0, 10.0), cv=folds, n_jobs=2).fit(X, y)
    ref = GridSearchCV(_rbf_reference(), {"svc__C": [0.1, 1.0, 10.0]}, cv=folds).fit(X, y)
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"]
    )
    assert ours.best_params_ == {"C": ref.best_params_["svc__C"]}
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_rbf_search_gives_the_same_head_on_one_thread_or_several(problem) -> None:
    X, y = problem(4, class_sep=0.8)
    one = RBFSVMHeadCV(Cs=(0.1, 1.0, 10.0), cv=3, n_jobs=1).fit(X, y)
    three = RBFSVMHeadCV(Cs=(0.1, 1.0, 10.0), cv=3, n_jobs=3).fit(X, y)
    for key in ("mean_test_score", "split0_test_score", "split2_test_score"):
        np.testing.assert_array_equal(one.cv_results_[key], three.cv_results_[key])
    np.testing.assert_array_equal(one.decision_function(X), three.decision_function(X))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_rbf_search_keeps_the_chosen_cs_out_of_fold_scores(problem, n_classes: int) -> None:
    """``cv_decision_`` is what ``cross_val_predict(method="decision_function")`` gives for the
    chosen C on the same folds (each fold standardised with its own rows, as a scaler in a
    pipeline would be)."""
    X, y = problem(n_classes, class_sep=0.8)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    ours = RBFSVMHeadCV(Cs=(0.1, 1.0, 10.0), cv=folds, n_jobs=2).fit(X, y)
    expected = cross_val_predict(
        RBFSVMHead(C=ours.best_params_["C"]), X, y, cv=folds, method="decision_function"
    )
    assert ours.cv_decision_.dtype == np.float32
    assert ours.cv_decision_.shape == expected.shape == ours.decision_function(X).shape
    np.testing.assert_allclose(ours.cv_decision_, expected, atol=1e-4)
    assert np.abs(ours.cv_decision_ - ours.decision_function(X)).max() > 1e-2
    overlapping = [folds[0], folds[0], folds[1], folds[2]]  # folds[3] never held out
    assert RBFSVMHeadCV(Cs=(1.0,), cv=overlapping).fit(X, y).cv_decision_ is None


def test_mlp_learns_and_keeps_its_best_epoch(three_class) -> None:
    X_train, X_test, y_train, y_test = three_class
    head = MLPHead(max_epochs=200).fit(X_train, y_train)
    assert (head.predict(X_test) == y_test).mean() >= 0.85
    assert 10 < head.n_iter_ < 200  # stopped early
    assert head.best_validation_score_ >= 0.85
    np.testing.assert_allclose(head.predict_proba(X_test).sum(axis=1), 1.0, rtol=1e-5)
    again = clone(head).fit(X_train, y_train)
    np.testing.assert_array_equal(head.coefs_[0], again.coefs_[0])  # same data, same seed


def _four_class_problem(problem) -> tuple[np.ndarray, np.ndarray, slice, slice]:
    """900 rows of 4 classes where the model matters; the first 600 train, the rest test."""
    X, y = problem(4, n_samples=900, n_features=40, n_informative=12, class_sep=1.0)
    return X, y, slice(0, 600), slice(600, None)


def _scikit_learns_mlp(X: np.ndarray, y: np.ndarray, **options) -> Pipeline:
    """The MLPClassifier the head replaces, as this project configured it, fitted."""
    mlp = MLPClassifier(
        hidden_layer_sizes=(256,), learning_rate_init=3e-3, random_state=0, **options
    )
    return Pipeline([("scale", StandardScaler()), ("mlp", mlp)]).fit(X, y)


def test_mlp_is_as_accurate_as_scikit_learns(problem) -> None:
    """Same model, configuration and stopping rule as the MLPClassifier it replaces: held-out
    accuracy within a few rows of it (different random streams, so not the same weights)."""
    X, y, train, test = _four_class_problem(problem)
    ref = _scikit_learns_mlp(X[train], y[train], early_stopping=True)
    ours = MLPHead().fit(X[train], y[train])
    ref_acc = (ref.predict(X[test]) == y[test]).mean()
    our_acc = (ours.predict(X[test]) == y[test]).mean()
    assert ref_acc > 0.6  # a problem where the model matters
    assert abs(our_acc - ref_acc) <= 0.03, (our_acc, ref_acc)
    assert abs(ours.n_iter_ - ref[-1].n_iter_) <= 25


def test_mlp_reduces_wide_rows_to_principal_directions(problem) -> None:
    X, y = problem(3, n_features=40, n_informative=10, class_sep=2.0)
    head = MLPHead(max_features=8, max_epochs=40).fit(X, y)
    assert head.components_.shape == (40, 8)
    np.testing.assert_allclose(head.components_.T @ head.components_, np.eye(8), atol=1e-4)
    assert head.coefs_[0].shape == (8, 256)
    assert MLPHead(max_features=64, max_epochs=5).fit(X, y).components_ is None


def test_mlp_gives_the_same_head_on_one_thread_or_several(problem) -> None:
    # Wide rows, so the principal directions (QR and eigen-decompositions) are computed too.
    X, y = problem(10, n_samples=1500, n_features=400, n_informative=30, class_sep=1.0)
    heads = [MLPHead(max_features=64, max_epochs=15, n_jobs=n).fit(X, y) for n in (1, 2)]
    np.testing.assert_array_equal(heads[0].components_, heads[1].components_)
    for a, b in zip(heads[0].coefs_, heads[1].coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mlp_keeps_no_more_directions_than_its_rows_span(problem) -> None:
    """Fewer rows than ``max_features``: the centred rows span ``rows - 1`` directions, and
    the fit keeps those (the others carry no variance, only cost); CV fits keep as many as the
    smallest fold's training rows span."""
    X, y = problem(3, n_features=60, n_informative=10, class_sep=2.0)
    X, y = X[:30], y[:30]
    head = MLPHead(max_features=50, max_epochs=5).fit(X, y)
    assert head.components_.shape == (60, 29)
    np.testing.assert_allclose(head.components_.T @ head.components_, np.eye(29), atol=1e-4)
    search = MLPHeadCV(max_features=50, alphas=(1e-4,), cv=3, max_epochs=5).fit(X, y)
    assert search.best_estimator_.components_.shape == (60, 29)


def test_fits_in_one_batch_do_not_influence_each_other(problem) -> None:
    """A fit's result depends on its own rows only, whatever else trains beside it: its
    mini-batches come from its own rows and its own shuffling generator. Neighbours of the
    same size give bit-identical fits; a neighbour of another size changes the padded shape
    of the batched products, so only their float rounding."""
    X, y = problem(3, class_sep=1.0)
    y_idx = y.astype(np.int64)
    est = MLPHead(hidden=32, max_epochs=60, precision="fp32")
    val = np.arange(len(y)) % 10 == 0
    mine = np.arange(0, 200)
    others = [np.arange(20, 240), np.r_[0:20, 40:240], np.r_[0:20, 40:120]]
    weights = np.ones(len(y))
    fits = [
        _fit_batch(est, X, y_idx, 3, [mine, other], [1e-4, 1.0], weights, val, seed=0)
        for other in others
    ]
    a, b, c = fits
    for k in range(2):  # fits 0 and 1 (row set 0, both alphas) are the same
        np.testing.assert_array_equal(a.coefs[0][k], b.coefs[0][k])
        np.testing.assert_array_equal(a.coefs[1][k], b.coefs[1][k])
        np.testing.assert_allclose(a.coefs[0][k], c.coefs[0][k], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.coefs[1][k], c.coefs[1][k], rtol=1e-4, atol=1e-6)
        assert a.epochs[k] == b.epochs[k] == c.epochs[k]
    assert not np.array_equal(a.coefs[0][2], b.coefs[0][2])  # the others did change
    assert not np.allclose(a.coefs[0][2], c.coefs[0][2], rtol=1e-2)


def test_mlp_search_reports_its_alphas(three_class) -> None:
    X_train, X_test, y_train, y_test = three_class
    search = MLPHeadCV(alphas=(1e-4, 1e-2, 1.0), cv=3, max_epochs=60).fit(X_train, y_train)
    results = search.cv_results_
    assert list(results["param_alpha"]) == [1e-4, 1e-2, 1.0]
    assert search.best_score_ == max(results["mean_test_score"])
    assert search.best_estimator_.alpha == search.best_params_["alpha"]
    assert (search.predict(X_test) == y_test).mean() >= 0.85


def test_without_early_stopping_the_training_loss_stops_it_as_scikit_learn_does(problem) -> None:
    """Without validation rows a fit stops once its epoch's training loss has not fallen by
    ``tol`` for ``patience`` epochs (scikit-learn's rule), rather than running every epoch."""
    X, y, train, test = _four_class_problem(problem)
    ref = _scikit_learns_mlp(X[train], y[train], early_stopping=False, max_iter=300)
    ours = MLPHead(early_stopping=False, max_epochs=300).fit(X[train], y[train])
    assert ref[-1].n_iter_ < 300  # scikit-learn stopped on its training loss
    assert ours.n_iter_ < 300
    assert abs(ours.n_iter_ - ref[-1].n_iter_) <= 0.5 * ref[-1].n_iter_, (
        ours.n_iter_,
        ref[-1].n_iter_,
    )
    ref_acc = (ref.predict(X[test]) == y[test]).mean()
    our_acc = (ours.predict(X[test]) == y[test]).mean()
    assert abs(our_acc - ref_acc) <= 0.04, (our_acc, ref_acc)
    assert np.isnan(ours.best_validation_score_)
