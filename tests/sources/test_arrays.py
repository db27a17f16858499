"""HDF5 image arrays: which datasets are images, labels and class names, splits from names,
named datasets, the loader, and the real catvnoncat files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SHARED

from featurestore.decode import ArrayFormat, array_to_image
from featurestore.keys import array_key
from featurestore.sources import SourceError, open_source
from featurestore.sources.arrays import ArrayLoader, detect_arrays, from_hdf5, split_from

CATVNONCAT = SHARED / "catvnoncat"


def _write(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


def test_image_label_and_class_datasets_are_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = _write(
        tmp_path / "train_x.h5",
        train_set_x=images,
        train_set_y=np.array([[0, 1, 0, 1, 9]]),  # any shape of the right size; 9: no class
        list_classes=np.array([b"no", b"yes"]),
    )
    src = open_source(path)
    assert (src.name, src.kind, src.skipped, src.warnings) == (str(path), "hdf5", [], [])
    assert [r.label for r in src.records] == ["no", "yes", "no", "yes", "9"]
    assert {r.split for r in src.records} == {"train"}
    r = src.records[3]
    assert r.key == array_key(images[3]) and r.path == f"{path}::train_set_x[3]"
    fmt = ArrayFormat("|u1", (16, 16, 3), channels_first=False, scale=1.0)  # uint8: as is
    assert r.ref == ("h5", str(path), "train_set_x", 3, fmt)
    assert np.array_equal(np.asarray(src.loader.load(r)), images[3])


@pytest.mark.parametrize(
    ("images", "labels"),
    [
        ("x", "y"),
        ("train_x_orig", "train_y_orig"),
        ("images", "labels"),
        ("image", "label"),
        ("data", "labels"),
    ],
)
def test_label_dataset_name_guesses(tmp_path: Path, images: str, labels: str) -> None:
    arrays = {images: np.zeros((2, 4, 4), np.uint8), labels: np.array([1, 0], np.int64)}
    with h5py.File(_write(tmp_path / "a.h5", **arrays), "r") as f:
        assert detect_arrays(f) == [(images, labels)]


def test_what_is_not_an_image_or_label_dataset(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.h5",
        flat=np.zeros((4, 10), np.uint8),  # 2-D: not images
        channels=np.zeros((2, 5, 6, 5), np.uint8),  # 5 channels at either end
        empty=np.zeros((0, 4, 4), np.uint8),
        text=np.array([[[b"a"]]]),
        x=np.zeros((3, 4, 4), np.float32),
        y=np.array([0.0, 1.0, 0.0]),  # float labels are not labels
        nchw=np.zeros((2, 3, 8, 8), np.uint8),
        nchw_y=np.array([1, 2, 3]),  # wrong length
    )
    with h5py.File(path, "r") as f:
        assert detect_arrays(f) == [("nchw", None), ("x", None)]
    src = open_source(path)
    assert src.warnings == [
        f"{path}::nchw: no labels dataset found",
        f"{path}::x: no labels dataset found",
    ]
    assert [r.label for r in src.records] == [None] * 5
    assert src.loader.load(src.records[0]).size == (8, 8)  # channels first, moved last


@pytest.mark.parametrize(
    ("names", "split"),
    [
        (("train_set_x", "f"), "train"),
        (("x", "test_catvnoncat"), "test"),
        (("X_VAL", "f"), "val"),
        (("validation-images", "f"), "validation"),
        (("pretrained", "trainer"), None),  # not whole words
        (("x", "f"), None),
    ],
)
def test_split_from_dataset_then_file_name(names: tuple[str, str], split: str | None) -> None:
    assert split_from(*names) == split


def test_named_datasets_and_their_errors(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.h5",
        pics=np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        kinds=np.array([7, 8]),
        meta=np.zeros(3),
    )
    src = open_source(path, images_key="pics", labels_key="kinds")
    assert [(r.path, r.label) for r in src.records] == [
        (f"{path}::pics[0]", "7"),
        (f"{path}::pics[1]", "8"),
    ]
    assert open_source(path, images_key="pics").warnings == [
        f"{path}::pics: no labels dataset found"
    ]
    with pytest.raises(SourceError, match=r"no dataset 'nope'; has \['kinds', 'meta', 'pics'\]"):
        open_source(path, images_key="nope")
    _write(tmp_path / "b.h5", meta=np.zeros(3))
    with pytest.raises(SourceError, match=r"no image arrays found .*--images-key"):
        open_source(tmp_path / "b.h5")


def test_a_folder_of_array_files_is_one_source(tmp_path: Path) -> None:
    _write(tmp_path / "b_test.h5", x=np.ones((2, 4, 4), np.uint8), y=np.array([0, 1]))
    _write(tmp_path / "a_train.hdf5", x=np.zeros((3, 4, 4), np.uint8), y=np.array([1, 1, 0]))
    (tmp_path / "README.txt").write_text("not an image")
    src = open_source(tmp_path)
    assert (src.name, src.kind) == (str(tmp_path), "hdf5")
    assert [(Path(r.path).name, r.split, r.label) for r in src.records] == [
        ("a_train.hdf5::x[0]", "train", "1"),
        ("a_train.hdf5::x[1]", "train", "1"),
        ("a_train.hdf5::x[2]", "train", "0"),
        ("b_test.h5::x[0]", "test", "0"),
        ("b_test.h5::x[1]", "test", "1"),
    ]
    assert from_hdf5([tmp_path / "b_test.h5"]).name == str(tmp_path / "b_test.h5")


def test_the_loader_opens_each_file_once(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).random((2, 5, 4)).astype(np.float32)  # floats in [0, 1]
    path = _write(tmp_path / "f.h5", x=arr)
    loader = ArrayLoader()
    first = loader.load(("h5", str(path), "x", 1), draft_size=16)
    assert np.array_equal(np.asarray(first), np.asarray(array_to_image(arr[1])))
    handle = loader._files[str(path)]
    loader.load(("h5", str(path), "x", 0), draft_size=None)
    assert loader._files == {str(path): handle}


@pytest.mark.skipif(not CATVNONCAT.is_dir(), reason=f"real dataset not found at {CATVNONCAT}")
def test_catvnoncat_gives_209_train_and_50_test_images_with_their_classes() -> None:
    src = open_source(CATVNONCAT)
    assert (src.name, src.kind, src.warnings) == (str(CATVNONCAT), "hdf5", [])
    assert Counter((r.split, r.label) for r in src.records) == {
        ("train", "cat"): 72,
        ("train", "non-cat"): 137,
        ("test", "cat"): 33,
        ("test", "non-cat"): 17,
    }
    assert src.class_names == ["cat", "non-cat"] and src.splits == ["test", "train"]
    test_file = CATVNONCAT / "test_catvnoncat.h5"
    assert src.records[0].path == f"{test_file}::test_set_x[0]"  # files in sorted order
    with h5py.File(CATVNONCAT / "train_catvnoncat.h5", "r") as f:
        images, labels = f["train_set_x"][...], f["train_set_y"][...]
    train = src.select("train")
    assert [r.key for r in train] == [array_key(a) for a in images]
    assert [r.label for r in train] == [["non-cat", "cat"][int(v)] for v in labels]
    assert np.array_equal(np.asarray(src.loader.load(train[208])), images[208])
    one = open_source(test_file)
    assert [r.key for r in one.records] == [r.key for r in src.select("test")]
