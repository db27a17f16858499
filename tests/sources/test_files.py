"""What the file kinds share: walking folders, hashing files on threads in chunks, turning
entries into records, a single image file as a source, and loading a file record."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from featurestore.sources import Skipped, open_source
from featurestore.sources.files import (
    HASH_CHUNK,
    FileLoader,
    file_records,
    from_image_file,
    hash_files,
    suffix,
    walk_files,
)


def test_hashing_on_threads_gives_the_serial_answers_in_order(tmp_path: Path) -> None:
    n = 3 * HASH_CHUNK + 5  # the threaded path: several chunks, the last one short
    data = [os.urandom(50 + i) for i in range(n)]
    paths = []
    for i, d in enumerate(data):
        (tmp_path / f"{i}.bin").write_bytes(d)
        paths.append(str(tmp_path / f"{i}.bin"))
    (tmp_path / "empty.bin").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.bin")
    paths[7] = str(tmp_path / "empty.bin")
    paths[HASH_CHUNK + 1] = str(tmp_path / "gone.bin")
    paths[2 * HASH_CHUNK] = str(tmp_path / "pipe.bin")
    paths[-1] = str(tmp_path)
    threaded = hash_files(paths, threads=4)
    serial = [hash_files([p])[0] for p in paths]
    assert threaded == serial and len(threaded) == n
    assert threaded[0] == (hashlib.sha256(data[0]).hexdigest(), None)
    assert threaded[7] == (None, "empty file (0 bytes)")
    assert threaded[HASH_CHUNK + 1] == (None, "cannot read: No such file or directory")
    assert threaded[2 * HASH_CHUNK] == (None, "not a regular file (a FIFO)")  # never opened
    assert threaded[-1] == (None, "not a regular file (a folder)")


@given(name=st.text(alphabet="ab.-_ é", min_size=1, max_size=12))
def test_suffix_of_a_path_string_is_path_suffix(name: str) -> None:
    for text in (name, "dir/" + name, "/root/x.y/" + name):
        normal = str(Path(text))
        assert suffix(normal) == Path(normal).suffix


def test_walk_is_sorted_top_down_skips_hidden_and_visits_a_looped_folder_once(
    tmp_path: Path,
) -> None:
    for rel in ("b/2.png", "b/1.png", "a/z/3.png", "a/0.png", ".hidden/h.png", "a/.h.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "b" / "up").symlink_to("..")
    skipped: list[Skipped] = []
    walked = [(str(d.relative_to(tmp_path)), names) for d, names in walk_files(tmp_path, skipped)]
    assert walked == [(".", []), ("a", ["0.png"]), ("a/z", ["3.png"]), ("b", ["1.png", "2.png"])]
    assert skipped == [Skipped(str(tmp_path / "b" / "up"), "symlink loop (folder already visited)")]


def test_file_records_keep_entry_order_and_skip_with_reasons(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "b.png")
    Image.new("RGB", (4, 4), (3, 2, 1)).save(tmp_path / "a.PNG")
    (tmp_path / "notes.txt").write_text("t")
    (tmp_path / "noext").write_bytes(b"x")
    (tmp_path / "empty.jpg").write_bytes(b"")
    entries = [
        (str(tmp_path / "b.png"), "x", "train"),
        (str(tmp_path / "notes.txt"), "x", None),
        (str(tmp_path / "a.PNG"), None, None),
        (str(tmp_path / "noext"), None, None),
        (str(tmp_path / "empty.jpg"), "y", None),
    ]
    skipped: list[Skipped] = []
    records = file_records(entries, skipped)
    key = hashlib.sha256((tmp_path / "b.png").read_bytes()).hexdigest()
    first = records[0]
    assert (first.key, first.path, first.label, first.split, first.ref) == (
        key,
        str(tmp_path / "b.png"),
        "x",
        "train",
        ("file", str(tmp_path / "b.png")),
    )
    assert [r.path for r in records] == [str(tmp_path / "b.png"), str(tmp_path / "a.PNG")]
    assert [(Path(s.path).name, s.reason) for s in skipped] == [
        ("notes.txt", "not an image file (extension '.txt')"),
        ("noext", "not an image file (extension '')"),
        ("empty.jpg", "empty file (0 bytes)"),
    ]


def test_a_single_image_file_is_a_source_of_one_unlabelled_record(
    tmp_path: Path, make_images: Any
) -> None:
    (path,) = make_images(tmp_path, 1, ())
    src = open_source(path)
    assert (src.name, src.kind, len(src.records)) == (str(path), "files", 1)
    assert (src.records[0].label, src.records[0].split) == (None, None)
    (tmp_path / "empty.png").write_bytes(b"")
    assert from_image_file(tmp_path / "empty.png").skipped == [
        Skipped(str(tmp_path / "empty.png"), "empty file (0 bytes)")
    ]


def test_the_file_loader_decodes_and_drafts_jpegs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    loader = FileLoader()
    assert loader.load(("file", str(tmp_path / "a.jpg")), draft_size=None).size == (96, 64)
    drafted = loader.load(("file", str(tmp_path / "a.jpg")), draft_size=16)
    assert drafted.mode == "RGB" and drafted.size == (24, 16)  # 1/4 scale: both sides >= 16


def test_a_file_record_whose_file_went_away_is_a_decode_error(tmp_path: Path) -> None:
    from featurestore.errors import DecodeError

    with pytest.raises(DecodeError, match="cannot read"):
        FileLoader().load(("file", str(tmp_path / "gone.png")), draft_size=None)
