"""Malformed and careless HDF5 sources: each is a clear SourceError naming the file and
dataset, a skip with its reason, or a documented conversion; never a traceback, never a read
of the whole dataset into memory, and every file the reader opens is closed again."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import featurestore.sources.arrays as arrays
from featurestore.sources import SourceError, open_source


def _write(path: Path, **datasets: Any) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


def test_a_huge_declared_dataset_that_holds_no_data_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:  # 2.86 TiB declared, nothing stored
        f.create_dataset("x", (10**6, 1024, 1024, 3), "u1")
        f.create_dataset("c_x", (10**6, 1024, 1024, 3), "u1", chunks=(1, 256, 256, 3))
    with pytest.raises(SourceError) as err:
        open_source(path, images_key="x")
    assert str(err.value) == (
        f"{path}: no images found; 1 file(s) skipped, e.g. {path}::x[0:1000000]: never "
        "written (would read as the fill value)"
    )
    with pytest.raises(SourceError, match=r"c_x\[0:1000000\]: never written"):
        open_source(path, images_key="c_x")


def test_images_never_written_are_skipped_and_the_written_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", (10, 4, 4), "u1", chunks=(2, 4, 2))
        d[0:4] = 7  # chunk rows 0 and 1
        d[6:7, :, 0:2] = 9  # half of chunk row 3: images 6 and 7 are not whole
    src = open_source(path)
    assert [r.path.split("::")[1] for r in src.records] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    assert [(s.path.split("::")[1], s.reason) for s in src.skipped] == [
        ("x[4:10]", "never written (would read as the fill value)")
    ]


def test_images_are_read_in_blocks_never_the_whole_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(0).random((50, 8, 8, 3)).astype(np.float32)
    u = np.random.default_rng(1).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    path = _write(tmp_path / "blocks.h5", f_x=x, u_x=u)
    block = 10 * 8 * 8 * 3 * 4  # ten float images
    monkeypatch.setattr(arrays, "BLOCK_BYTES", block)
    reads: list[int] = []
    getitem, read_direct = h5py.Dataset.__getitem__, h5py.Dataset.read_direct

    def spy_getitem(self: h5py.Dataset, index: Any) -> Any:
        out = getitem(self, index)
        reads.append(np.asarray(out).nbytes)
        return out

    def spy_read_direct(self: h5py.Dataset, dest: np.ndarray, source: Any, *args: Any) -> None:
        read_direct(self, dest, source, *args)
        rows = range(self.shape[0])[source]
        reads.append(len(rows) * self.dtype.itemsize * int(np.prod(self.shape[1:])))

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy_getitem)
    monkeypatch.setattr(h5py.Dataset, "read_direct", spy_read_direct)
    src = open_source(path)
    assert len(src.records) == 100
    assert reads and max(reads) <= block
    assert sum(reads) <= 2 * x.nbytes + u.nbytes  # floats: range, then keys; uint8: keys


@pytest.mark.parametrize(
    ("datasets", "keys", "message"),
    [
        (
            {"x": np.zeros((4, 4, 4), np.uint8), "y": np.arange(2)},
            ("x", "y"),
            r"short\.h5::y: 2 labels \(shape \(2,\)\) for 4 images",
        ),
        ({"x": np.uint8(5)}, ("x", None), r"::x: shape \(\) is not \(N, H, W\)"),
        ({"x": np.zeros((3, 4), np.uint8)}, ("x", None), r"::x: shape \(3, 4\) is not"),
        (
            {"x": np.zeros((2, 4, 4), np.uint8)},
            ("x", "nope"),
            r"::nope: no dataset 'nope'; has \['x'\]",
        ),
        ({"s": np.array([[[b"ab"]]])}, ("s", None), r"::s: values of dtype \|S2 are not pixels"),
        (
            {"c": np.zeros((2, 3, 3), dtype=[("r", "u1"), ("g", "u1")])},
            ("c", None),
            r"::c: values of dtype .* are not pixels",
        ),
        ({"x": np.zeros((0, 4, 4), np.uint8)}, ("x", None), r"::x: holds no images \(N = 0\)"),
        ({"x": np.zeros((2, 0, 4), np.uint8)}, ("x", None), r"::x: .* holds no pixels"),
        (
            {"x": np.zeros((2, 5, 6, 7), np.uint8)},
            ("x", None),
            r"::x: an image array has 1, 3 or 4 channels on its first or last axis",
        ),
        (
            {"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.0, 0.7])},
            ("x", "y"),
            r"::y: float labels must be whole numbers; index 1 holds 0\.7 \(1 such\)",
        ),
        (
            {"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.0, np.nan])},
            ("x", "y"),
            r"::y: float labels must be whole numbers; index 1 holds nan",
        ),
        (
            {"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros((2, 2), "c8")},
            ("x", "y"),
            r"::y: 4 labels \(shape \(2, 2\)\) for 2 images",
        ),
    ],
)
def test_named_datasets_that_cannot_be_read_are_a_clear_error(
    tmp_path: Path, datasets: dict[str, Any], keys: tuple[str, str | None], message: str
) -> None:
    path = _write(tmp_path / "short.h5", **datasets)
    with pytest.raises(SourceError, match=message) as err:
        open_source(path, images_key=keys[0], labels_key=keys[1])
    assert str(err.value).startswith(str(path))


def test_a_group_named_as_images_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        f.create_group("g")["x"] = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(SourceError, match=r"g\.h5::g: a group, not a dataset of images"):
        open_source(path, images_key="g")
    assert len(open_source(path, images_key="g/x").records) == 2  # a path inside the file


@pytest.mark.parametrize(
    "body",
    [b"", b"not hdf5 at all", b"\x89HDF\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "text", "truncated-signature"],
)
def test_a_corrupt_h5_file_is_a_source_error_naming_it(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "bad.h5"
    path.write_bytes(body)
    with pytest.raises(SourceError, match=r"bad\.h5: not a readable HDF5 file") as err:
        open_source(path)
    assert str(err.value).startswith(str(path))


def test_a_real_h5_file_cut_short_is_a_source_error(tmp_path: Path) -> None:
    whole = _write(tmp_path / "whole.h5", x=np.ones((64, 16, 16, 3), np.uint8))
    data = whole.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut\.h5"):
        open_source(tmp_path / "cut.h5")


def test_in_a_folder_of_h5_files_a_bad_file_is_skipped_with_its_reason(tmp_path: Path) -> None:
    _write(tmp_path / "a_train.h5", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    (tmp_path / "b_test.h5").write_bytes(b"junk")
    _write(tmp_path / "c_test.h5", meta=np.zeros(3))  # no image arrays
    src = open_source(tmp_path)
    assert src.kind == "hdf5" and len(src.records) == 2
    assert [(Path(s.path).name, s.reason.split(" (")[0]) for s in src.skipped] == [
        ("b_test.h5", "not a readable HDF5 file"),
        ("c_test.h5", "no image arrays found"),
    ]


def test_labels_key_alone_labels_every_detected_images_dataset(tmp_path: Path) -> None:
    path = _write(tmp_path / "k.h5", x=np.zeros((2, 4, 4), np.uint8), kinds=np.array([3, 4]))
    assert [r.label for r in open_source(path, labels_key="kinds").records] == ["3", "4"]


def test_label_conversions_are_documented_ones(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 4), np.uint8)
    floats = _write(tmp_path / "f.h5", x=x, y=np.array([-2.0, 0.0, 1.0]))
    assert [r.label for r in open_source(floats, labels_key="y").records] == ["-2", "0", "1"]
    text = _write(tmp_path / "t.h5", x=x, y=np.array([b"cat", b"dog", b"cat"]))
    assert [r.label for r in open_source(text, labels_key="y").records] == ["cat", "dog", "cat"]
    vlen = tmp_path / "v.h5"
    with h5py.File(vlen, "w") as f:
        f["x"] = x
        f.create_dataset("y", data=["ant", "bee", "ant"], dtype=h5py.string_dtype())
    assert [r.label for r in open_source(vlen, labels_key="y").records] == ["ant", "bee", "ant"]
    bools = _write(tmp_path / "b.h5", x=x, y=np.array([True, False, True]))
    assert [r.label for r in open_source(bools).records] == ["1", "0", "1"]
    enum = tmp_path / "e.h5"
    with h5py.File(enum, "w") as f:
        f["x"] = x
        kinds = h5py.enum_dtype({"ant": 0, "bee": 1}, basetype="i1")
        f.create_dataset("y", data=np.array([1, 0, 2], "i1"), dtype=kinds)
        f["list_classes"] = np.array([b"zero", b"one", b"two"])  # the enum's names win
    assert [r.label for r in open_source(enum).records] == ["bee", "ant", "2"]


def test_class_names_that_are_not_utf8_or_given_twice_are_kept_apart_with_a_warning(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path / "cls.h5",
        x=np.zeros((4, 4, 4), np.uint8),
        y=np.array([0, 1, 2, 3]),
        list_classes=np.array([b"caf\xe9", b"cat", b"cat", b""]),
    )
    src = open_source(path)
    assert [r.label for r in src.records] == ["caf\\xe9", "cat (1)", "cat (2)", "3"]
    where = f"{path}::list_classes"
    assert src.warnings == [
        f"{where}: name b'caf\\xe9' is not UTF-8 text; read as 'caf\\\\xe9'",
        f"{where}: class 3 has an empty name; named 3",
        f"{where}: class name 'cat' given 2 times (entries [1, 2]); kept apart as "
        "['cat (1)', 'cat (2)']",
    ]


def test_class_names_that_cannot_be_used_are_ignored_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
        f["y"] = np.array([0, 1])
        f.create_group("list_classes")
    src = open_source(path)
    assert [r.label for r in src.records] == ["0", "1"]
    assert src.warnings == [
        f"{path}::list_classes: a group, not a dataset of names; class names not used"
    ]


def test_every_file_the_reader_opens_is_closed(tmp_path: Path) -> None:
    """HDF5 refuses to open for writing a file this process still holds open."""
    good = _write(tmp_path / "good.h5", x=np.zeros((2, 4, 4), np.uint8))
    bad = _write(tmp_path / "bad.h5", x=np.zeros((2, 4, 4), np.uint8), y=np.arange(5))
    src = open_source(good)
    _write(good, x=np.ones((2, 4, 4), np.uint8))  # the scan closed it
    with pytest.raises(SourceError):
        open_source(bad, images_key="x", labels_key="y")
    _write(bad, x=np.zeros((1, 4, 4), np.uint8))  # closed after an error too
    src.loader.load(src.records[0])
    src.loader.close()
    _write(good, x=np.ones((2, 4, 4), np.uint8))  # the loader closed it


def test_a_lone_train_file_reports_only_its_train_split(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "cats_train.h5", x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 0])
    )
    src = open_source(path)
    assert src.splits == ["train"] and {r.split for r in src.records} == {"train"}
    with pytest.raises(SourceError, match=r"split 'test' not in .*; it has \['train'\]"):
        src.select("test")
    folder = tmp_path / "only"
    folder.mkdir()
    path.rename(folder / path.name)
    assert open_source(folder).splits == ["train"]


def test_a_converted_dataset_with_an_unwritten_head_keys_the_right_images(
    tmp_path: Path,
) -> None:
    """Found by the generated test: the one-block shortcut once keyed image 1 as image 0."""
    path = tmp_path / "head.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", (3, 2, 2), "u2", chunks=(1, 2, 2))
        d[1] = [[0, 300], [600, 900]]
        d[2] = [[900, 900], [900, 900]]
    src = open_source(path)
    assert [r.path.split("::")[1] for r in src.records] == ["x[1]", "x[2]"]
    assert [s.path.split("::")[1] for s in src.skipped] == ["x[0]"]
    assert np.asarray(src.loader.load(src.records[0]))[..., 0].tolist() == [[0, 85], [170, 255]]
    assert src.records[0].key != src.records[1].key


def test_float16_labels_are_read_without_overflow_warnings(tmp_path: Path) -> None:
    path = _write(tmp_path / "f16.h5", x=np.zeros((2, 4, 4), np.uint8), y=np.array([1, 2], "f2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.label for r in open_source(path, labels_key="y").records] == ["1", "2"]


def test_a_huge_declared_class_name_dataset_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "names.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
        f["y"] = np.array([0, 1])
        f.create_dataset("list_classes", (10**13,), "S4", chunks=(1000,))  # nothing stored
    src = open_source(path)
    assert [r.label for r in src.records] == ["0", "1"]
    assert src.warnings == [
        f"{path}::list_classes: 10,000,000,000,000 names (more than 100,000); class names not used"
    ]
