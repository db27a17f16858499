"""The batched linear heads (classifiers.linear): scikit-learn's contract, the model they fit,
their own CV search, determinism, and predicting without torch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers import linear
from classifiers.linear import DEFAULT_CS, SMALL_WORK, LinearHead, LinearHeadCV

#: Checks these estimators fail, and why (the check compares at rtol 1e-7):
#: - sample-weight equivalence: the solver runs in float32 to ``tol``, so weight 2 and a
#:   repeated row agree to the solver tolerance, not to 1e-7
#:   (test_sample_weight_equals_repeated_rows checks them at that tolerance); LinearSVC fails
#:   the same check for the same reason;
#: - for the CV heads also by design: removing or repeating rows changes the CV folds.
_SAMPLE_WEIGHT = {
    "check_sample_weight_equivalence_on_dense_data": "solver tolerance (float32, tol=1e-4)",
}


def _expected_failures(estimator) -> dict[str, str]:
    return dict(_SAMPLE_WEIGHT)


@parametrize_with_checks(
    [
        LinearHead("log_loss"),
        LinearHead("squared_hinge"),
        LinearHeadCV("log_loss", Cs=[1e-2, 1.0], cv=3),
        LinearHeadCV("squared_hinge", Cs=[1e-2, 1.0], cv=3),
    ],
    expected_failed_checks=_expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


def _logistic_objective(coef, intercept, X, y, C):
    """scikit-learn's multinomial objective C * sum(log-loss) + |W|^2 / 2 (float64)."""
    z = X @ coef.T + intercept
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -C * log_p[np.arange(len(y)), y].sum() + 0.5 * (coef**2).sum()


@pytest.mark.parametrize("n_classes", [2, 3])
def test_log_loss_fits_scikit_learns_logistic_regression(problem, n_classes: int) -> None:
    X, y = problem(n_classes, class_sep=1.0)
    X = StandardScaler().fit_transform(X.astype(np.float64))
    ours = LinearHead("log_loss", C=0.1, tol=1e-6).fit(X, y)
    ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(X, y)
    assert ours.coef_.shape == ref.coef_.shape
    # The solver works in float32: agreement to ~1e-4 of weights of size ~1.
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=5e-4)
    # Multinomial intercepts are defined up to a common shift (softmax ignores it).
    shift = (ours.intercept_ - ref.intercept_).mean() if n_classes > 2 else 0.0
    np.testing.assert_allclose(ours.intercept_ - shift, ref.intercept_, atol=5e-4)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    assert ours.converged_


def _squared_hinge_optimum(X, y, C, positive):
    """Reference one-vs-rest squared-hinge fit of one class (unpenalised intercept), float64."""
    t = np.where(y == positive, 1.0, -1.0)

    def objective(v):
        w, b = v[:-1], v[-1]
        slack = np.maximum(0.0, 1.0 - t * (X @ w + b))
        grad_z = -2.0 * C * t * slack
        value = C * (slack**2).sum() + 0.5 * w @ w
        return value, np.append(X.T @ grad_z + w, grad_z.sum())

    done = minimize(
        objective,
        np.zeros(X.shape[1] + 1),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 10_000},
    )
    return done.x[:-1], done.x[-1]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_squared_hinge_finds_the_one_vs_rest_optimum(problem, n_classes: int) -> None:
    X, y = problem(n_classes, class_sep=1.0)
    X = StandardScaler().fit_transform(X.astype(np.float64))
    ours = LinearHead("squared_hinge", C=0.05, tol=1e-6).fit(X, y)
    positives = [1] if n_classes == 2 else range(n_classes)
    assert ours.coef_.shape == (len(positives), X.shape[1])
    for row, positive in enumerate(positives):
        w, b = _squared_hinge_optimum(X, y, 0.05, positive)
        np.testing.assert_allclose(ours.coef_[row], w, atol=5e-4)
        np.testing.assert_allclose(ours.intercept_[row], b, atol=5e-4)
    assert not hasattr(ours, "predict_proba")


def test_wide_rows_are_solved_in_their_span(problem) -> None:
    """Fewer rows than columns: the solver keeps only the rows' span, exactly."""
    X, y = problem(3, n_samples=60, n_features=200, n_informative=20, class_sep=1.5)
    X = StandardScaler().fit_transform(X.astype(np.float64))
    ours = LinearHead("log_loss", C=0.3, tol=1e-6).fit(X, y)
    ref = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=5e-4)


def test_sample_weight_equals_repeated_rows(problem) -> None:
    X, y = problem(3, class_sep=1.0)
    weights = np.where(np.arange(len(y)) % 3 == 0, 2.0, 1.0)
    repeated = np.repeat(np.arange(len(y)), weights.astype(int))
    a = LinearHead(C=0.1, tol=1e-6).fit(X, y, sample_weight=weights)
    b = LinearHead(C=0.1, tol=1e-6).fit(X[repeated], y[repeated])
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-4)


