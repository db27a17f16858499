"""Careless CSV manifests: rows without a split are kept and counted, a header in any column
order is a header, paths the system cannot look up are skipped with their line, and a FIFO
named like a manifest is refused without being opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fifo_sentinel import FifoSentinel

from featurestore.sources import SourceError, open_source


def _view(src: Any) -> list[tuple[str, str | None, str | None]]:
    return [(Path(r.path).name, r.label, r.split) for r in src.records]


def test_rows_with_an_empty_split_cell_are_kept_and_counted(
    tmp_path: Path, make_images: Any
) -> None:
    a, b, c = make_images(tmp_path / "imgs", 3, ("x",))
    m = tmp_path / "m.csv"
    m.write_text(f"path,label,split\n{a},cat,train\n{b},dog,\n{c},cat,test\n")
    src = open_source(m)
    assert _view(src) == [(a.name, "cat", "train"), (b.name, "dog", None), (c.name, "cat", "test")]
    assert src.warnings == [
        f"1 of 3 images have no split (e.g. {b}); a sweep that uses the splits leaves them out"
    ]


def test_a_header_in_any_column_order_is_a_header(tmp_path: Path, make_images: Any) -> None:
    a, b = make_images(tmp_path / "imgs", 2, ("x",))
    m = tmp_path / "m.csv"
    m.write_text(f"label,path\ncat,{a}\ndog,imgs/x/{b.name}\n")
    src = open_source(m)
    assert _view(src) == [(a.name, "cat", None), (b.name, "dog", None)]
    assert src.skipped == []
    data_row = tmp_path / "d.csv"  # a label named "path" in a row that names a file: data
    data_row.write_text(f"imgs/x/{a.name},path\n")
    assert _view(open_source(data_row)) == [(a.name, "path", None)]


def test_a_header_naming_a_column_twice_is_a_source_error(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("path,label,Label\na.png,x,y\n")
    with pytest.raises(SourceError, match=r"m\.csv: the header names \['label'\] twice"):
        open_source(m)


def test_paths_the_system_cannot_look_up_are_skipped_with_their_line(
    tmp_path: Path, make_images: Any
) -> None:
    (a,) = make_images(tmp_path / "imgs", 1, ("x",))
    m = tmp_path / "m.csv"
    long = "d" * 300 + ".png"
    m.write_bytes(f"path,label\n{a},ok\n{long},x\nnul\0name.png,y\n".encode())
    src = open_source(m)
    assert _view(src) == [(a.name, "ok", None)]
    assert [(Path(s.path).name, s.reason) for s in src.skipped] == [
        (long, "cannot read: File name too long (manifest line 3)"),
        ("nul\0name.png", "cannot read: embedded null byte (manifest line 4)"),
    ]


def test_a_fifo_named_like_a_manifest_is_refused_without_being_opened(tmp_path: Path) -> None:
    with FifoSentinel(tmp_path / "m.csv") as sentinel:
        with pytest.raises(SourceError, match=r"m\.csv: not a regular file \(a FIFO\)"):
            open_source(sentinel.path)
    assert sentinel.opened == 0


def test_a_manifest_that_cannot_be_read_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(SourceError, match=r"dir\.csv: not a folder|dir\.csv: no images"):
        open_source(tmp_path / "dir.csv")
    (tmp_path / "gone.csv").symlink_to("nowhere.csv")
    with pytest.raises(SourceError, match=r"gone\.csv: no such file or folder"):
        open_source(tmp_path / "gone.csv")


def test_a_row_with_blank_cells_is_never_a_header(tmp_path: Path, make_images: Any) -> None:
    """Found by the generated test: ``,,PATH`` (no path, split 'PATH') once named the columns."""
    (a,) = make_images(tmp_path / "imgs", 1, ("x",))
    m = tmp_path / "m.csv"
    m.write_text(f",,PATH\nimgs/x/{a.name},cat,train\n")
    src = open_source(m)
    assert _view(src) == [(a.name, "cat", "train")]
    assert [(s.path, s.reason) for s in src.skipped] == [(f"{m}:1", "no path (manifest line 1)")]
