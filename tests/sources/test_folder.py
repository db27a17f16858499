"""Image folders: ImageFolder layout, split folders, what is skipped or warned about, and the
real hymenoptera_data folder."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

from featurestore.sources import SPLIT_NAMES, Skipped, open_source
from featurestore.sources.folder import from_folder

HYMENOPTERA = SHARED / "hymenoptera_data"


def _tree(root: Path, rels: list[str]) -> None:
    for i, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i, 0, 0)).save(root / rel)


def _view(root: Path, src: Any) -> list[tuple[str, str | None, str | None]]:
    return [(str(Path(r.path).relative_to(root)), r.label, r.split) for r in src.records]


def test_class_folders_label_their_files_at_any_depth(tmp_path: Path) -> None:
    _tree(tmp_path, ["dog/b.png", "cat/x/deep.png", "cat/a.jpg", "loose.png", ".hid/h.png"])
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"x")
    src = from_folder(tmp_path)
    assert (src.name, src.kind) == (str(tmp_path), "folder")
    assert _view(tmp_path, src) == [
        ("loose.png", None, None),  # directly in the root: no label
        ("cat/a.jpg", "cat", None),
        ("cat/x/deep.png", "cat", None),  # the first folder below the root is the label
        ("dog/b.png", "dog", None),
    ]
    assert all(r.key == hashlib.sha256(Path(r.path).read_bytes()).hexdigest() for r in src.records)
    assert all(r.ref == ("file", r.path) for r in src.records)
    assert src.records[1].label is src.records[2].label  # one string per folder
    assert src.skipped == [] and src.warnings == []


def test_split_folders_give_splits_whatever_their_case(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        ["Train/a/1.png", "test/b/2.png", "val/a/3.png", "misc/a/4.png", "root.png"],
    )
    (tmp_path / "val" / "b").mkdir()
    src = from_folder(tmp_path)
    assert SPLIT_NAMES == ("train", "val", "validation", "test")
    assert _view(tmp_path, src) == [  # splits in SPLIT_NAMES order, then the root's files
        ("Train/a/1.png", "a", "train"),
        ("val/a/3.png", "a", "val"),
        ("test/b/2.png", "b", "test"),
        ("root.png", None, None),
    ]
    assert src.warnings == [
        f"class folder {tmp_path / 'val' / 'b'} holds no files",
        "split layout detected; ignoring non-split folders ['misc']",
    ]
    assert src.splits == ["test", "train", "val"] and len(src.select("val")) == 1


def test_unreadable_entries_are_skipped_with_their_reason(tmp_path: Path) -> None:
    _tree(tmp_path, ["a/good.png"])
    bad = tmp_path / "a"
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.txt").write_text("x")
    (bad / "dangling.jpg").symlink_to("nowhere.jpg")
    (bad / "loop.jpg").symlink_to("loop.jpg")
    os.mkfifo(bad / "pipe.png")
    src = open_source(tmp_path)
    assert [Path(r.path).name for r in src.records] == ["good.png"]
    assert sorted((Path(s.path).name, s.reason) for s in src.skipped) == [
        ("dangling.jpg", "cannot read: No such file or directory"),
        ("empty.png", "empty file (0 bytes)"),
        ("loop.jpg", "cannot read: Too many levels of symbolic links"),
        ("notes.txt", "not an image file (extension '.txt')"),
        ("pipe.png", "not a regular file (a FIFO)"),
    ]
    assert all(isinstance(s, Skipped) for s in src.skipped)


def test_a_folder_symlinked_into_itself_is_walked_once(tmp_path: Path) -> None:
    _tree(tmp_path, ["a/1.png"])
    (tmp_path / "a" / "again").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "up").symlink_to("..")
    src = open_source(tmp_path)
    assert _view(tmp_path, src) == [("a/1.png", "a", None)]
    assert [(Path(s.path).relative_to(tmp_path), s.reason) for s in src.skipped] == [
        (Path("a/again"), "symlink loop (folder already visited)"),
        (Path("a/sub/up"), "symlink loop (folder already visited)"),
    ]


def test_records_are_the_same_whatever_order_files_were_created(tmp_path: Path) -> None:
    names = [f"c{i % 3}/{i:02d}.png" for i in range(12)]
    _tree(tmp_path / "one", names)
    _tree(tmp_path / "two", names[::-1])
    one, two = open_source(tmp_path / "one"), open_source(tmp_path / "two")
    assert _view(tmp_path / "one", one) == _view(tmp_path / "two", two)
    assert _view(tmp_path / "one", one) == sorted(_view(tmp_path / "one", one))


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"real dataset not found at {HYMENOPTERA}")
def test_hymenoptera_records_match_its_checksums_with_the_placeholder_gif() -> None:
    src = open_source(HYMENOPTERA)
    assert src.splits == ["train", "val"] and src.class_names == ["ants", "bees"]
    assert Counter((r.split, r.label) for r in src.records) == {
        ("train", "ants"): 124,
        ("train", "bees"): 121,
        ("val", "ants"): 70,
        ("val", "bees"): 83,
    }
    assert src.skipped == [] and src.warnings == []
    sums = {}
    for line in (HYMENOPTERA.parent / "hymenoptera_data.SHA256SUMS").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        sums[str(HYMENOPTERA / rel.removeprefix("./"))] = digest
    assert {r.path: r.key for r in src.records} == sums  # every file, keyed by its sha256
    (gif,) = [r for r in src.records if r.path.endswith("imageNotFound.gif")]
    assert (gif.label, gif.split) == ("ants", "train")
    image = src.loader.load(gif)
    assert image.mode == "RGB" and image.size == (300, 300)
    first = src.loader.load(src.records[0], draft_size=64)
    assert first.mode == "RGB" and min(first.size) >= 64 and np.asarray(first).std() > 0
