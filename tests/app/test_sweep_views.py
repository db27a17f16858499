"""Sweeps and predictions with views: training on every view of every training image (CV
grouped by image), the evaluation split scored on the identity view and with test-time
averaging, and saved heads that average over the views when they predict."""

from __future__ import annotations

import csv
import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

import featurestore.experiment as experiment
from classifiers.sweep import run_sweep
from featurestore.api import load_features
from featurestore.errors import HeadError, HeadIntegrityError, OptionError
from featurestore.featuresets import build_sweep_data, tta_label, views_label
from featurestore.headfile import HeadCard, load_head_card, save_head_card
from featurestore.predict import predict
from featurestore.views import ViewAveraged, get_policy

TINY = {"weights": "none", "input_size": 32, "workers": 0}
TINY_ARGS = ["--weights", "none", "--input-size", "32", "--workers", "0"]
BACKBONE = "mobilenet_v3_small"
GROUPED = "groups" in inspect.signature(run_sweep).parameters
needs_groups = pytest.mark.skipif(
    not GROUPED, reason="the installed classifiers' run_sweep has no grouped CV (groups)"
)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, make_images: Callable[..., list[Path]]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep-views")
    make_images(root / "ds" / "train", 16, classes=("ant", "bee"), size=(40, 30), seed=1)
    make_images(root / "ds" / "val", 6, classes=("ant", "bee"), size=(40, 30), seed=2)
    return {"src": root / "ds", "cache": root / "cache", "root": root}


def test_views_feature_set_trains_on_every_view_and_evaluates_the_identity_view(
    world: dict[str, Path],
) -> None:
    data = build_sweep_data(
        world["src"],
        backbones=[BACKBONE],
        pixels=False,
        views="flip",
        cache_dir=world["cache"],
        **TINY,
    )
    plain, views = data.feature_sets
    assert (plain.name, views.name) == (BACKBONE, views_label(BACKBONE, "flip"))
    rows = data.views[views.name]
    assert (rows.policy, rows.n_views, rows.plain, rows.tta) == (
        "flip",
        2,
        BACKBONE,
        tta_label(BACKBONE, "flip"),
    )
    assert views.X_train.shape == (2 * 16, plain.X_train.shape[1])
    # image-major: view 0 of each training image is its plain row, view 1 its mirror's row
    assert np.array_equal(views.X_train[0::2], plain.X_train)
    assert not np.array_equal(views.X_train[1::2], plain.X_train)
    assert np.array_equal(views.y_train, np.repeat(plain.y_train, 2))
    assert np.array_equal(views.X_test, plain.X_test) and np.array_equal(views.y_test, plain.y_test)
    assert rows.X_test.shape == (6, 2, plain.X_test.shape[1])
    assert np.array_equal(rows.X_test[:, 0], plain.X_test)
    # the mirror rows are the flip store's rows of the same images
    train = load_features(
        world["src"],
        split="train",
        backbone=BACKBONE,
        views="flip",
        cache_dir=world["cache"],
        extract_missing=False,
        **{k: v for k, v in TINY.items() if k != "workers"},
    )
    by_key = {k: train.X[i] for i, k in enumerate(train.keys) if train.view[i] == 1}
    mirrored = np.stack([by_key[r.key] for r in data.train_records])
    assert np.array_equal(views.X_train[1::2], mirrored)
    # CV groups: one image key per training row, an image's views share theirs
    groups = data.train_groups(views.name)
    assert groups[0::2] == groups[1::2] == [r.key for r in data.train_records]
    assert data.train_groups(plain.name) == [r.key for r in data.train_records]
    assert data.feature_set(rows.tta) is views
    # what extracting the views cost: both views of the 22 images, none cached before
    (cost,) = data.view_costs
    assert (cost.policy, cost.n_views, cost.images, cost.extracted) == ("flip", 2, 22, 44)
    again = build_sweep_data(
        world["src"],
        backbones=[BACKBONE],
        pixels=False,
        views="flip",
        cache_dir=world["cache"],
        **TINY,
    )
    assert (again.view_costs[0].extracted, again.view_costs[0].reused) == (0, 44)


