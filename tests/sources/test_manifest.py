"""CSV manifests: header or not, columns, line numbers in skip reasons, paths relative to the
manifest, and the manifests that are an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from featurestore.sources import SourceError, open_source
from featurestore.sources.manifest import from_csv


def _images(tmp_path: Path, make_images: Any) -> list[Path]:
    return make_images(tmp_path / "imgs", 3, ("a",))


def _view(src: Any) -> list[tuple[str, str | None, str | None]]:
    return [(Path(r.path).name, r.label, r.split) for r in src.records]


def test_header_names_the_columns_in_any_order(tmp_path: Path, make_images: Any) -> None:
    a, b, c = _images(tmp_path, make_images)
    m = tmp_path / "m.csv"
    m.write_text(
        "\ufeffPath , Split,Label,extra\n"  # a byte-order mark, case and spaces are fine
        f"imgs/a/{a.name},train,cat,x\n"
        f"imgs/a/{b.name}, , dog \n"  # blank split: None; a short row
        f"{c},test\n"  # an absolute path, no label
    )
    src = from_csv(m)
    assert (src.name, src.kind) == (str(m), "csv")
    assert _view(src) == [(a.name, "cat", "train"), (b.name, "dog", None), (c.name, None, "test")]
    assert src.records[0].path == str(tmp_path / "imgs" / "a" / a.name)  # relative to the CSV
    assert src.records[0].ref == ("file", src.records[0].path)
    assert src.skipped == [] and src.warnings == []


def test_without_a_header_the_columns_are_path_label_split(
    tmp_path: Path, make_images: Any
) -> None:
    a, b, _ = _images(tmp_path, make_images)
    m = tmp_path / "plain.csv"
    m.write_text(f"imgs/a/{a.name},cat\nimgs/a/{b.name},dog,val\n")
    assert _view(open_source(m)) == [(a.name, "cat", None), (b.name, "dog", "val")]
    only_paths = tmp_path / "paths.csv"
    only_paths.write_text(f"imgs/a/{a.name}\n")
    assert _view(open_source(only_paths)) == [(a.name, None, None)]


def test_skip_reasons_name_the_physical_line(tmp_path: Path, make_images: Any) -> None:
    a, *_ = _images(tmp_path, make_images)
    (tmp_path / "notes.txt").write_text("t")
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    m = tmp_path / "m.csv"
    m.write_text(
        "path,label\n"
        f"imgs/a/{a.name},cat\n"
        "\n"
        ",dog\n"  # line 4: no path
        '"gone\n.png",cat\n'  # lines 5-6: a quoted newline; the row ends on line 6
        "notes.txt,x\n"
        "dangling.png,x\n"  # a symlink is not "missing": it fails when read
        "   ,  \n"  # blank cells: a blank row, not counted as a missing path
    )
    src = open_source(m)
    assert _view(src) == [(a.name, "cat", None)]
    assert [(s.path, s.reason) for s in src.skipped] == [
        (f"{m}:4", "no path (manifest line 4)"),
        (str(tmp_path / "gone\n.png"), "missing file (manifest line 6)"),
        (str(tmp_path / "notes.txt"), "not an image file (extension '.txt')"),
        (str(tmp_path / "dangling.png"), "cannot read: No such file or directory"),
    ]


def test_a_file_listed_twice_gives_two_records(tmp_path: Path, make_images: Any) -> None:
    a, *_ = _images(tmp_path, make_images)
    m = tmp_path / "m.csv"
    m.write_text(f"imgs/a/{a.name},x,train\nimgs/a/{a.name},y,test\n")
    src = open_source(m)
    assert _view(src) == [(a.name, "x", "train"), (a.name, "y", "test")]
    assert src.records[0].key == src.records[1].key


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the manifest is empty"),
        (b"\n  \n,\n", "the manifest is empty"),
        (b"path,label\n", "no images found"),
        (b"caf\xe9.png,a\n", "a manifest must be UTF-8 text"),
        (b'"' + b"x" * 200_000 + b'"\n', "not a readable CSV manifest"),
        (b"gone.png,a\n", r"no images found; 1 file\(s\) skipped, e\.g\. .*gone\.png: missing"),
    ],
)
def test_unusable_manifests_are_a_source_error(tmp_path: Path, body: bytes, message: str) -> None:
    m = tmp_path / "m.csv"
    m.write_bytes(body)
    with pytest.raises(SourceError, match=message) as err:
        open_source(m)
    assert str(err.value).startswith(str(m))
