"""Several processes on one cache: parallel extractions end with one complete store and no
duplicates; readers (what sweeps use: FeatureStore.keys()/read()) running while another process
writes and compacts always see a consistent set of rows, or a clear error, never a wrong row.

Extractions run in children forked from a forkserver with torch imported (see conftest); the
store-level writers need no torch and append and compact in a tight loop, which makes races
between a compaction and a reader far more likely than a real extraction would.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore.store import FeatureStore, StoreCorruptError, StoreError, verify
from featurestore.store.journal import Journal

BATCH = 4
TINY = {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32}
SPEC = {"backbone": "toy", "dim": 96}


# ---------------------------------------------------------------------------- child targets
def _extract_child(source: str, cache: str, start_at: float) -> None:
    import torch

    torch.set_num_threads(1)
    from featurestore.extraction import extract

    time.sleep(max(0.0, start_at - time.time()))  # all children start together
    extract(source, cache_dir=cache, batch_size=BATCH, workers=0, device="cpu", **TINY)


def _row(key: str) -> np.ndarray:
    """The row a toy writer stores for ``key``: a deterministic function of the key."""
    return np.random.default_rng(int(key, 16)).standard_normal(SPEC["dim"]).astype("f4")


def _key(i: int) -> str:
    return f"{i:064x}"


def _store_writer(path: str, first: int, n_batches: int, batch: int, compact_every: int) -> None:
    """Append ``n_batches`` batches of keys ``first, first+1, ...``, compacting every
    ``compact_every`` batches and at the end."""
    store = FeatureStore(path, spec=SPEC)
    for b in range(n_batches):
        keys = [_key(first + b * batch + i) for i in range(batch)]
        store.append(keys, np.stack([_row(k) for k in keys]))
        if (b + 1) % compact_every == 0:
            store.compact()
    store.compact()


# ---------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, make_images: Any, fork_ctx: Any) -> dict:
    root = tmp_path_factory.mktemp("conc")
    src = root / "images"
    make_images(src, 48, ("a", "b", "c"), seed=5)
    ref_cache = root / "ref"
    p = fork_ctx.Process(target=_extract_child, args=(str(src), str(ref_cache), 0.0))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    (store,) = ref_cache.glob("*.h5")
    keys, rows = FeatureStore(store).read_all()
    return {"src": src, "name": store.name, "ref": dict(zip(keys, rows, strict=True))}


def _assert_one_complete_store(store: Path, ref: dict[str, np.ndarray]) -> None:
    report = verify(store)
    assert report.ok, report.problems
    import h5py

    with h5py.File(store, "r") as f:
        keys = [k.decode() for k in f["keys"][...]]
        rows = f["features"][...]
    assert len(keys) == len(set(keys)) == len(ref), "duplicate or missing rows"
    for k, row in zip(keys, rows, strict=True):
        assert np.array_equal(row, ref[k]), f"row of {k[:12]} differs from a single run's"
    parts_dir = store.with_name(store.stem + ".parts")
    assert not list(parts_dir.glob("*")), f"left in the journal: {list(parts_dir.glob('*'))}"


# ---------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("n_procs", [2, 3])
def test_parallel_extractions_end_with_one_complete_store(
    n_procs: int, images: dict, fork_ctx: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    start = time.time() + 0.3
    procs = [
        fork_ctx.Process(target=_extract_child, args=(str(images["src"]), str(cache), start))
        for _ in range(n_procs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n_procs
    _assert_one_complete_store(cache / images["name"], images["ref"])


def test_two_cli_extractions_at_once(
    images: dict, tmp_path: Path, tiny_cli_args: list[str], cli_env: Any
) -> None:
    """The real command twice at once (each with its DataLoader worker): both succeed."""
    cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "featurestore.cli",
        "extract",
        str(images["src"]),
        *tiny_cli_args,
        "--batch-size",
        str(BATCH),
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--json",
    ]
    procs = [
        subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    _assert_one_complete_store(cache / images["name"], images["ref"])


# ---------------------------------------------------------------------------- readers
def _check_snapshot(store: FeatureStore) -> int:
    """One sweep-style read: keys(), then read() of them. Rows must be the writer's rows."""
    keys = sorted(store.keys())
    if not keys:
        return 0
    rows = store.read(keys)
    for k, row in zip(keys, rows, strict=True):
        assert np.array_equal(row, _row(k)), f"wrong row for {k[:12]}"
    return len(keys)