def test_views_refused_without_grouped_cv_before_any_extraction(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def ungrouped(feature_sets, *, heads=None, cv=5, use_grid=True, random_state=0):
        raise AssertionError("must not be called")

    monkeypatch.setattr(experiment, "run_sweep", ungrouped)
    cache = tmp_path / "cache"
    with pytest.raises(HeadError, match="grouped by image"):
        experiment.run_experiment(
            world["src"],
            out_dir=tmp_path / "out",
            backbones=[BACKBONE],
            pixels=False,
            views="flip",
            cache_dir=cache,
            **TINY,
        )
    assert not cache.exists()
    with pytest.raises(OptionError, match="backbone"):
        experiment.run_experiment(
            world["src"], out_dir=tmp_path / "out", pixels=True, views="flip", cache_dir=cache
        )


@needs_groups
def _flip_sweep(world: dict[str, Path], out: Path, head: str) -> experiment.ExperimentResult:
    """The tiny world swept with ``head`` on the backbone's rows and their flip views."""
    return experiment.run_experiment(
        world["src"],
        out_dir=out,
        backbones=[BACKBONE],
        pixels=False,
        heads=[head],
        cv=2,
        views="flip",
        cache_dir=world["cache"],
        **TINY,
    )


def test_sweep_with_views_reports_plain_views_and_tta_rows(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report"
    outcome = _flip_sweep(world, out, "logreg")
    data = outcome.data
    by_name = {r.feature_set: r for r in outcome.results}
    plain, views, tta = (
        by_name[BACKBONE],
        by_name[views_label(BACKBONE, "flip")],
        by_name[tta_label(BACKBONE, "flip")],
    )
    # the tta row is the views row's head, evaluated by averaging over the views
    assert tta.estimator is views.estimator
    rows = data.views[views.feature_set]
    y_test = data.feature_set(views.feature_set).y_test
    averaged = ViewAveraged(views.estimator).predict(rows.X_test)
    assert np.array_equal(np.asarray(tta.evaluation.y_pred), averaged)
    assert tta.accuracy == pytest.approx(np.mean(averaged == y_test))
    identity = views.estimator.predict(rows.X_test[:, 0])
    assert views.accuracy == pytest.approx(np.mean(identity == y_test))
    # CV scores per training image: 2 folds of 8 images, so multiples of 1/8
    for r in (views, tta):
        assert len(r.cv_fold_scores) == 2
        assert all(abs(s * 8 - round(s * 8)) < 1e-9 for s in r.cv_fold_scores)
    # the report lists the three side by side, states the extraction cost
    doc = json.loads((out / "leaderboard.json").read_text())
    names = {row["feature_set"] for row in doc["rows"]}
    assert names == {plain.feature_set, views.feature_set, tta.feature_set}
    assert any("Extraction cost" in n and "flip views" in n for n in doc["notes"])
    assert doc["provenance"]["views"]["policy"] == "flip"
    text = (out / "leaderboard.md").read_text()
    assert tta.feature_set in text and "Extraction cost" in text
    # the saved head's card records the views when a views row was chosen
    _, card = load_head_card(out / "best_head.joblib")
    chosen = outcome.best.feature_set
    if chosen == BACKBONE:
        assert card.views is None
    else:
        assert card.views == {
            "policy": "flip",
            "n_views": 2,
            "test_time_averaging": chosen == tta.feature_set,
        }


def test_views_sweep_of_an_svm_scores_and_calibrates_its_averaged_rows(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """A head without probabilities (the linear SVM) trained on views: its test-time-averaged
    row is scored by averaged decision values (it raised AttributeError), and when chosen it is
    calibrated on the out-of-fold scores of its views rows, folds grouped by image."""
    outcome = _flip_sweep(world, tmp_path / "report", "linear_svm")
    by_name = {r.feature_set: r for r in outcome.results}
    tta = by_name[tta_label(BACKBONE, "flip")]
    data = outcome.data
    fs = data.feature_set(tta.feature_set)
    assert tta.cv_decision is not None and len(tta.cv_decision) == len(fs.y_train)
    head, problem = experiment.chosen_head(tta, data, cv=2, seed=0)
    assert problem is None
    images = experiment.evaluated_images(tta, head, data)
    assert images.probabilities is not None
    np.testing.assert_allclose(images.probabilities.sum(axis=1), 1.0)


def test_image_cv_never_puts_an_image_on_both_sides(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = build_sweep_data(
        world["src"],
        backbones=[BACKBONE],
        pixels=False,
        views="flip",
        cache_dir=world["cache"],
        **TINY,
    )
    fs = data.feature_sets[1]
    rows_by_image = {tuple(fs.X_train[2 * i]): i for i in range(16)}
    seen: list[tuple[set[int], set[int]]] = []

    class Recording(LogisticRegression):
        def fit(self, X, y):
            images = {rows_by_image[tuple(x)] for x in X[0::2] if tuple(x) in rows_by_image}
            assert len(X) == 2 * len(images)  # every view of each fitted image, nothing else
            seen.append((images, set()))
            return super().fit(X, y)

        def predict(self, X):
            if seen and not seen[-1][1]:
                seen[-1][1].update(rows_by_image[tuple(x)] for x in X)
            return super().predict(X)

    class Result:
        feature_set = fs.name
        cv_folds = 2
        estimator = Recording(max_iter=500)

    scores = experiment._image_cv(Result(), data, seed=0, scoring="accuracy")
    assert len(scores[False]) == len(scores[True]) == 2
    assert len(seen) == 2
    for fitted, validated in seen:
        assert fitted and validated and not fitted & validated
        assert fitted | validated == set(range(16))


def _save_views_head(world: dict[str, Path], path: Path, tta: bool) -> tuple[Pipeline, list[str]]:
    train = load_features(
        world["src"],
        split="train",
        backbone=BACKBONE,
        views="flip",
        cache_dir=world["cache"],
        **TINY,
    )
    # standardised: random-weight features are tiny, and equal probabilities would hide a bug
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    head.fit(train.X, train.y)
    val = load_features(
        world["src"], split="val", backbone=BACKBONE, cache_dir=world["cache"], **TINY
    )
    card = HeadCard(
        feature_set=views_label(BACKBONE, "flip"),
        head="logreg",
        class_names=train.class_names,
        extractors=val.extractors,
        views={"policy": "flip", "n_views": 2, "test_time_averaging": tta},
    )
    save_head_card(head, path, card)
    return head, train.class_names


def test_predict_averages_over_the_views_by_default(world: dict[str, Path], tmp_path: Path) -> None:
    head_path = tmp_path / "head.joblib"
    head, names = _save_views_head(world, head_path, tta=True)
    cache = tmp_path / "fresh-cache"  # the new images' views are extracted through the cache
    pred = predict(world["src"], head_path, split="val", cache_dir=cache)
    val = load_features(
        world["src"],
        split="val",
        backbone=BACKBONE,
        views="flip",
        cache_dir=cache,
        extract_missing=False,
        **{k: v for k, v in TINY.items() if k != "workers"},
    )
    scores = head.predict_proba(val.X).reshape(6, 2, 2).mean(axis=1)
    decision = head.decision_function(val.X).reshape(6, 2).mean(axis=1)
    assert pred.views == "flip"
    assert pred.predicted == [names[int(d > 0)] for d in decision]
    assert np.allclose(pred.probabilities, scores)
    off = predict(world["src"], head_path, split="val", cache_dir=cache, tta=False)
    plain = val.only_view(0)
    assert off.views is None
    assert off.predicted == [names[i] for i in head.predict(plain.X)]
    assert np.allclose(off.probabilities, head.predict_proba(plain.X))
    assert not np.allclose(off.probabilities, pred.probabilities)
    # a head whose row did not average predicts from the plain rows unless asked
    head_path2 = tmp_path / "head2.joblib"
    _save_views_head(world, head_path2, tta=False)
    assert predict(world["src"], head_path2, split="val", cache_dir=cache).views is None
    assert predict(world["src"], head_path2, split="val", cache_dir=cache, tta=True).views == "flip"


def test_predict_cli_no_tta_and_a_plain_head_refuses_tta(
    world: dict[str, Path], tmp_path: Path, cli_env: Callable[..., dict[str, str]]
) -> None:
    head_path = tmp_path / "head.joblib"
    _save_views_head(world, head_path, tta=True)
    out = tmp_path / "p.csv"
    common = ["--split", "val", "--cache-dir", str(world["cache"]), "--head", str(head_path)]
    cmd = [sys.executable, "-m", "featurestore.cli", "predict", str(world["src"]), *common]
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=cli_env())
    assert r.returncode == 0, r.stderr
    assert "views      flip" in r.stdout
    tta_rows = list(csv.DictReader(out.open()))
    r = subprocess.run(
        [*cmd, "--no-tta", "--out", str(out)], capture_output=True, text=True, env=cli_env()
    )
    assert r.returncode == 0, r.stderr
    assert "views" not in r.stdout
    plain_rows = list(csv.DictReader(out.open()))
    assert [row["path"] for row in tta_rows] == [row["path"] for row in plain_rows]
    assert [row["p_ant"] for row in tta_rows] != [row["p_ant"] for row in plain_rows]
    # a head trained on plain rows: --tta is a one-line error
    plain_path = tmp_path / "plain.joblib"
    estimator, card = joblib.load(head_path), load_head_card(head_path)[1]
    save_head_card(estimator, plain_path, HeadCard(**{**card.__dict__, "views": None}))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "featurestore.cli",
            "predict",
            str(world["src"]),
            "--split",
            "val",
            "--cache-dir",
            str(world["cache"]),
            "--head",
            str(plain_path),
            "--tta",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert r.returncode == 1 and "trained on views" in r.stderr
    assert "Traceback" not in r.stderr


def test_head_card_views_round_trip_and_checks() -> None:
    card = HeadCard(
        feature_set="x views=crops10",
        head="logreg",
        class_names=["a", "b"],
        pixels=8,
        views={"policy": "crops10", "n_views": 10, "test_time_averaging": True},
    )
    again = HeadCard.from_json(json.loads(json.dumps(card.to_json())))
    assert again.views == card.views and again == card
    assert HeadCard.from_json({**card.to_json(), "views": None}).views is None
    legacy = card.to_json()
    del legacy["views"]
    assert HeadCard.from_json(legacy).views is None
    for bad in (
        {"policy": "crops11", "n_views": 10, "test_time_averaging": True},
        {"policy": "crops10", "n_views": 2, "test_time_averaging": True},
        {"policy": "crops10", "n_views": 10, "test_time_averaging": "yes"},
        ["crops10"],
    ):
        with pytest.raises(HeadIntegrityError, match="views"):
            HeadCard.from_json({**card.to_json(), "views": bad})
    assert get_policy("crops10").n_views == 10
