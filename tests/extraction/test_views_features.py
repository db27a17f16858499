"""load_features with views: every view a row, tagged with its image key and view index, so
that training uses every view and cross-validation keeps an image's views together."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from featurestore.api import Features, load_features
from featurestore.errors import MissingRowsError
from featurestore.extraction import extract
from featurestore.store import FeatureStore
from featurestore.views import average_views

TINY = {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32, "workers": 0}


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, make_images: Callable[..., list[Path]]
) -> dict[str, object]:
    root = tmp_path_factory.mktemp("views-features")
    make_images(root / "ds" / "train", 12, classes=("ant", "bee"), seed=1)
    make_images(root / "ds" / "val", 4, classes=("ant", "bee"), seed=2)
    cache = root / "cache"
    feats = load_features(root / "ds", split="train", views="crops10", cache_dir=cache, **TINY)
    return {"root": root / "ds", "cache": cache, "feats": feats}


def test_every_view_is_a_row_image_major(world: dict[str, object]) -> None:
    feats = world["feats"]
    assert isinstance(feats, Features)
    assert feats.X.shape == (12 * 10, 1024) and feats.X.dtype == np.float32
    assert (feats.views, feats.n_views, len(feats)) == ("crops10", 10, 120)
    assert feats.view.tolist() == list(range(10)) * 12
    assert feats.keys[:10] == [feats.keys[0]] * 10 and len(set(feats.keys)) == 12
    assert feats.y.tolist() == [0] * 60 + [1] * 60  # records sorted by class, then path
    assert feats.labels[59:61] == ["ant", "bee"] and feats.paths[9] == feats.paths[0]
    assert feats.paths[10] != feats.paths[0]
    # each row is its view's row in its view's store
    result = extract(
        world["root"], split="train", views="crops10", cache_dir=world["cache"], **TINY
    )
    for r in (0, 13, 57, 119):
        store = FeatureStore(result.view_stores[feats.view[r]])
        assert np.array_equal(store.read([feats.keys[r]])[0], feats.X[r])


def test_view_0_rows_are_the_plain_rows(world: dict[str, object]) -> None:
    feats = world["feats"]
    plain = load_features(world["root"], split="train", cache_dir=world["cache"], **TINY)
    first = feats.only_view(0)
    assert np.array_equal(first.X, plain.X) and first.keys == plain.keys
    assert first.y.tolist() == plain.y.tolist() and first.view.tolist() == [0] * 12
    assert plain.views is None and plain.view.tolist() == [0] * 12 and plain.n_views == 1
    third = feats.only_view(3)
    assert third.keys == plain.keys and not np.array_equal(third.X, plain.X)
    assert third.view.tolist() == [3] * 12


def test_grouped_cv_never_splits_an_image_s_views(world: dict[str, object]) -> None:
    """StratifiedGroupKFold with the image keys as groups: every fold holds all 10 views of
    its images and none of another fold's. A row key per view (or a shuffled key order) would
    fail here; plain StratifiedKFold, the negative control, does split views."""
    feats = world["feats"]
    keys = np.array(feats.keys)
    cv = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)
    for train, test in cv.split(feats.X, feats.y, groups=feats.keys):
        assert not set(keys[train]) & set(keys[test]), "an image's views on both sides"
        for k in set(keys[test]):
            assert (keys[test] == k).sum() == 10
    leaked = [
        set(keys[train]) & set(keys[test])
        for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(feats.X, feats.y)
    ]
    assert any(leaked)


def test_test_time_averaging(world: dict[str, object]) -> None:
    feats = world["feats"]
    scores = np.arange(len(feats) * 2, dtype=np.float64).reshape(-1, 2)
    per_image, keys = feats.average_views(scores)
    assert keys == feats.keys[::10] and per_image.shape == (12, 2)
    assert np.allclose(per_image[1], scores[10:20].mean(axis=0))
    # rows in any order and a different number of views per image
    avg, order = average_views(np.array([1.0, 5.0, 2.0, 4.0, 9.0]), ["a", "b", "a", "b", "a"])
    assert order == ["a", "b"] and np.allclose(avg, [4.0, 4.5])
    with pytest.raises(ValueError, match="3 score rows for 2 keys"):
        average_views(np.zeros(3), ["a", "b"])


def test_missing_views_are_an_error_that_names_the_command(
    world: dict[str, object], tmp_path: Path
) -> None:
    root, cache = world["root"], world["cache"]
    with pytest.raises(MissingRowsError, match="--views random16"):
        load_features(
            root, split="train", views="random16", cache_dir=cache, extract_missing=False, **TINY
        )
    got = load_features(
        root, split="train", views="flip", cache_dir=cache, extract_missing=False, **TINY
    )
    assert got.X.shape == (24, 1024)  # flip's views are crops10's views 0 and 5
    crops = world["feats"]
    assert np.array_equal(got.X[1::2], crops.X[crops.view == 5])


def test_concatenated_backbones_with_views(world: dict[str, object]) -> None:
    both = load_features(
        world["root"],
        backbone="mobilenet_v3_small+mobilenet_v3_small",
        split="val",
        views="flip",
        cache_dir=world["cache"],
        weights="none",
        input_size=32,
        workers=0,
    )
    assert both.X.shape == (8, 2048) and np.array_equal(both.X[:, :1024], both.X[:, 1024:])
    assert both.view.tolist() == [0, 1] * 4