def test_balanced_class_weight_equals_balanced_sample_weight(problem) -> None:
    X, y = problem(3, class_sep=1.0)
    keep = (y != 2) | (np.arange(len(y)) % 4 == 0)  # class 2 made rare
    X, y = X[keep], y[keep]
    a = LinearHead(C=0.1, class_weight="balanced", tol=1e-6).fit(X, y)
    b = LinearHead(C=0.1, tol=1e-6).fit(X, y, sample_weight=compute_sample_weight("balanced", y))
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-5)
    plain = LinearHead(C=0.1, tol=1e-6).fit(X, y)
    assert np.abs(a.coef_ - plain.coef_).max() > 1e-2  # the weights really changed the fit


@pytest.mark.parametrize("loss", ["log_loss", "squared_hinge"])
def test_cv_search_scores_each_fold_as_separate_fits_would(problem, loss: str) -> None:
    """The batched fold problems are the folds' own fits: same held-out accuracy."""
    X, y = problem(3, class_sep=0.8)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    search = LinearHeadCV(loss, Cs=[1e-3, 1e-1, 10.0], refine=0, cv=folds, search_tol=1e-6)
    search.fit(X, y)
    results = search.cv_results_
    for i, C in enumerate(results["param_C"]):
        for k, (train, test) in enumerate(folds):
            alone = LinearHead(loss, C=C, tol=1e-6).fit(X[train], y[train])
            expected = accuracy_score(y[test], alone.predict(X[test]))
            assert results[f"split{k}_test_score"][i] == pytest.approx(
                expected, abs=1.5 / len(test)
            )
    assert search.best_score_ == results["mean_test_score"][search.best_index_]
    assert search.best_score_ == max(results["mean_test_score"])


def _mean_loss(head: LinearHead, X: np.ndarray, y: np.ndarray, loss: str) -> float:
    """The head's mean loss on ``(X, y)``: log-loss, or the one-vs-rest squared hinge."""
    if loss == "log_loss":
        return log_loss(y, head.predict_proba(X), labels=head.classes_)
    z = head.decision_function(X)
    if z.ndim == 1:
        t = np.where(y == head.classes_[1], 1.0, -1.0)
        return float(np.mean(np.maximum(0.0, 1.0 - t * z) ** 2))
    t = np.where(y[:, None] == head.classes_[None, :], 1.0, -1.0)
    return float(np.mean(np.sum(np.maximum(0.0, 1.0 - t * z) ** 2, axis=1)))


