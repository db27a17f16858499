"""The journal: the lock-and-retry every read goes through, part files and their temporary
names, stale-temp detection."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore.store import FeatureStore, StoreCorruptError, StoreError, store_name, verify
from featurestore.store import journal as journal_mod
from featurestore.store.journal import Journal, VanishedError

SPEC = {"backbone": "journal", "dim": 4}


def _key(i: int) -> str:
    return hashlib.sha256(f"img{i}".encode()).hexdigest()


def _store(root: Path, n: int = 6) -> FeatureStore:
    """A store with a consolidated file and one journal part."""
    store = FeatureStore.for_spec(root, SPEC)
    rows = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    store.append([_key(i) for i in range(n - 2)], rows[: n - 2])
    store.compact()
    store.append([_key(i) for i in range(n - 2, n)], rows[n - 2 :])
    return store


def _lock_is_shared(j: Journal) -> bool:
    """Whether someone holds ``j``'s lock: an exclusive non-blocking flock from another
    descriptor fails."""
    fd = os.open(j.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# ---------------------------------------------------------------------------- lock and retry
def test_shared_runs_again_when_a_file_vanished_each_time_under_the_lock(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s.h5")
    calls: list[bool] = []

    def fn() -> str:
        calls.append(_lock_is_shared(j))
        if len(calls) < 3:
            raise VanishedError("gone")
        return "done"

    assert j.shared(fn) == "done"
    assert calls == [True, True, True]
    assert not _lock_is_shared(j)  # released after the last try


@pytest.mark.parametrize("tries", [1, 3, 5])
def test_shared_gives_up_after_its_tries(
    tries: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_mod, "RETRIES", tries)
    j = Journal(tmp_path / "s.h5")
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise VanishedError(f"gone #{len(calls)}")

    with pytest.raises(VanishedError, match=f"gone #{tries}$"):
        j.shared(fn)
    assert len(calls) == tries


def test_shared_does_not_retry_other_errors(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s.h5")
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise StoreCorruptError("damaged", file=j.path)

    with pytest.raises(StoreCorruptError, match="damaged"):
        j.shared(fn)
    assert calls == [1]


def _ghost_first(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """The first ``times`` listings of a store's files name a journal part that is gone by the
    time it is opened (another process compacted it), as happens to a reader without the lock."""
    real = Journal.sources
    listed: list[int] = []

    def sources(self: Journal) -> list[Path]:
        listed.append(1)
        ghost = [self.parts_dir / "part-00000000000000000000-1-ghost.h5"]
        return ghost + real(self) if len(listed) <= times else real(self)

    monkeypatch.setattr(Journal, "sources", sources)
    return listed


READS: dict[str, Callable[[FeatureStore], Any]] = {
    "keys": lambda s: s.keys(),
    "read": lambda s: s.read([_key(0), _key(5)]),
    "read_all": lambda s: s.read_all(),
    "feature_dim": lambda s: s.feature_dim(),
    "info": lambda s: s.info(),
    "check": lambda s: s.check(),
    "verify": lambda s: verify(s.path),
}


@pytest.mark.parametrize("name", list(READS))
def test_every_read_retries_a_vanished_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    expected = READS[name](store)
    listed = _ghost_first(monkeypatch, times=2)
    got = READS[name](store)
    assert len(listed) >= 3  # two listings met the vanished part, the third did not
    if name == "verify":
        assert got.ok and got.to_dict() == expected.to_dict()  # a fresh report per try
    elif name == "read":
        assert np.array_equal(got, expected)
    elif name == "read_all":
        assert got[0] == expected[0] and np.array_equal(got[1], expected[1])
    else:
        assert got == expected


@pytest.mark.parametrize("name", list(READS))
def test_every_read_gives_up_when_files_keep_vanishing(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    listed = _ghost_first(monkeypatch, times=10**6)
    with pytest.raises(VanishedError, match="disappeared while reading"):
        READS[name](store)
    assert len(listed) == journal_mod.RETRIES


# ---------------------------------------------------------------------------- part files
def test_a_part_is_written_under_its_temp_name_then_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)
    written: list[Path] = []
    real = journal_mod.write_rows

    def spy(path: Path, *a: Any) -> None:
        written.append(path)
        real(path, *a)
        assert path.exists() and not list(store.parts_dir.glob("part-*"))

    monkeypatch.setattr(journal_mod, "write_rows", spy)
    part = store.append([_key(1)], np.ones((1, 4), np.float32))
    (tmp,) = written
    m = journal_mod.PART_TMP.match(tmp.name)
    assert m and m["host"] == journal_mod.HOST and int(m["pid"]) == os.getpid()
    assert tmp.parent == part.parent == store.parts_dir and not tmp.exists()
    token = tmp.name.rsplit("-", 1)[1].removesuffix(".h5")
    assert part.name.endswith(f"-{os.getpid()}-{token}.h5") and part.name.startswith("part-")
    assert store.keys() == {_key(1)}


def test_append_fsyncs_the_part_and_its_folder_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)
    store.parts_dir.mkdir()
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    part = store.append([_key(1)], np.ones((1, 4), np.float32))
    assert len(synced) == 2, synced
    assert Path(synced[0]).parent == store.parts_dir and Path(synced[0]).name.startswith(".tmp-")
    assert Path(synced[1]) == store.parts_dir and part.exists()


def test_a_failed_part_write_leaves_no_file_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)

    def full(path: Path, *_: Any) -> None:
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_mod, "write_rows", full)
    with pytest.raises(StoreError, match="the disk is full"):
        store.append([_key(1)], np.ones((1, 4), np.float32))
    assert list(store.parts_dir.iterdir()) == []


def test_names_of_store_files() -> None:
    fp = "0123456789abcdef" + "f" * 48
    assert store_name("resnet50", fp) == "resnet50-0123456789abcdef.h5"
    assert store_name("a/b c", fp) == "a_b_c-0123456789abcdef.h5"
    j = Journal(Path("/cache") / "x.h5")
    assert (j.parts_dir, j.lock_path, j.gate_path) == (
        Path("/cache/x.parts"),
        Path("/cache/x.h5.lock"),
        Path("/cache/x.h5.gate"),
    )
    assert j.compaction_tmp_name().startswith(".x.h5.tmp-")
    with pytest.raises(StoreError, match=r"ends in \.h5"):
        Journal(Path("/cache/x.hdf5"))


# ---------------------------------------------------------------------------- stale temps
def test_stale_part_temps_are_those_of_dead_writers_or_old_foreign_ones(tmp_path: Path) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    host = journal_mod.HOST
    mine = tmp_path / f".tmp-{host}-{os.getpid()}-abc123.h5"
    dead = tmp_path / f".tmp-{host}-{p.pid}-abc123.h5"
    foreign = tmp_path / ".tmp-otherhost-1-abc123.h5"
    old_foreign = tmp_path / ".tmp-otherhost-2-abc123.h5"
    for path in (mine, dead, foreign, old_foreign):
        path.write_bytes(b"")
    past = time.time() - journal_mod.STALE_TMP_SECONDS - 60
    os.utime(old_foreign, (past, past))
    stale = {path.name for path in tmp_path.iterdir() if journal_mod.is_stale_part_tmp(path)}
    assert stale == {dead.name, old_foreign.name}
