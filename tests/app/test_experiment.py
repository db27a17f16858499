"""run_experiment / sweep_and_report: a sweep end to end in the library, returning a value (the
CLI only prints): selection by CV, progress, failures, options passed to run_sweep, warnings."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

import featurestore.experiment as experiment
from classifiers.heads import HEADS, HeadSpec
from classifiers.sweep import FeatureSet, run_sweep
from featurestore.errors import HeadError, OptionError
from featurestore.experiment import (
    Anchor,
    SweepSettings,
    default_out_dir,
    parse_anchor,
    run_experiment,
    sweep_and_report,
    sweep_keywords,
)
from featurestore.featuresets import SplitPlan, SweepData
from featurestore.headfile import load_head_card
from featurestore.sources import Record, Source

TINY = {"weights": "none", "input_size": 32}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, make_images) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    make_images(root / "train", n=16, seed=3)
    make_images(root / "val", n=8, seed=4)
    return root


@pytest.mark.parametrize("jobs", [1, None])
def test_a_sweep_runs_end_to_end_and_reports_progress_per_head(
    folder: Path, tmp_path: Path, jobs: int | None
) -> None:
    lines: list[str] = []
    out = run_experiment(
        folder,
        out_dir=tmp_path / "report",
        backbones=["mobilenet_v3_small"],
        heads=["logreg", "gaussian_nb"],
        cv=2,
        use_grid=False,
        jobs=jobs,
        anchors=[Anchor("published", 0.5)],
        cache_dir=tmp_path / "cache",
        progress=lines.append,
        **TINY,
    )
    assert {(r.feature_set, r.head) for r in out.results} == {
        (fs, h) for fs in ("mobilenet_v3_small", "pixels16") for h in ("logreg", "gaussian_nb")
    }
    assert out.best is out.results[0]
    assert {"markdown", "csv", "json", "head", "predictions", "mistakes"} <= set(out.paths)
    assert all(p.is_file() for p in out.paths.values())
    assert any("Published anchor published: 0.5000" in n for n in out.notes)
    assert out.notes[0].startswith("Split: given splits: train on 'train', evaluate on 'val'")
    # One overview line (with the processes when the fits run side by side), then for every
    # (feature set, head): a start line with its grid and an end line with its time, its
    # scores and the sweep's overall progress.
    side_by_side = "" if jobs == 1 else " on 2 processes"
    assert lines[0] == (
        "fitting 2 head(s) on 2 feature set(s): 4 fits, 16 training images, 2-fold CV"
        + side_by_side
    )
    assert len(lines) == 1 + 2 * len(out.results)
    cells = [
        (fs, h) for fs in ("mobilenet_v3_small", "pixels16") for h in ("logreg", "gaussian_nb")
    ]
    ends = []
    for i, (fs, head) in enumerate(cells, 1):
        start = lines.index(f"[{i}/4] {fs} / {head}: fitting 1 setting(s) x 2-fold CV")
        end = next(
            k for k, line in enumerate(lines) if line.startswith(f"[{i}/4] {fs} / {head}: done")
        )
        assert start < end
        assert re.fullmatch(
            rf"\[{i}/4\] {fs} / {head}: done in \d+\.\d s: CV accuracy \d\.\d{{4}}, test "
            rf"accuracy \d\.\d{{4}} \(sweep \d+:\d\d elapsed, \d/4 done\)",
            lines[end],
        ), lines[end]
        ends.append(end)
    done = [re.search(r"(\d)/4 done", lines[k]).group(1) for k in sorted(ends)]
    assert done == ["1", "2", "3", "4"]  # counted in the order the fits end
    if jobs == 1:  # one after another, in sweep order
        assert ends == [2, 4, 6, 8]
    _, card = load_head_card(out.paths["head"])
    assert (card.feature_set, card.head) == (out.best.feature_set, out.best.head)
    assert card.class_names == ["cat", "dog"]
    predictions = out.paths["predictions"].read_text().splitlines()
    assert len(predictions) == 1 + 8  # header + every evaluation image


def test_anchors_parse_from_the_command_line_form() -> None:
    assert parse_anchor("ResNet-18 frozen=0.9477") == Anchor("ResNet-18 frozen", 0.9477)
    assert parse_anchor("a=b=0.5") == Anchor("a=b", 0.5)
    for bad in ("x=high", "0.5", "=0.5"):
        with pytest.raises(OptionError, match="NAME=ACCURACY"):
            parse_anchor(bad)


# ----------------------------------------------------------------------------- crafted data
def _records(n: int, split: str, labels: np.ndarray, names: list[str]) -> list[Record]:
    return [
        Record(f"{split}{i:04d}".ljust(64, "0"), f"{split}/{i}.png", names[c], split, ("x", i))
        for i, c in enumerate(labels)
    ]


def crafted(sets: dict[str, tuple], names: list[str]) -> SweepData:
    """SweepData from hand-made arrays {name: (X_train, y_train, X_test, y_test)}, all sets on
    the same labels (as a sweep's feature sets are)."""
    _, y, _, yt = next(iter(sets.values()))
    features = [
        FeatureSet(k, a, b, c, d, class_names=names, provenance={"pixels": {"size": 4}})
        for k, (a, b, c, d) in sets.items()
    ]
    train, test = _records(len(y), "train", y, names), _records(len(yt), "val", yt, names)
    n = len(y) + len(yt)
    plan = SplitPlan(np.arange(n) < len(y), np.arange(n) >= len(y), "given splits (crafted)")
    return SweepData(
        feature_sets=features,
        plan=plan,
        class_names=names,
        keys=[r.key for r in train + test],
        paths=[r.path for r in train + test],
        train_records=train,
        test_records=test,
    )


def _blobs(n: int, labels: np.ndarray, sep: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n, 4))
    X[:, 0] += sep * labels
    return X


