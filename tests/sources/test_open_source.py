"""open_source: which kind a path is, and the sources that are an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from featurestore.sources import SourceError, open_source


def test_each_kind_is_recognised(tmp_path: Path, make_images: Any) -> None:
    paths = make_images(tmp_path / "imgs", 2)
    (tmp_path / "m.csv").write_text(f"{paths[0]},a\n")
    with h5py.File(tmp_path / "arrays.H5", "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
    kinds = {
        tmp_path / "imgs": "folder",
        tmp_path / "m.csv": "csv",
        tmp_path / "arrays.H5": "hdf5",
        paths[1]: "files",
        "builtin:digits": "builtin",
    }
    for source, kind in kinds.items():
        src = open_source(source)
        assert src.kind == kind and src.records, source
    assert open_source(str(tmp_path / "imgs")).records == open_source(tmp_path / "imgs").records


def test_a_folder_of_array_files_with_images_beside_them_is_an_image_folder(
    tmp_path: Path, make_images: Any
) -> None:
    make_images(tmp_path / "deep" / "down", 1, ())
    with h5py.File(tmp_path / "arrays.h5", "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
    src = open_source(tmp_path)
    assert src.kind == "folder" and len(src.records) == 1
    assert [(Path(s.path).name, s.reason) for s in src.skipped] == [
        ("arrays.h5", "not an image file (extension '.h5')")
    ]


def _file(name: str, data: bytes) -> Any:
    def make(root: Path) -> Path:
        (root / name).write_bytes(data)
        return root / name

    return make


def _empty_class_folder(root: Path) -> Path:
    (root / "c").mkdir()
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "absent", r"no such file or folder \(sources: an image folder"),
        (lambda root: root, "no images found$"),
        (_empty_class_folder, "no images found$"),
        (_file("a.txt", b"x"), r"not a folder, \.csv, \.h5 or image file"),
        (
            _file("empty.png", b""),
            r"no images found; 1 file\(s\) skipped, e\.g\. .*empty\.png: empty file",
        ),
    ],
)
def test_sources_without_images_are_a_source_error(tmp_path: Path, make: Any, message: str) -> None:
    source = make(tmp_path)
    with pytest.raises(SourceError, match=message) as err:
        open_source(source)
    assert str(err.value).startswith(str(source))
