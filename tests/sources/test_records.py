"""The core records: Record, Skipped, the SkippedFiles ordered set and Source (select, subset);
and how the skipped files of several steps are merged (each listed once, in order)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from featurestore.api import load_features
from featurestore.extraction import extract
from featurestore.sources import (
    ImageLoader,
    Record,
    Skipped,
    SkippedFiles,
    Source,
    SourceError,
    open_source,
)


def _record(i: int, label: str | None = "a", split: str | None = None) -> Record:
    return Record(f"{i:064x}", f"/img/{i}.png", label, split, ("file", f"/img/{i}.png"))


def _source() -> Source:
    records = [
        _record(0, "b", "train"),
        _record(1, "a", "val"),
        _record(2, None, "train"),
        _record(3, "a", None),
    ]
    return Source("src", "folder", records, [Skipped("/img/x.txt", "not an image")], ["a warning"])


# ---------------------------------------------------------------------------- Record, Skipped
def test_record_is_frozen_and_slotted() -> None:
    r = _record(0)
    assert not hasattr(r, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.label = "b"  # type: ignore[misc]


def test_skipped_is_a_frozen_hashable_value_with_to_dict() -> None:
    s = Skipped("/a.jpg", "cannot decode")
    assert s.to_dict() == {"path": "/a.jpg", "reason": "cannot decode"}
    assert s == Skipped("/a.jpg", "cannot decode") and hash(s) == hash(Skipped("/a.jpg", s.reason))
    assert s != Skipped("/a.jpg", "other reason")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.reason = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------- SkippedFiles
def test_skipped_files_keep_first_seen_order_and_ignore_duplicates() -> None:
    a, b, c = Skipped("a", "r"), Skipped("b", "r"), Skipped("c", "r")
    files = SkippedFiles([b, a, b])
    assert list(files) == [b, a] and len(files) == 2
    files.add(a)
    files.add(c)
    files.update([c, Skipped("a", "other reason"), b])
    files.extend([Skipped("d", "r")])
    assert [(s.path, s.reason) for s in files] == [
        ("b", "r"),
        ("a", "r"),
        ("c", "r"),
        ("a", "other reason"),  # same path, other reason: a different entry
        ("d", "r"),
    ]
    assert files[0] == b and files[-1] == Skipped("d", "r") and files[1:3] == [a, c]
    assert c in files and Skipped("e", "r") not in files
    assert files.index(c) == 2 and files.count(a) == 1


def test_skipped_files_empty_is_falsy() -> None:
    files = SkippedFiles()
    assert not files and len(files) == 0 and list(files) == []
    files.add(Skipped("a", "r"))
    assert files


def test_skipped_files_merge_in_linear_time() -> None:
    """40,000 entries merged twice over: a list scan per entry would take minutes."""
    items = [Skipped(f"/img/{i}.jpg", "cannot decode") for i in range(40_000)]
    t = time.perf_counter()
    files = SkippedFiles(items)
    files.update(items)
    files.update(reversed(items))
    assert time.perf_counter() - t < 5.0
    assert list(files) == items


# ---------------------------------------------------------------------------- Source
def test_class_names_splits_and_select() -> None:
    src = _source()
    assert src.class_names == ["a", "b"] and src.splits == ["train", "val"]
    assert [r.path for r in src.select("train")] == ["/img/0.png", "/img/2.png"]
    everything = src.select(None)
    assert everything == src.records and everything is not src.records
    with pytest.raises(SourceError, match=r"split 'test' not in src; it has \['train', 'val'\]"):
        src.select("test")
    with pytest.raises(SourceError, match="it has no splits"):
        Source("flat", "folder", [_record(0)]).select("train")


def test_a_source_gets_a_fresh_loader_each() -> None:
    one, two = Source("a", "folder", []), Source("b", "folder", [])
    assert isinstance(one.loader, ImageLoader) and one.loader is not two.loader
    assert one.skipped == [] and one.warnings == [] and one.skipped is not two.skipped


def test_subset_keeps_everything_but_the_records() -> None:
    src = _source()
    chosen = [src.records[3], src.records[1]]
    sub = src.subset(r for r in chosen)  # any iterable; order kept
    assert sub.records == chosen
    assert (sub.name, sub.kind) == ("src", "folder")
    assert sub.loader is src.loader  # opened handles are shared, not reopened
    assert sub.skipped == src.skipped and sub.warnings == src.warnings
    assert sub.class_names == ["a"] and sub.splits == ["val"]
    sub.skipped.append(Skipped("/more", "r"))
    sub.warnings.append("more")
    sub.records.append(src.records[0])
    assert len(src.skipped) == 1 and src.warnings == ["a warning"] and len(src.records) == 4
    assert src.subset([]).records == []


def test_subset_of_a_real_source_loads_the_same_pixels(tmp_path: Path, make_images: Any) -> None:
    make_images(tmp_path / "imgs", 4)
    src = open_source(tmp_path / "imgs")
    sub = src.subset(src.records[2:])
    assert [r.path for r in sub.records] == [r.path for r in src.records[2:]]
    assert np.array_equal(
        np.asarray(sub.loader.load(sub.records[0])), np.asarray(Image.open(src.records[2].path))
    )


# ---------------------------------------------------------------------------- merging
def test_skipped_files_are_listed_once_across_steps_and_backbones(
    tmp_path: Path, make_images: Any, tiny_backbone: dict[str, Any]
) -> None:
    """A scan-time skip is in the source, in each extraction and in load_features; a decode
    failure in each extraction: every one is listed once, scan skips first."""
    root = tmp_path / "imgs"
    make_images(root, 4, ("a",))
    (root / "a" / "notes.txt").write_text("text")
    (root / "a" / "zz-broken.png").write_bytes(b"not a png at all")
    options = dict(tiny_backbone)  # the fixture's dict is shared by the session
    backbone = options.pop("backbone")
    feats = load_features(
        root, backbone=[backbone, backbone], cache_dir=tmp_path / "c", workers=0, **options
    )
    assert [(Path(s.path).name, s.reason) for s in feats.skipped] == [
        ("notes.txt", "not an image file (extension '.txt')"),
        ("zz-broken.png", "not an image Pillow can identify"),
    ]
    assert feats.X.shape[0] == 4 and isinstance(feats.skipped, list)


def test_a_manifest_naming_one_bad_file_twice_lists_it_once(
    tmp_path: Path, make_images: Any, tiny_backbone: dict[str, Any]
) -> None:
    (good,) = make_images(tmp_path / "imgs", 1, ("a",))
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    (tmp_path / "m.csv").write_text(f"{good},a\nbad.png,a\nbad.png,b\n")
    src = open_source(tmp_path / "m.csv")
    assert [r.path for r in src.records] == [str(good), *[str(tmp_path / "bad.png")] * 2]
    r = extract(src, cache_dir=tmp_path / "c", workers=0, **tiny_backbone)
    assert [s.to_dict() for s in r.skipped] == [
        {"path": str(tmp_path / "bad.png"), "reason": "not an image Pillow can identify"}
    ]
    assert r.to_dict()["skipped"] == 1 and r.n_extracted == 1