def cv_vs_test() -> SweepData:
    """'shifted' is perfect in cross-validation but its test rows are mostly mislabelled on
    the separating feature; 'honest' is mediocre on both. By CV 'shifted' wins, by test
    'honest' does."""
    y = np.array([0, 1] * 30)
    yt = np.array([0, 1] * 20)
    shifted_test = _blobs(40, yt, 6.0, 3)
    flip = np.arange(40) % 5 < 3  # 60% of the test rows sit on the other class's side
    shifted_test[flip, 0] = 6.0 * (1 - yt[flip]) + np.random.default_rng(4).normal(0, 1, flip.sum())
    return crafted(
        {
            "shifted": (_blobs(60, y, 6.0, 1), y, shifted_test, yt),
            "honest": (_blobs(60, y, 1.5, 5), y, _blobs(40, yt, 1.5, 6), yt),
        },
        ["ant", "bee"],
    )


def _settings(**kw) -> SweepSettings:
    return SweepSettings.make(**{"heads": ["gaussian_nb", "logreg"], "cv": 3, **kw})


def test_the_saved_head_is_the_cv_choice_not_the_test_best(tmp_path: Path) -> None:
    data = cv_vs_test()
    # run_sweep orders by CV score on the training split too (it once ordered by test accuracy)
    by_cv = run_sweep(data.feature_sets, heads=["gaussian_nb", "logreg"], cv=3, use_grid=False)
    assert by_cv[0].feature_set == "shifted"
    out = sweep_and_report(data, tmp_path / "r", settings=_settings(use_grid=False), source="x")
    top_test = max(out.results, key=lambda r: r.accuracy)
    top_cv = max(out.results, key=lambda r: r.cv_score)
    assert top_test.feature_set == "honest" and top_cv.feature_set == "shifted"
    assert top_test.accuracy > top_cv.accuracy + 0.2
    assert (out.best.feature_set, out.best.head) == (top_cv.feature_set, "gaussian_nb")
    _, card = load_head_card(out.paths["head"])
    assert (card.feature_set, card.head) == ("shifted", "gaussian_nb")
    assert card.sweep["selected_by"] == "cv"
    rows = json.loads(out.paths["json"].read_text())["rows"]
    assert rows[0]["feature_set"] == "shifted" and rows[0]["chosen"]
    markdown = out.paths["markdown"].read_text()
    assert "It was not chosen: the held-out split only reports, it never selects." in markdown