@pytest.mark.parametrize("loss", ["log_loss", "squared_hinge"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_accuracy_ties_go_to_the_lower_held_out_loss(problem, loss: str, n_classes: int) -> None:
    """Well separated rows tie on CV accuracy over decades of C; the tie goes to the C whose
    held-out rows have the lowest mean loss, and that loss is the folds' own fits' loss."""
    X, y = problem(n_classes, class_sep=3.0, flip_y=0.0)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    # Up to C = 1: on these separable rows the log-loss fits past it run to the iteration cap
    # at this tolerance (tens of seconds), and C = 1e-3 .. 1 already tie.
    Cs = np.logspace(-3, 0, 4)
    search = LinearHeadCV(loss, Cs=Cs, refine=0, cv=folds, search_tol=1e-6).fit(X, y)
    results = search.cv_results_
    top = np.flatnonzero(results["mean_test_score"] == results["mean_test_score"].max())
    assert len(top) >= 2, "the problem must tie on accuracy for this test to mean anything"
    losses = results["mean_test_loss"]
    assert search.best_index_ == top[np.argmin(losses[top])]
    assert search.C_ != results["param_C"][top].min()  # not simply the strongest regularisation
    assert results["rank_test_score"][search.best_index_] == 1
    for i in (top[0], search.best_index_):
        alone = [
            _mean_loss(LinearHead(loss, C=Cs[i], tol=1e-6).fit(X[a], y[a]), X[b], y[b], loss)
            for a, b in folds
        ]
        assert losses[i] == pytest.approx(np.mean(alone), rel=1e-2, abs=1e-4)


def test_cv_search_covers_the_wide_range_then_refines(problem) -> None:
    X, y = problem(3, class_sep=1.0)
    search = LinearHeadCV("log_loss", refine=2, cv=3).fit(X, y)
    results = search.cv_results_
    coarse = results["param_C"][results["stage"] == "coarse"]
    np.testing.assert_allclose(coarse, DEFAULT_CS)
    refined = results["param_C"][results["stage"] == "refine"]
    assert 1 <= len(refined) <= 4
    best_coarse = coarse[np.argmax(results["mean_test_score"][results["stage"] == "coarse"])]
    assert np.all((refined > best_coarse / 10) & (refined < best_coarse * 10))
    assert list(results["param_C"]) == sorted(results["param_C"])
    assert search.best_params_ == {"C": search.C_}
    assert results["rank_test_score"][search.best_index_] == 1
    # The refit is LinearHead at the chosen C: it starts from the folds' mean solution, so it
    # meets a fit from zero within the solver's tolerance, not bit for bit.
    assert isinstance(search.best_estimator_, LinearHead)
    assert search.best_estimator_.C == search.C_
    alone = LinearHead("log_loss", C=search.C_).fit(X, y)
    scale = np.abs(alone.coef_).max()
    np.testing.assert_allclose(search.best_estimator_.coef_, alone.coef_, atol=1e-2 * scale)
    np.testing.assert_array_equal(search.coef_, search.best_estimator_.coef_)
    assert np.mean(search.predict(X) == alone.predict(X)) >= 0.99


@pytest.mark.parametrize("loss", ["log_loss", "squared_hinge"])
def test_same_data_and_seed_give_the_same_model(problem, loss: str) -> None:
    X, y = problem(3, class_sep=1.0)
    first = LinearHeadCV(loss, cv=3, random_state=4).fit(X, y)
    second = clone(first).fit(X, y)
    np.testing.assert_array_equal(first.coef_, second.coef_)
    np.testing.assert_array_equal(
        first.cv_results_["mean_test_score"], second.cv_results_["mean_test_score"]
    )


@pytest.mark.parametrize("loss", ["log_loss", "squared_hinge"])
def test_any_thread_count_gives_the_same_model(problem, loss: str) -> None:
    # Big enough for the threads to be used (SMALL_WORK): the thread count follows the load,
    # the numbers must not (module docstring, "The same numbers under any load").
    X, y = problem(10, n_samples=1500, n_features=400, n_informative=30, class_sep=1.0)
    assert X.size * 10 * 3 >= SMALL_WORK
    fits = [LinearHeadCV(loss, cv=3, n_jobs=n).fit(X, y) for n in (1, 2)]
    np.testing.assert_array_equal(fits[0].coef_, fits[1].coef_)
    np.testing.assert_array_equal(
        fits[0].cv_results_["mean_test_loss"], fits[1].cv_results_["mean_test_loss"]
    )


def test_cv_with_groups_keeps_each_group_in_one_fold(problem) -> None:
    X, y = problem(3, class_sep=1.0)
    groups = np.arange(len(y)) // 4  # 4 rows per "image"
    search = LinearHeadCV("log_loss", Cs=[1.0], refine=0, cv=4).fit(X, y, groups=groups)
    assert search.n_splits_ == 4
    from classifiers.linear import _splits

    for train, test in _splits(4, X, y, groups, 0):
        assert not set(groups[train]) & set(groups[test])


def test_runs_inside_pipeline_and_grid_search(three_class) -> None:
    X_train, X_test, y_train, y_test = three_class
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LinearHead("squared_hinge"))])
    search = GridSearchCV(pipe, {"clf__C": [1e-3, 1e-1]}, cv=3).fit(X_train, y_train)
    assert search.score(X_test, y_test) >= 0.85
    nested = Pipeline([("scale", StandardScaler()), ("clf", LinearHeadCV(Cs=[1e-2, 1.0], cv=3))])
    nested.fit(X_train, y_train, clf__groups=np.arange(len(y_train)))
    assert nested.score(X_test, y_test) >= 0.85


def test_bad_parameters_are_rejected(three_class) -> None:
    X, _, y, _ = three_class
    with pytest.raises(ValueError, match="loss must be one of"):
        LinearHead("hinge").fit(X, y)
    with pytest.raises(ValueError, match="C must be a positive"):
        LinearHead(C=0).fit(X, y)
    with pytest.raises(ValueError, match="scoring must be one of"):
        LinearHeadCV(scoring="roc_auc").fit(X, y)
    with pytest.raises(ValueError, match="Cs must hold positive"):
        LinearHeadCV(Cs=[]).fit(X, y)


def test_cuda_device_without_cuda_is_a_clear_error(three_class) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    X, _, y, _ = three_class
    with pytest.raises(ValueError, match="CUDA is not available"):
        LinearHead(device="cuda").fit(X, y)


