"""Removing stores and rows, and collecting leftovers, with readers and writers around: the
store's locks are taken as compaction takes them, and a lock file deleted while others wait on
it never lets two processes hold "exclusive" locks on two different files."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.errors import StoreError
from featurestore.store import FeatureStore, verify
from featurestore.store.journal import Journal
from featurestore.store.maintenance import collect_garbage, remove_rows, remove_store

SPEC = {"backbone": "toy", "dim": 5}
KEYS = [f"{i:064x}" for i in range(30)]


def rows(keys: list[str]) -> np.ndarray:
    return np.stack([np.full(5, int(k, 16), dtype=np.float32) for k in keys])


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    s = FeatureStore.for_spec(tmp_path, SPEC)
    s.append(KEYS[:20], rows(KEYS[:20]))
    s.compact()
    s.append(KEYS[20:], rows(KEYS[20:]))  # a pending journal part
    return s


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 (surfaced by the test)
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


# ---------------------------------------------------------------------------- remove rows
def test_remove_rows_from_the_file_and_the_journal(store: FeatureStore) -> None:
    gone = KEYS[15:25]  # some consolidated, some in the pending part
    dry = remove_rows(store.path, [*gone, "f" * 64], dry_run=True)
    assert dry.rows_removed == 10 and len(store.journal.part_paths()) == 1  # nothing changed
    report = remove_rows(store.path, [*gone, "f" * 64], reason="src")
    assert report.rows_removed == 10
    keys, got = store.read_all()
    assert keys == sorted(set(KEYS) - set(gone))
    np.testing.assert_array_equal(got, rows(keys))
    assert verify(store.path).ok and not store.journal.part_paths()
    with h5py.File(store.path) as f:
        removals = json.loads(f.attrs["provenance"])["removals"]
    assert removals[-1]["rows"] == 10 and removals[-1]["reason"] == "src"


def test_removing_every_row_leaves_an_empty_store_that_verifies(store: FeatureStore) -> None:
    assert remove_rows(store.path, KEYS).rows_removed == 30
    assert store.keys() == set() and verify(store.path).ok
    assert store.read_all()[0] == []
    store.append(KEYS[:2], rows(KEYS[:2]))  # and it takes rows again
    store.compact()
    assert store.keys() == set(KEYS[:2])


def test_keys_the_store_does_not_hold_change_nothing(store: FeatureStore) -> None:
    before = store.path.read_bytes()
    report = remove_rows(store.path, ["e" * 64])
    assert report.rows_removed == 0 and not report.steps
    assert store.path.read_bytes() == before


def test_no_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        remove_rows(tmp_path / "none-0123456789abcdef.h5", KEYS)
    with pytest.raises(StoreError, match="no store at"):
        remove_store(tmp_path / "none-0123456789abcdef.h5")


def test_remove_rows_waits_for_a_reader(store: FeatureStore) -> None:
    with store.journal.locked(exclusive=False):  # a sweep reading rows
        t, box = _in_thread(lambda: remove_rows(store.path, KEYS[:5]))
        time.sleep(0.5)
        assert t.is_alive(), "removal did not wait for the reader"
        assert store.keys() >= set(KEYS[:5])
    t.join(30)
    assert "error" not in box and box["result"].rows_removed == 5


# ---------------------------------------------------------------------------- remove a store
def test_remove_store_takes_every_file(store: FeatureStore, tmp_path: Path) -> None:
    other = FeatureStore.for_spec(tmp_path, {"backbone": "other", "dim": 5})
    other.append(KEYS[:3], rows(KEYS[:3]))
    other.compact()
    dry = remove_store(store.path, dry_run=True)
    assert {s.path for s in dry.steps} == {
        store.path,
        store.parts_dir,
        store.lock_path,
        store.gate_path,
    }
    assert store.path.exists()
    remove_store(store.path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        p.name for p in (other.path, other.parts_dir, other.lock_path, other.gate_path)
    )
    assert other.keys() == set(KEYS[:3])


def test_remove_store_waits_for_a_reader_who_then_sees_no_store(store: FeatureStore) -> None:
    with store.journal.locked(exclusive=False):
        t, box = _in_thread(lambda: remove_store(store.path))
        time.sleep(0.5)
        assert t.is_alive() and store.path.exists()
    t.join(30)
    assert "error" not in box
    assert store.keys() == set()  # a new reader finds nothing, and no error


def test_a_compaction_waiting_on_a_deleted_gate_still_goes_before_new_readers(
    tmp_path: Path,
) -> None:
    """Removing a store deletes its gate and lock while holding them. A compaction (B) that was
    waiting on the deleted gate must, once it has it, hold the gate the path names now: else a
    new reader passes the new gate freely, and a stream of readers starves the compaction."""
    path = tmp_path / "toy-0123456789abcdef.h5"
    rm, b, r1, r2 = (Journal(path) for _ in range(4))
    b_inside, r1_done, r2_inside = threading.Event(), threading.Event(), threading.Event()

    def compaction() -> None:
        with b.locked(exclusive=True):
            b_inside.set()

    def reader(journal: Journal, inside: threading.Event, until: threading.Event) -> None:
        with journal.locked(exclusive=False):
            inside.set()
            until.wait(30)

    with rm.locked(exclusive=True):
        tb = threading.Thread(target=compaction, daemon=True)
        tb.start()
        time.sleep(0.3)  # B now waits on the gate
        rm.gate_path.unlink()
        rm.lock_path.unlink()
        r1_inside = threading.Event()
        t1 = threading.Thread(target=reader, args=(r1, r1_inside, r1_done), daemon=True)
        t1.start()  # a reader of the new files: it does not wait for the removal
        assert r1_inside.wait(10)
    time.sleep(0.3)  # B has the gate now, and waits for r1's shared lock
    assert not b_inside.is_set()
    t2 = threading.Thread(target=reader, args=(r2, r2_inside, threading.Event()), daemon=True)
    t2.start()
    time.sleep(0.5)
    assert not r2_inside.is_set(), "a new reader went before the waiting compaction"
    r1_done.set()
    assert b_inside.wait(10) and r2_inside.wait(10)


# ---------------------------------------------------------------------------- garbage
def test_gc_keeps_pending_rows_and_merges_them_when_asked(store: FeatureStore) -> None:
    report = collect_garbage(store.path.parent)
    assert store.journal.part_paths() and any("not merged yet" in n for n in report.notes)
    collect_garbage(store.path.parent, compact=True)
    assert not store.journal.part_paths() and store.keys() == set(KEYS)
    assert verify(store.path).ok


def test_gc_of_a_missing_cache_is_a_note(tmp_path: Path) -> None:
    report = collect_garbage(tmp_path / "nothing")
    assert not report.steps and "no cache" in report.notes[0]


def test_gc_leaves_a_damaged_store_and_cleans_the_others(store: FeatureStore, tmp_path) -> None:
    other = FeatureStore.for_spec(tmp_path, {"backbone": "other", "dim": 5})
    other.append(KEYS[:3], rows(KEYS[:3]))
    other.compact()
    stale = tmp_path / f".{other.path.name}.tmp-0a1b2c3d4e5f"
    stale.write_bytes(b"left by a killed compaction")
    store.path.write_bytes(b"damaged")
    report = collect_garbage(tmp_path)
    assert not stale.exists()
    assert any(store.path.name in n and "damaged" in n for n in report.notes)
    assert store.path.read_bytes() == b"damaged"