def test_the_chosen_svm_is_calibrated_on_its_searchs_held_out_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SVMs' searches keep each training row's out-of-fold scores (sent back from the
    worker that fitted them); a chosen SVM's probabilities are calibrated on them, and its
    folds are not fitted a second time."""

    def refuse(*args, **kwargs):
        raise AssertionError("the chosen head's folds were fitted again")

    monkeypatch.setattr("classifiers.calibration.cross_val_predict", refuse)
    data = cv_vs_test()
    settings = SweepSettings.make(heads=["linear_svm", "rbf_svm", "logreg"], cv=3, jobs=2)
    out = sweep_and_report(data, tmp_path / "r", settings=settings, source="x")
    assert not out.failures
    by_head = {(r.feature_set, r.head): r for r in out.results}
    for name in ("shifted", "honest"):
        fs = data.feature_set(name)
        assert by_head[(name, "logreg")].cv_decision is None  # probabilities of its own
        for svm in (by_head[(name, "linear_svm")], by_head[(name, "rbf_svm")]):
            assert svm.cv_decision.shape == (len(fs.y_train),)
            # What the report saves for a chosen SVM: its calibrator fitted on those scores.
            head, problem = experiment.chosen_head(svm, data, cv=3, seed=0)
            assert problem is None and head.estimator_ is svm.estimator
            scores = svm.cv_decision.astype(np.float64).reshape(-1, 1)
            alone = LogisticRegression(max_iter=1000).fit(scores, fs.y_train)
            test_scores = svm.estimator.decision_function(fs.X_test).reshape(-1, 1)
            np.testing.assert_array_equal(
                head.predict_proba(fs.X_test), alone.predict_proba(test_scores)
            )


def test_one_heads_failure_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            raise ValueError("singular matrix (on purpose)")

    spec = HeadSpec("broken", "fails on purpose", lambda: Pipeline([("clf", Broken())]), {})
    monkeypatch.setitem(HEADS, "broken", spec)
    lines: list[str] = []
    settings = _settings(heads=["gaussian_nb", "broken", "logreg"], use_grid=False)
    out = sweep_and_report(
        cv_vs_test(), tmp_path / "r", settings=settings, source="x", progress=lines.append
    )
    assert len(out.results) == 4 and {r.head for r in out.results} == {"gaussian_nb", "logreg"}
    assert [(f.feature_set, f.head) for f in out.failures] == [
        ("shifted", "broken"),
        ("honest", "broken"),
    ]
    assert all("ValueError: singular matrix (on purpose)" in f.error for f in out.failures)
    assert sum("FAILED after" in line for line in lines) == 2
    # The progress line is the one notice of each failure: no log line repeats it, no traceback.
    assert not [r for r in caplog.records if "broken" in r.getMessage()]
    markdown = out.paths["markdown"].read_text()
    assert "## Failed heads" in markdown and "| honest | broken | ValueError:" in markdown
    assert out.paths["head"].is_file()
    # every fit failing is an error, after a report that lists why
    settings = _settings(heads=["broken"], use_grid=False)
    with pytest.raises(HeadError, match="every fit failed"):
        sweep_and_report(cv_vs_test(), tmp_path / "all", settings=settings, source="x")
    assert "singular matrix" in (tmp_path / "all" / "leaderboard.md").read_text()


def test_a_class_with_one_training_image_stops_the_sweep_before_any_fit(tmp_path: Path) -> None:
    y, yt = np.array([0, 1] * 10 + [2]), np.array([0, 1, 2] * 3)  # class 'c': one training image
    data = crafted({"f": (_blobs(21, y, 3.0, 1), y, _blobs(9, yt, 3.0, 2), yt)}, ["a", "b", "c"])
    lines: list[str] = []
    with pytest.raises(HeadError, match="class 'c' has 1 training item"):
        sweep_and_report(
            data, tmp_path / "r", settings=_settings(), source="x", progress=lines.append
        )
    assert not any("fitting" in line for line in lines)  # one error, not one per pair
    assert not (tmp_path / "r").exists()


def test_a_feature_sets_data_notes_are_logged_once_not_once_per_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    y, yt = np.array([0] * 50 + [1] * 10), np.array([0, 1] * 10)  # ratio 5: a note
    data = crafted({"lopsided": (_blobs(60, y, 3.0, 1), y, _blobs(20, yt, 3.0, 2), yt)}, ["a", "b"])
    settings = _settings(heads=["gaussian_nb", "logreg", "knn"], use_grid=False)
    sweep_and_report(data, tmp_path / "r", settings=settings, source="x", progress=lambda _: None)
    notes = [r for r in caplog.records if "classes are imbalanced" in r.getMessage()]
    assert len(notes) == 1  # three heads, each its own run_sweep call


def test_a_long_fit_says_it_is_still_fitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = experiment.run_sweep

    def slow(*args, **kwargs):
        time.sleep(0.35)
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "run_sweep", slow)
    lines: list[str] = []
    sweep_and_report(
        cv_vs_test(),
        tmp_path / "r",
        settings=_settings(heads=["gaussian_nb"], use_grid=False),
        source="x",
        progress=lines.append,
        heartbeat=0.1,
    )
    for fs in ("shifted", "honest"):
        beats = [
            line for line in lines if line.startswith("[") and f"{fs} / gaussian_nb: still" in line
        ]
        assert beats and all(re.search(r"still fitting, 0:00 so far$", b) for b in beats)


# ----------------------------------------------------------------------------- run_sweep options
def _older(feature_sets, *, heads=None, cv=5, use_grid=True, random_state=0, progress=None):
    return run_sweep(feature_sets, heads=heads, cv=cv, use_grid=use_grid, random_state=random_state)


def test_scoring_and_class_weight_are_refused_when_run_sweep_lacks_them(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sweep_keywords(sweep=_older) == {}  # the defaults need nothing
    with pytest.raises(HeadError, match=r"--scoring balanced_accuracy.*no scoring option"):
        sweep_keywords(scoring="balanced_accuracy", sweep=_older)
    with pytest.raises(HeadError, match=r"--class-weight balanced.*no class_weight option"):
        sweep_keywords(class_weight="balanced", sweep=_older)
    with pytest.raises(OptionError, match="--scoring must be one of"):
        sweep_keywords(scoring="auc", sweep=_older)
    monkeypatch.setattr(experiment, "run_sweep", _older)
    with pytest.raises(HeadError, match="--scoring"):
        run_experiment(
            folder,
            out_dir=tmp_path / "report",
            backbones=["mobilenet_v3_small"],
            scoring="f1_macro",
            cache_dir=tmp_path / "cache",
            **TINY,
        )
    assert not (tmp_path / "cache").exists() and not (tmp_path / "report").exists()


def test_scoring_class_weight_and_groups_reach_a_run_sweep_that_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple] = []

    def newer(
        feature_sets,
        *,
        heads=None,
        cv=5,
        use_grid=True,
        random_state=0,
        scoring="accuracy",
        class_weight=None,
        groups=None,
        progress=None,
    ):
        seen.append((scoring, class_weight, list(groups), random_state))
        return run_sweep(
            feature_sets,
            heads=heads,
            cv=cv,
            use_grid=use_grid,
            random_state=random_state,
            scoring=scoring,
            class_weight=class_weight,
            groups=groups,
        )

    monkeypatch.setattr(experiment, "run_sweep", newer)
    data = cv_vs_test()
    settings = _settings(  # jobs=1: the fits run in this process, where `seen` is
        scoring="balanced_accuracy", class_weight="balanced", use_grid=False, seed=7, jobs=1
    )
    out = sweep_and_report(data, tmp_path / "r", settings=settings, source="x")
    keys = [r.key for r in data.train_records]
    assert seen == [("balanced_accuracy", "balanced", keys, 7)] * 4
    markdown = out.paths["markdown"].read_text()
    assert "cross-validated balanced accuracy on the training split" in markdown
    assert "| CV balanced accuracy |" in markdown


# ----------------------------------------------------------------------------- warnings
def test_imbalance_and_a_class_seen_only_in_evaluation_are_reported(tmp_path: Path) -> None:
    y = np.array([0] * 40 + [1] * 12)
    yt = np.array([0] * 10 + [1] * 4 + [2] * 3)  # 'cat' never appears in training
    data = crafted(
        {"set": (_blobs(52, y, 4.0, 1), y, _blobs(17, np.minimum(yt, 1), 4.0, 2), yt)},
        ["ant", "bee", "cat"],
    )
    out = sweep_and_report(data, tmp_path / "r", settings=_settings(use_grid=False), source="x")
    text = " ".join(out.warnings)
    assert "Classes are imbalanced" in text and "40 'ant' vs 12 'bee' (3.3x)" in text
    assert "only in the evaluation split: 'cat' (3 images)" in text
    markdown = out.paths["markdown"].read_text()
    assert "## Warnings" in markdown and "only in the evaluation split" in markdown
    assert "| cat | 0 | 3 |" in markdown  # per-class table: no training image, 3 test images


def test_the_default_report_folder_is_named_after_the_source() -> None:
    assert default_out_dir(Source("builtin:digits", "builtin", [])) == Path("report-digits")
    assert default_out_dir(Source("/data/hymenoptera_data", "folder", [])) == Path(
        "report-hymenoptera_data"
    )
    assert default_out_dir(Source("/d/train_catvnoncat.h5", "arrays", [])) == Path(
        "report-train_catvnoncat"
    )