@contextlib.contextmanager
def _writers(fork_ctx: Any, path: Path, n: int, **kw: Any) -> Iterator[list[Any]]:
    procs = [
        fork_ctx.Process(target=_store_writer, args=(str(path), 10_000 * i), kwargs=kw)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    try:
        yield procs
    finally:
        for p in procs:
            p.join(120)
    assert [p.exitcode for p in procs] == [0] * n


def _read_while_writing(store: FeatureStore, procs: list[Any]) -> tuple[list[int], list[str]]:
    sizes, errors = [], []
    while any(p.is_alive() for p in procs):
        try:
            sizes.append(_check_snapshot(store))
            if store.path.exists() or store.parts_dir.exists():  # else not a store (yet)
                report = verify(store.path)
                assert report.ok or report.files_checked == 0, report.problems
            dim = store.feature_dim()
            assert dim in (None, SPEC["dim"])
        except StoreCorruptError as exc:  # a healthy store must never be called damaged
            raise AssertionError(f"healthy store reported as damaged: {exc}") from exc
        except StoreError as exc:  # allowed: a clear error (counted, and kept rare below)
            errors.append(str(exc))
    return sizes, errors


def test_reader_sees_consistent_rows_while_writers_append_and_compact(
    fork_ctx: Any, tmp_path: Path
) -> None:
    path = FeatureStore.for_spec(tmp_path, SPEC).path
    reader = FeatureStore(path)  # a reader needs no spec, like a sweep opening a store file
    with _writers(fork_ctx, path, 2, n_batches=60, batch=8, compact_every=3) as procs:
        sizes, errors = _read_while_writing(reader, procs)
    assert not errors, errors
    assert len(sizes) >= 5 and len(set(sizes)) >= 3, f"reads did not overlap writes: {sizes}"
    assert sizes == sorted(sizes), "a reader saw rows disappear"
    assert _check_snapshot(reader) == 2 * 60 * 8
    assert verify(path).ok


def test_sweep_reading_while_an_extraction_writes(
    images: dict, fork_ctx: Any, tmp_path: Path
) -> None:
    """What a sweep does (keys(), then read() of them) from this process while an extraction
    child writes batches and compacts: every snapshot is a set of finished rows, each equal to
    the uninterrupted run's row."""
    cache = tmp_path / "cache"
    path = cache / images["name"]
    p = fork_ctx.Process(target=_extract_child, args=(str(images["src"]), str(cache), 0.0))
    p.start()
    sizes = []
    while p.is_alive():
        if not (path.exists() or path.with_name(path.stem + ".parts").exists()):
            time.sleep(0.002)
            continue
        reader = FeatureStore(path)
        keys = sorted(reader.keys())
        rows = reader.read(keys) if keys else np.empty((0, 0))
        for k, row in zip(keys, rows, strict=True):
            assert np.array_equal(row, images["ref"][k]), f"wrong row for {k[:12]}"
        sizes.append(len(keys))
    p.join()
    assert p.exitcode == 0
    assert sizes == sorted(sizes) and len(set(sizes)) >= 2, f"no read overlapped: {sizes}"
    _assert_one_complete_store(path, images["ref"])


def test_reader_without_the_lock_still_never_sees_wrong_rows(
    fork_ctx: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that cannot take the lock (read-only cache) races compactions: a journal part
    can vanish between listing and opening. It must retry (or give a clear error), never call
    the store damaged or return a wrong row."""

    @contextlib.contextmanager
    def no_lock(self: Journal, *, exclusive: bool) -> Iterator[None]:
        yield

    path = FeatureStore.for_spec(tmp_path, SPEC).path
    reader = FeatureStore(path)
    monkeypatch.setattr(Journal, "locked", no_lock)  # only in this (reader) process
    with _writers(fork_ctx, path, 2, n_batches=60, batch=8, compact_every=1) as procs:
        sizes, errors = _read_while_writing(reader, procs)
    assert len(errors) <= len(sizes) // 10 + 1, errors
    assert all("disappeared" in e for e in errors), errors
    assert _check_snapshot(reader) == 2 * 60 * 8


def test_concurrent_store_writers_with_overlapping_keys(fork_ctx: Any, tmp_path: Path) -> None:
    """Three writers append the same keys (as parallel extractions of one source do) and
    compact as they go: one store, every key once, every row right."""
    path = FeatureStore.for_spec(tmp_path, SPEC).path
    procs = [
        fork_ctx.Process(
            target=_store_writer,
            args=(str(path), 0),
            kwargs={"n_batches": 30, "batch": 8, "compact_every": 2},
        )
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    import h5py

    with h5py.File(path, "r") as f:
        keys = [k.decode() for k in f["keys"][...]]
        rows = f["features"][...]
    assert sorted(keys) == [_key(i) for i in range(30 * 8)]
    assert all(np.array_equal(r, _row(k)) for k, r in zip(keys, rows, strict=True))
    assert verify(path).ok and not list(path.with_name(path.stem + ".parts").glob("*"))


def _blocked_flocks() -> int:
    """How many flock requests are waiting, system-wide (Linux: '->' lines in /proc/locks)."""
    return sum(" -> " in line for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_a_waiting_compaction_goes_before_new_readers(tmp_path: Path) -> None:
    """Readers that keep overlapping (several sweeps) must not starve a compaction: once a
    compaction waits, new readers queue behind it."""
    import threading

    path = FeatureStore.for_spec(tmp_path, SPEC).path
    first, second, compactor = (FeatureStore(path) for _ in range(3))
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def long_read() -> None:
        with first.journal.locked(exclusive=False):
            holding.set()
            release.wait(30)
            order.append("first read ends")

    def compact() -> None:
        with compactor.journal.locked(exclusive=True):
            order.append("compaction")

    def new_read() -> None:
        with second.journal.locked(exclusive=False):
            order.append("second read")

    def wait_blocked(n: int) -> None:
        deadline = time.monotonic() + 30
        while _blocked_flocks() < n:
            assert time.monotonic() < deadline, "a lock request never blocked"
            time.sleep(0.005)

    threads = [threading.Thread(target=f) for f in (long_read, compact, new_read)]
    base = _blocked_flocks()
    threads[0].start()
    assert holding.wait(30)
    threads[1].start()
    wait_blocked(base + 1)  # the compaction waits for the first read
    threads[2].start()
    time.sleep(0.2)
    assert "second read" not in order, "a new reader overtook the waiting compaction"
    release.set()
    for t in threads:
        t.join(30)
    assert order == ["first read ends", "compaction", "second read"]