def test_a_fitted_head_predicts_without_torch(three_class, tmp_path: Path, fresh_python) -> None:
    X_train, X_test, y_train, _ = three_class
    head = LinearHeadCV("log_loss", Cs=[1e-2, 1.0], cv=3).fit(X_train, y_train)
    (tmp_path / "head.pkl").write_bytes(pickle.dumps(head))
    np.save(tmp_path / "X.npy", X_test)
    np.save(tmp_path / "expected.npy", head.predict_proba(X_test))
    code = (
        "import sys, pickle, numpy as np\n"
        "class NoTorch:\n"  # every import of torch fails in this process
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('no torch here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"d = {str(tmp_path)!r}\n"
        "head = pickle.load(open(d + '/head.pkl', 'rb'))\n"
        "p = head.predict_proba(np.load(d + '/X.npy'))\n"
        "np.testing.assert_array_equal(p, np.load(d + '/expected.npy'))\n"
        "assert 'torch' not in sys.modules; print('ok')\n"
    )
    assert fresh_python(code).strip() == "ok"


def test_default_threads_are_the_cores_free_now(tmp_path, monkeypatch) -> None:
    """By default a batched fit takes only the cores no other runnable task holds: a wider
    pool spins at its barriers on a shared machine. An explicit n_jobs is obeyed."""
    monkeypatch.setattr(linear, "default_n_jobs", lambda: 4)
    loadavg = tmp_path / "loadavg"
    tasks = tmp_path / "task"
    for tid, state in [(10, "R"), (11, "S"), (12, "R")]:  # this process: 2 threads running
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(f"{tid} (a (b) c) {state} 1 2 3\n")
    for running, free in [(2, 4), (3, 3), (5, 1), (9, 1)]:
        loadavg.write_text(f"0.50 0.40 0.30 {running}/210 4242\n")
        assert linear.free_cores(str(loadavg), str(tasks)) == free
    assert linear.free_cores(str(tmp_path / "absent"), str(tasks)) == 4
    # With no thread list, the caller alone counts as this process's.
    loadavg.write_text("0.50 0.40 0.30 2/210 4242\n")
    assert linear.free_cores(str(loadavg), str(tmp_path / "none")) == 3


def test_a_head_fitted_on_a_handful_of_rows_uses_fewer_folds() -> None:
    """Fitted on its own (as a saved head's user might), with 3 rows in a class: 3 folds."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(9, 4)).astype(np.float32)
    y = np.repeat([0, 1, 2], 3)
    X[y == 1] += 3.0
    head = LinearHeadCV(cv=5, Cs=[0.1, 1.0]).fit(X, y)
    assert head.n_splits_ == 3


def test_rows_are_grouped_by_the_fits_that_leave_them_out() -> None:
    """Each CV fold's held-out rows form one run that leaves that fold's fit out of the
    products; rows every fit uses keep their order; a single fit of every row is one run."""
    from classifiers._torch_linear import _segments

    idle = np.array(
        [
            [0, 1, 0, 0, 1, 0],  # fit 0 leaves out rows 1 and 4
            [1, 0, 0, 1, 0, 0],  # fit 1 leaves out rows 0 and 3
        ],
        dtype=bool,
    )
    order, runs = _segments(idle)
    assert sorted(order.tolist()) == list(range(6))
    for start, stop, taking in runs:
        rows = order[start:stop]
        expected = ~idle[:, rows[0]]
        assert (~idle[:, rows] == expected[:, None]).all()  # one pattern per run
        assert (taking is None) == bool(expected.all())
        if taking is not None:
            np.testing.assert_array_equal(taking, expected)
    every = [r for r in runs if r[2] is None]
    assert order[every[0][0] : every[0][1]].tolist() == [2, 5]
    assert _segments(np.zeros((1, 4), dtype=bool)) == (None, [(0, 4, None)])


@pytest.mark.parametrize("loss", ["log_loss", "squared_hinge"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_cv_decision_is_each_rows_score_from_the_fold_that_held_it_out(
    problem, loss: str, n_classes: int
) -> None:
    """``cv_decision_`` is what ``cross_val_predict(method="decision_function")`` gives at the
    chosen C on the same folds, in ``decision_function``'s layout."""
    X, y = problem(n_classes, class_sep=0.8)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    search = LinearHeadCV(loss, Cs=[1e-2, 1.0], refine=0, cv=folds, search_tol=1e-6).fit(X, y)
    expected = cross_val_predict(
        LinearHead(loss, C=search.C_, tol=1e-6), X, y, cv=folds, method="decision_function"
    )
    assert search.cv_decision_.dtype == np.float32
    assert search.cv_decision_.shape == expected.shape == search.decision_function(X).shape
    np.testing.assert_allclose(search.cv_decision_, expected, atol=2e-3 * np.abs(expected).max())
    # Out of fold, not the refit's in-sample scores.
    assert np.abs(search.cv_decision_ - search.decision_function(X)).max() > 1e-2


def test_cv_decision_is_none_when_folds_do_not_hold_out_every_row_once(problem) -> None:
    X, y = problem(3)
    halves = list(StratifiedKFold(2, shuffle=True, random_state=0).split(X, y))
    folds = [halves[0], halves[0]]  # the second half's rows are never held out
    search = LinearHeadCV("squared_hinge", Cs=[1.0], refine=0, cv=folds).fit(X, y)
    assert search.cv_decision_ is None
