"""Paths that are not stores: `verify` and `info` say so and exit 2, never "DAMAGED, delete it";
nothing blocks on a FIFO or reads a device without end; things put where a store's files belong
are refused before any work.

The promise under test (README, "Crash safety and concurrency"): only a featurestore store is
ever reported damaged. A folder, a FIFO, a device, a socket, a file that is not HDF5 or an HDF5
file without the store's format attribute (a user's own dataset) is not a store: one line on
stderr, exit status 2, and nothing opened, locked or created beside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED

from featurestore.cli import main as cli
from featurestore.errors import NotAStoreError
from featurestore.store import FeatureStore, StoreError, identify, verify

SPEC = {"backbone": "toy", "dim": 16}
TIMEOUT_S = 60  # a FIFO that blocks an open hangs until this kills the command


def _keys(n: int, seed: int = 0) -> list[str]:
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n)]


def _store(root: Path, n: int = 8) -> FeatureStore:
    store = FeatureStore.for_spec(root, SPEC)
    rows = np.random.default_rng(0).standard_normal((n, SPEC["dim"])).astype(np.float32)
    store.append(_keys(n), rows)
    store.compact()
    return store


def _user_dataset(path: Path) -> Path:
    """An HDF5 file of the user's own, such as a dataset of images (not a store)."""
    with h5py.File(path, "w") as f:
        f["train_set_x"] = np.zeros((2, 8, 8, 3), dtype=np.uint8)
        f["train_set_y"] = np.array([0, 1])
    return path


def _journal_folder(d: Path) -> Path:
    """The journal folder (``.parts``) of a store, given where its store file is expected."""
    store = _store(d)
    store.parts_dir.mkdir(exist_ok=True)
    return store.parts_dir


# Each makes, under a folder, a path that is not a store; returns it.
NOT_STORES: dict[str, Callable[[Path], Path]] = {
    "fifo": lambda d: (os.mkfifo(d / "x.h5"), d / "x.h5")[1],
    "fifo-named-as-a-store": lambda d: (os.mkfifo(p := d / "toy-0123456789abcdef.h5"), p)[1],
    "symlink-to-dev-zero": lambda d: ((d / "z.h5").symlink_to("/dev/zero"), d / "z.h5")[1],
    "image-folder": lambda d: (d / "images" / "cat").mkdir(parents=True) or d / "images",
    "folder-named-h5": lambda d: (d / "f.h5").mkdir() or d / "f.h5",
    "journal-folder": lambda d: _journal_folder(d),
    "users-hdf5-dataset": lambda d: _user_dataset(d / "train_catvnoncat.h5"),
    "text-file": lambda d: (d / "notes.h5").write_text("not hdf5\n") and d / "notes.h5",
    "not-h5-suffix": lambda d: (d / "README.txt").write_text("hello\n") and d / "README.txt",
}


def _socket(d: Path) -> Path:
    path = d / "s.h5"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays
    return path


NOT_STORES["socket"] = _socket


def _listing(folder: Path) -> dict[str, Any]:
    """Every entry under ``folder`` (not following links) with its type and, for regular files,
    bytes: to show that a command created, changed or removed nothing."""
    out: dict[str, Any] = {}
    for p in sorted(folder.rglob("*")):
        mode = p.lstat().st_mode
        out[str(p.relative_to(folder))] = p.read_bytes() if stat.S_ISREG(mode) else mode
    return out


@pytest.mark.parametrize("kind", sorted(NOT_STORES))
def test_verify_and_info_say_not_a_store_exit_2_and_touch_nothing(
    kind: str, tmp_path: Path, run_cli: Any
) -> None:
    folder = tmp_path / "here"
    folder.mkdir()
    path = NOT_STORES[kind](folder)
    before = _listing(folder)
    with pytest.raises(NotAStoreError):
        verify(path)
    for command in ("verify", "info"):
        done = run_cli(command, path, timeout=TIMEOUT_S)  # a FIFO opened would hang here
        err = done.stderr.decode(errors="replace")
        lines = [line for line in err.splitlines() if line.strip()]
        assert done.returncode == 2, (command, done.returncode, done.stdout, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, err)
        assert "not a" in lines[0] and "Traceback" not in err, lines
        assert b"DAMAGED" not in done.stdout and "delete" not in err, (command, done.stdout, err)
    assert _listing(folder) == before, "a command created or changed files beside the path"


@pytest.mark.skipif(not (SHARED / "catvnoncat").is_dir(), reason="../shared/datasets absent")
def test_a_real_hdf5_dataset_is_not_called_a_damaged_store() -> None:
    """The real catvnoncat file (images as arrays in HDF5) from the shared datasets."""
    path = SHARED / "catvnoncat" / "train_catvnoncat.h5"
    with pytest.raises(NotAStoreError, match="not a featurestore store"):
        verify(path)
    r = CliRunner().invoke(cli, ["verify", str(path)])
    assert r.exit_code == 2 and "DAMAGED" not in r.output, r.output


