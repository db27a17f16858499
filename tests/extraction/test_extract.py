"""Extraction end to end on tiny generated images, and on the real array dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

from featurestore.api import load_features
from featurestore.extraction import extract
from featurestore.sources import open_source
from featurestore.store import FeatureStore, verify

TINY = {"backbone": "resnet18", "weights": "none", "input_size": 32}


def make_folder(root: Path, per_class: int = 6, classes=("cat", "dog"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{c}_{i}.png")
    return root


def test_second_run_does_no_forward_pass_and_rows_are_stable(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = extract(src, cache_dir=cache, batch_size=4, workers=0, **TINY)
    assert (first.n_images, first.n_extracted, first.n_reused) == (12, 12, 0)
    assert first.feature_dim == 512
    keys, rows = FeatureStore(first.store).read_all()
    second = extract(src, cache_dir=cache, batch_size=5, workers=1, **TINY)
    assert (second.n_extracted, second.n_reused) == (0, 12)
    assert "forward" not in second.timings  # the model was never built
    keys2, rows2 = FeatureStore(second.store).read_all()
    assert keys == keys2 and np.array_equal(rows, rows2)
    assert verify(first.store).ok


def test_copied_folder_reuses_rows_and_changes_extract_only_those(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "a")
    cache = tmp_path / "cache"
    extract(src, cache_dir=cache, batch_size=4, workers=0, **TINY)
    other = tmp_path / "project_b" / "renamed"
    shutil.copytree(src, other)
    assert extract(other, cache_dir=cache, workers=0, **TINY).n_extracted == 0
    # add two images and edit one: exactly those three are extracted
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(other / "cat" / "new1.png")
    Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(other / "dog" / "new2.png")
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(other / "dog" / "dog_0.png")
    again = extract(other, cache_dir=cache, workers=0, **TINY)
    assert (again.n_extracted, again.n_reused) == (3, 11)
    assert len(FeatureStore(again.store).keys()) == 15


def test_identical_images_are_extracted_once(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "imgs", per_class=2)
    shutil.copy(src / "cat" / "cat_0.png", src / "dog" / "dupe.png")
    r = extract(src, cache_dir=tmp_path / "c", workers=0, **TINY)
    assert (r.n_images, r.n_unique, r.n_extracted) == (5, 4, 4)


def test_fingerprint_changes_with_what_changes_numbers(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "imgs", per_class=2)
    cache = tmp_path / "c"
    base = extract(src, cache_dir=cache, workers=0, **TINY)
    other_size = extract(src, cache_dir=cache, workers=0, **{**TINY, "input_size": 40})
    other_node = extract(src, cache_dir=cache, workers=0, nodes=["layer3"], **TINY)
    assert len({base.store, other_size.store, other_node.store}) == 3
    assert other_node.feature_dim == 256
    assert other_size.n_extracted == other_node.n_extracted == 4


def test_load_features_aligns_rows_labels_and_splits(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_folder(root / "train", per_class=4)
    make_folder(root / "val", per_class=2, seed=1)
    cache = tmp_path / "c"
    src = open_source(root)
    assert src.splits == ["train", "val"] and src.class_names == ["cat", "dog"]
    train = load_features(root, split="train", cache_dir=cache, workers=0, **TINY)
    val = load_features(root, split="val", cache_dir=cache, workers=0, **TINY)
    assert train.X.shape == (8, 512) and val.X.shape == (4, 512)
    assert train.y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    store = FeatureStore(train.extractors[0].store)
    assert np.array_equal(store.read(train.keys), train.X)
    both = load_features(
        root,
        backbone=["resnet18", "resnet18"],
        split="val",
        cache_dir=cache,
        workers=0,
        weights="none",
        input_size=32,
    )
    assert both.X.shape == (4, 1024) and np.array_equal(both.X[:, :512], val.X)


def test_csv_manifest_with_splits(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs", per_class=2)
    (tmp_path / "m.csv").write_text(
        "path,label,split\nimgs/cat/cat_0.png,cat,train\nimgs/dog/dog_0.png,dog,train\n"
        "imgs/cat/cat_1.png,cat,test\nimgs/dog/dog_1.png,dog,test\n"
    )
    src = open_source(tmp_path / "m.csv")
    assert src.splits == ["test", "train"] and len(src.select("test")) == 2
    r = extract(tmp_path / "m.csv", cache_dir=tmp_path / "c", workers=0, **TINY)
    assert r.n_extracted == 4 and not r.skipped


def test_hdf5_arrays_source_detects_datasets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "train_x.h5", "w") as f:
        f["train_set_x"] = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
        f["train_set_y"] = np.array([0, 1, 0, 1, 1])
        f["list_classes"] = np.array([b"no", b"yes"])
    src = open_source(tmp_path / "train_x.h5")
    assert [r.label for r in src.records] == ["no", "yes", "no", "yes", "yes"]
    assert {r.split for r in src.records} == {"train"}
    r = extract(src, cache_dir=tmp_path / "c", workers=0, **TINY)
    assert r.n_extracted == 5


@pytest.mark.skipif(not (SHARED / "catvnoncat").is_dir(), reason="../shared/datasets absent")
def test_catvnoncat_extracts_209_train_and_50_test_rows_with_labels(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    src = open_source(SHARED / "catvnoncat")
    train = load_features(src, split="train", cache_dir=cache, **TINY)
    test = load_features(src, split="test", cache_dir=cache, **TINY)
    assert train.X.shape == (209, 512) and test.X.shape == (50, 512)
    assert train.class_names == ["cat", "non-cat"]
    assert train.labels.count("cat") == 72 and train.labels.count("non-cat") == 137
    assert test.labels.count("cat") == 33 and test.labels.count("non-cat") == 17


def test_cli_extract_json_ls_info_verify(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "imgs", per_class=2)
    cache = tmp_path / "c"
    cmd = [sys.executable, "-m", "featurestore.cli"]
    args = [
        "--backbone",
        "resnet18",
        "--weights",
        "none",
        "--input-size",
        "32",
        "--cache-dir",
        str(cache),
        "--workers",
        "0",
    ]
    out = subprocess.run(
        [*cmd, "extract", str(src), *args, "--json"], capture_output=True, text=True, check=True
    )
    summary = json.loads(out.stdout)
    assert summary["extracted"] == 4 and summary["skipped"] == 0
    assert summary["feature_dim"] == 512 and summary["images_per_s"] > 0
    store = summary["store"]
    ls = subprocess.run(
        [*cmd, "ls", "--cache-dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(ls.stdout)[0]["n_rows"] == 4
    info = subprocess.run(
        [*cmd, "info", store, "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(info.stdout)["spec"]["backbone"] == "resnet18"
    ver = subprocess.run([*cmd, "verify", store], capture_output=True, text=True)
    assert ver.returncode == 0 and "OK" in ver.stdout
    human = subprocess.run([*cmd, "extract", str(src), *args], capture_output=True, text=True)
    assert (
        human.returncode == 0 and "extracted  0" in human.stdout and "reused     4" in human.stdout
    )


def test_package_exports_the_functions_whatever_was_imported_first() -> None:
    """`from featurestore import extract` is the function, not a module of the same name."""
    import subprocess
    import sys

    code = (
        "import featurestore.api, featurestore.extraction\n"
        "from featurestore import extract, load_features, open_source\n"
        "assert callable(extract) and extract.__module__ == 'featurestore.extraction', extract\n"
        "assert callable(load_features) and callable(open_source)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
