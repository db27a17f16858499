"""Careless image folders: an unreadable root or split folder, split folders that differ only
in case, a class folder that is a link to another, loose files beside split folders, many
class folders, and a folder of .h5 files beside a deep tree, each read or refused with a
reason (never a raw OSError, never silently dropped)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

import featurestore.sources.folder as folder_module
from featurestore.sources import SourceError, open_source
from featurestore.sources.folder import from_folder

# Root reads chmod-000 folders; dropping the two DAC capabilities makes root obey permissions.
DROP_DAC = [
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
]
_OPEN = """
import json, sys
from featurestore.errors import FeatureStoreError
from featurestore.sources import open_source
try:
    src = open_source(sys.argv[1])
except FeatureStoreError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"records": [r.path for r in src.records],
                      "skipped": [[s.path, s.reason] for s in src.skipped]}))
"""


def _tree(root: Path, rels: list[str]) -> None:
    for i, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i, 0, 0)).save(root / rel)


def _view(root: Path, src: Any) -> list[tuple[str, str | None, str | None]]:
    return [(str(Path(r.path).relative_to(root)), r.label, r.split) for r in src.records]


def _open_without_permissions(source: Path, cli_env: Any) -> dict[str, Any]:
    """open_source in a process that obeys file permissions (as root: without DAC caps)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads chmod-000 folders and setpriv is missing")
        prefix = DROP_DAC
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _OPEN, str(source)],
        env=cli_env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def test_an_unreadable_root_is_a_source_error(tmp_path: Path, cli_env: Any) -> None:
    _tree(tmp_path / "root", ["a/1.png"])
    (tmp_path / "root").chmod(0o000)
    try:
        got = _open_without_permissions(tmp_path / "root", cli_env)
    finally:
        (tmp_path / "root").chmod(0o755)
    assert got == {"error": f"{tmp_path / 'root'}: cannot list the folder (Permission denied)"}


def test_an_unreadable_split_folder_is_skipped_with_its_reason(
    tmp_path: Path, cli_env: Any
) -> None:
    _tree(tmp_path, ["train/a/1.png", "val/a/2.png"])
    (tmp_path / "val").chmod(0o000)
    try:
        got = _open_without_permissions(tmp_path, cli_env)
    finally:
        (tmp_path / "val").chmod(0o755)
    assert got == {
        "records": [str(tmp_path / "train" / "a" / "1.png")],
        "skipped": [[str(tmp_path / "val"), "cannot list: Permission denied"]],
    }


def test_split_folders_differing_only_in_case_are_both_read(tmp_path: Path) -> None:
    _tree(tmp_path, ["Train/a/1.png", "train/b/2.png", "test/a/3.png"])
    src = open_source(tmp_path)
    assert _view(tmp_path, src) == [
        ("Train/a/1.png", "a", "train"),
        ("train/b/2.png", "b", "train"),
        ("test/a/3.png", "a", "test"),
    ]
    assert src.warnings == ["split folders ['Train', 'train'] are all read as split 'train'"]


def test_a_class_folder_that_links_to_another_lists_its_images_under_both(
    tmp_path: Path,
) -> None:
    _tree(tmp_path, ["ants/1.png", "ants/deep/2.png"])
    (tmp_path / "bees").symlink_to("ants")
    src = open_source(tmp_path)
    assert _view(tmp_path, src) == [
        ("ants/1.png", "ants", None),
        ("ants/deep/2.png", "ants", None),
        ("bees/1.png", "bees", None),
        ("bees/deep/2.png", "bees", None),
    ]
    assert src.skipped == []  # not a "symlink loop"
    assert src.warnings == [
        f"class folder {tmp_path / 'bees'} is the folder {tmp_path / 'ants'} (a link): its "
        "images are listed under both labels"
    ]


def test_a_link_back_to_the_root_is_still_a_loop(tmp_path: Path) -> None:
    _tree(tmp_path, ["a/1.png", "b/2.png"])
    (tmp_path / "a" / "up").symlink_to("..")
    src = open_source(tmp_path)
    assert _view(tmp_path, src) == [("a/1.png", "a", None), ("b/2.png", "b", None)]
    assert [(Path(s.path).name, s.reason) for s in src.skipped] == [
        ("up", "symlink loop (folder already visited)")
    ]


def test_images_without_a_split_beside_split_folders_are_kept_and_counted(
    tmp_path: Path,
) -> None:
    _tree(tmp_path, ["train/a/1.png", "val/a/2.png", "loose.png"])
    src = open_source(tmp_path)
    assert _view(tmp_path, src)[-1] == ("loose.png", None, None)
    assert src.warnings == [
        f"1 of 3 images have no split (e.g. {tmp_path / 'loose.png'}); a sweep that uses the "
        "splits leaves them out",
        f"1 of 3 images have no label (e.g. {tmp_path / 'loose.png'})",
    ]


def test_empty_class_folders_are_found_in_linear_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4,000 class folders of 25 files each (listed by a stub, so no files are made): a check
    that scans every entry for every class folder makes 200 million comparisons (minutes);
    one pass over the entries takes well under a second. The 60 s limit is a complexity
    guard with a wide margin, not a speed claim."""
    classes = [f"c{i:04d}" for i in range(4000)]
    for name in classes:
        (tmp_path / name).mkdir()
    (tmp_path / "empty").mkdir()

    names = [f"{k:02d}.png" for k in range(25)]

    def walk(root: Path, skipped: list[Any], **_: Any) -> Any:
        """Like walk_files: called on the whole root, or on one class folder."""
        if root == tmp_path:
            yield root, []
            yield from ((root / c, names) for c in classes)
        elif root.name != "empty":
            yield root, names

    monkeypatch.setattr(folder_module, "walk_files", walk)
    monkeypatch.setattr(folder_module, "file_records", lambda entries, skipped: [])
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(src=from_folder(tmp_path)))
    worker.daemon = True
    worker.start()
    worker.join(timeout=60)
    assert "src" in result, "the empty-class-folder check did not finish within 60 s"
    assert result["src"].warnings == [f"class folder {tmp_path / 'empty'} holds no files"]


def test_choosing_between_images_and_h5_files_does_not_walk_the_whole_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with h5py.File(tmp_path / "a_train.h5", "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
    deep = tmp_path / "notes"
    for i in range(30):
        deep = deep / f"level{i}"
    deep.mkdir(parents=True)
    listed: list[str] = []
    original = os.scandir

    def spy(path: Any = ".") -> Any:
        listed.append(os.fspath(path))
        return original(path)

    monkeypatch.setattr(os, "scandir", spy)
    src = open_source(tmp_path)
    assert src.kind == "hdf5" and len(src.records) == 2
    depth = max(len(Path(p).relative_to(tmp_path).parts) for p in listed)
    assert depth <= 2, f"listed {len(listed)} folders, down to depth {depth}"


def test_an_image_two_levels_down_still_makes_an_image_folder(
    tmp_path: Path, make_images: Any
) -> None:
    make_images(tmp_path / "deep" / "down", 1, ())
    with h5py.File(tmp_path / "arrays.h5", "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
    assert open_source(tmp_path).kind == "folder"


def test_a_path_too_long_for_the_system_is_a_source_error(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 300 + ".csv")
    with pytest.raises(SourceError, match=r"cannot read \(File name too long\)"):
        open_source(long)
    with pytest.raises(SourceError, match="cannot read"):
        open_source(tmp_path / "a\0b")