def test_a_store_under_another_name_is_still_judged(tmp_path: Path) -> None:
    """A store copied to a name of the user's choosing is recognised by its format attribute:
    it verifies OK, and damage in it is still reported as damage (exit 1)."""
    store = _store(tmp_path / "cache")
    copy = tmp_path / "my features.h5"
    shutil.copy(store.path, copy)
    assert identify(copy) == copy and verify(copy).ok
    ok = CliRunner().invoke(cli, ["verify", str(copy)])
    assert ok.exit_code == 0 and ": OK" in ok.output, ok.output
    with h5py.File(copy, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    data = bytearray(copy.read_bytes())
    data[offset + 5] ^= 0xFF
    copy.write_bytes(bytes(data))
    bad = CliRunner().invoke(cli, ["verify", str(copy)])
    assert bad.exit_code == 1 and "DAMAGED" in bad.output, bad.output


def test_a_store_with_only_a_journal_is_a_store(tmp_path: Path) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)
    store.append(_keys(3), np.ones((3, SPEC["dim"]), dtype=np.float32))
    assert not store.path.exists() and identify(store.path) == store.path
    report = verify(store.path)
    assert report.ok and report.n_rows == 3


# ---------------------------------------------------------------------------- in the cache
@pytest.mark.parametrize("what", ["fifo", "symlink-to-dev-zero"])
def test_a_fifo_or_device_in_a_stores_place_is_refused_at_once(
    what: str,
    tmp_path: Path,
    run_cli: Any,
    make_images: Any,
    tiny_backbone: dict,
    tiny_cli_args: list[str],
) -> None:
    """`extract`, `ls` and `info` with a FIFO or a link to /dev/zero where the store's file
    belongs: a one-line error (exit 1) or a warning, never a hang."""
    from featurestore.extraction import extract

    images = tmp_path / "images"
    make_images(images, 4)
    cache = tmp_path / "cache"
    path = extract(images, cache_dir=cache, workers=0, **tiny_backbone).store
    args = ["extract", images, *tiny_cli_args, "--workers", "0", "--cache-dir", cache]
    path.unlink()
    if what == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    again = run_cli(*args, timeout=TIMEOUT_S)
    err = again.stderr.decode()
    assert again.returncode == 1 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert f"{path} is a" in err and "not a store file" in err, err
    listed = run_cli("ls", "--cache-dir", cache, timeout=TIMEOUT_S)
    assert listed.returncode == 0 and b"skipping" in listed.stderr, listed.stderr
    info = run_cli("info", path, timeout=TIMEOUT_S)
    assert info.returncode == 2, info.stderr
    with pytest.raises(StoreError, match="not a store file"):
        FeatureStore(path).keys()


def test_a_folder_among_the_journal_parts_is_reported(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append(_keys(2, seed=1), np.zeros((2, SPEC["dim"]), dtype=np.float32))
    odd = store.parts_dir / "part-00000000000000000000-1-0123456789ab.h5"
    odd.mkdir()
    report = verify(store.path)
    assert not report.ok and any(f"{odd} is a folder" in p for p in report.problems)
    with pytest.raises(StoreError, match="is a folder"):
        store.check()
    with pytest.raises(StoreError, match="is a folder"):
        store.keys()
    r = CliRunner().invoke(cli, ["verify", str(store.path)])
    assert r.exit_code == 1 and "DAMAGED" in r.output


@pytest.mark.parametrize("where", ["journal", "cache", "cache-parent"])
def test_a_file_where_a_folder_belongs_is_refused_before_any_work(
    where: str, tmp_path: Path, make_images: Any, tiny_backbone: dict, monkeypatch: Any
) -> None:
    """A file where the journal folder or the cache directory belongs: extract refuses before
    the network is even built, and names the file."""
    from featurestore import pipeline
    from featurestore.extraction import extract

    images = tmp_path / "images"
    make_images(images, 4)
    cache = tmp_path / "cache"
    if where == "journal":
        from featurestore.extractor import resolve

        blocker = FeatureStore.for_spec(cache, resolve(**tiny_backbone).spec).parts_dir
        cache.mkdir()
        blocker.write_text("x")
        match = "is not a folder, but the journal"
    elif where == "cache":
        cache.write_text("x")
        blocker = cache
        match = "cannot hold stores"
    else:
        (tmp_path / "file").write_text("x")
        cache = tmp_path / "file" / "cache"
        blocker = tmp_path / "file"
        match = "cannot hold stores"

    def no_work(*a: Any, **k: Any) -> None:
        raise AssertionError("the extraction loop ran")

    monkeypatch.setattr(pipeline, "run_extraction", no_work)
    with pytest.raises(StoreError, match=match) as err:
        extract(images, cache_dir=cache, workers=0, **tiny_backbone)
    assert str(blocker) in str(err.value)
