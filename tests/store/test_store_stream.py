"""Compaction streams (bounded memory) and reads match keys without a per-key loop: both keep the
store's semantics (the first occurrence of a key wins: the consolidated file, then the journal
parts in order, then the first row of a part), checked against a dict of what the store holds.

Small BLOCK_BYTES (featurestore.store.format) make every read and copy go through many blocks."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from featurestore.store import FeatureStore, StoreCorruptError, keymatch, verify
from featurestore.store import format as fmt
from featurestore.store import reader as chunk_reader

SPEC = {"backbone": "stream", "dim": 24}
DIM = SPEC["dim"]


def _key(i: int) -> str:
    return hashlib.sha256(f"img{i}".encode()).hexdigest()


def _rows(ids: list[int], variant: int, dim: int = DIM) -> np.ndarray:
    """Rows for ``ids``; another ``variant`` gives other numbers (a second writer)."""
    rng = np.random.default_rng(variant)
    base = rng.standard_normal(dim).astype(np.float32)
    return np.stack([base + np.float32(i) for i in ids]) if ids else np.empty((0, dim), "f4")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fmt, "BLOCK_BYTES", 7 * DIM * 4)  # 7 rows (chunks of 7 rows)


def _journal(store: FeatureStore, batches: list[tuple[list[int], int]], model: dict) -> None:
    """Append ``(ids, variant)`` batches; ``model`` keeps the first row of each key."""
    for ids, variant in batches:
        rows = _rows(ids, variant)
        store.append([_key(i) for i in ids], rows)
        for i, row in zip(ids, rows, strict=True):
            model.setdefault(_key(i), row)


def test_compaction_of_many_parts_keeps_the_first_row_of_each_key(tmp_path: Path) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)
    model: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(3)
    _journal(store, [(list(range(0, 40)), 0)], model)
    assert store.compact() == 40
    batches = []
    for b in range(30):  # overlapping parts, repeats inside a part, rows that differ per part
        ids = rng.integers(20, 120, size=int(rng.integers(0, 25))).tolist()
        batches.append((ids, b + 1))
    _journal(store, batches, model)
    assert store.compact() == len(model) - 40
    assert not list(store.parts_dir.glob("part-*"))
    with h5py.File(store.path, "r") as f:  # plain h5py: old rows first, then new in part order
        keys = [k.decode() for k in f["keys"][...].tolist()]
        rows = f["features"][...]
    order = list(
        dict.fromkeys([_key(i) for i in range(40)] + [_key(i) for b in batches for i in b[0]])
    )
    assert keys == order
    assert np.array_equal(rows, np.stack([model[k] for k in keys]))
    got_keys, got = store.read_all()
    assert got_keys == sorted(model) and np.array_equal(got, np.stack([model[k] for k in got_keys]))
    assert verify(store.path).ok


def test_compaction_memory_does_not_grow_with_the_journal(tmp_path: Path) -> None:
    """Peak of numpy allocations during compaction: a few blocks and the keys, not the rows
    (the old compaction held every new row, twice)."""
    dim = 512
    spec = {"backbone": "stream-mem", "dim": dim}
    peaks = []
    for n_parts in (4, 24):
        store = FeatureStore.for_spec(tmp_path / str(n_parts), spec)
        for p in range(n_parts):
            ids = list(range(p * 200, (p + 1) * 200))
            store.append([_key(i) for i in ids], _rows(ids, p, dim))
        new_bytes = n_parts * 200 * dim * 4
        tracemalloc.start()
        try:
            assert store.compact() == n_parts * 200
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert store.info().n_rows == n_parts * 200
    assert peaks[1] < new_bytes / 4, (peaks, new_bytes)
    assert peaks[1] < 2 * peaks[0] + (1 << 20), peaks  # keys grow, rows do not


def test_reads_in_any_order_with_repeated_keys_return_exact_rows(tmp_path: Path) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)
    model: dict[str, np.ndarray] = {}
    _journal(store, [(list(range(0, 60)), 0)], model)
    store.compact()
    # journal: keys already consolidated (ignored), new ones, and repeats inside a part
    _journal(store, [([5, 60, 61, 61, 62], 1), ([62, 63, 7, 64], 2), ([], 3)], model)
    universe = sorted(model)
    rng = np.random.default_rng(0)
    asks = [
        universe,  # sorted (not the stored order)
        [_key(i) for i in range(60)],  # the consolidated file in stored order: one direct read
        [_key(i) for i in range(10, 30)],  # a run in the middle
        list(rng.permutation(universe)),
        list(rng.choice(universe, size=200)),  # repeats, every file
        [_key(61)] * 3 + [_key(5), _key(5)],
        [_key(i) for i in (0, 59, 30, 1)],  # sparse: a few chunks
        [],
    ]
    for ask in asks:
        got = store.read(ask)
        assert got.shape == (len(ask), DIM)
        assert np.array_equal(got, np.stack([model[k] for k in ask]) if ask else got)
    with pytest.raises(KeyError, match="1 of 3 keys"):
        store.read([_key(0), _key(999), _key(61)])
    keys, rows = store.read_all()
    assert keys == universe and np.array_equal(rows, np.stack([model[k] for k in keys]))


def test_hash_collisions_fall_back_to_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key matching sorts 64-bit hashes; when different keys share one it uses the keys."""
    store = FeatureStore.for_spec(tmp_path, SPEC)
    model: dict[str, np.ndarray] = {}
    _journal(store, [(list(range(30)), 0), ([3, 30, 31, 31], 1)], model)
    real = keymatch.key_hashes

    def colliding(keys: np.ndarray) -> np.ndarray | None:
        h = real(keys)
        return None if h is None else h % np.uint64(3)

    monkeypatch.setattr(keymatch, "key_hashes", colliding)
    ask = [_key(i) for i in (31, 3, 30, 0, 29, 3, 31)]
    assert np.array_equal(store.read(ask), np.stack([model[k] for k in ask]))
    assert store.compact() == 32
    assert np.array_equal(store.read(ask), np.stack([model[k] for k in ask]))
    keys, rows = store.read_all()
    assert keys == sorted(model) and np.array_equal(rows, np.stack([model[k] for k in keys]))


def test_consolidated_file_with_repeated_keys_serves_the_first_row(tmp_path: Path) -> None:
    """Compaction never writes one, but a consolidated file holding a key twice (flagged by
    verify) still reads like every other file: the first row wins, in every read path."""
    store = FeatureStore.for_spec(tmp_path, SPEC)
    ids = [0, 1, 2, 1, 3]
    rows = _rows(ids, 0)
    rows[3] += 100  # the second row of key 1 differs from the first
    keys = keymatch.as_key_array([_key(i) for i in ids])
    fmt.write_rows(store.path, keys, rows, store._attrs({}))
    model = {_key(i): rows[ids.index(i)] for i in ids}
    stored = [_key(i) for i in ids]
    assert np.array_equal(store.read(stored), np.stack([model[k] for k in stored]))
    keys, got = store.read_all()
    assert keys == sorted(model) and np.array_equal(got, np.stack([model[k] for k in keys]))
    assert not verify(store.path).ok  # reported, though


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> FeatureStore:
    """A consolidated file of 100 rows in chunks of 7 rows (the last one partial), read in
    blocks of two chunks: every read of it spans many blocks."""
    monkeypatch.setattr(fmt, "TARGET_CHUNK_BYTES", 7 * DIM * 4)
    monkeypatch.setattr(fmt, "BLOCK_BYTES", 14 * DIM * 4)
    return FeatureStore


def _flip_row_byte(path: Path, row: int, chunk: int) -> None:
    """Flip one byte of stored row ``row`` (chunks of ``chunk`` rows, written unfiltered)."""
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(row // chunk)
    pos = info.byte_offset + (row % chunk) * DIM * 4 + 5
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reader", ["preadv", "hdf5"])
def test_feature_chunks_are_checked_by_crc32_on_a_second_thread(
    reader: str, small_chunks: type[FeatureStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of reading format-3 chunks: plain preads where HDF5 says where the chunks are,
    HDF5 itself otherwise."""
    store = small_chunks.for_spec(tmp_path, SPEC)
    model: dict[str, np.ndarray] = {}
    _journal(store, [(list(range(100)), 0)], model)
    store.compact()
    with h5py.File(store.path, "r") as f:
        assert f["features"].chunks == (7, DIM) and not f["features"].fletcher32
        assert f["features_crc32"].shape == (15,)
        layout = chunk_reader.CheckedRows(f, store.path, store=store.path)._chunk_layout()
        assert layout is not None and len(layout[1]) == 15
    if reader == "hdf5":
        monkeypatch.setattr(chunk_reader.CheckedRows, "_chunk_layout", lambda self: None)
    preads: list[int] = []
    real_preadv = chunk_reader.os.preadv

    def counted(fd: int, buffers: list, offset: int) -> int:
        preads.append(offset)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(chunk_reader.os, "preadv", counted)
    threads: list[str] = []
    real_check = chunk_reader.CheckedRows.check

    def spy(self: chunk_reader.CheckedRows, block: np.ndarray, lo: int) -> None:
        import threading

        threads.append(threading.current_thread().name)
        real_check(self, block, lo)

    monkeypatch.setattr(chunk_reader.CheckedRows, "check", spy)
    stored = [_key(i) for i in range(100)]
    shuffled = list(np.random.default_rng(2).permutation(stored))
    for ask in (stored, shuffled, [_key(i) for i in (3, 50, 99, 50)]):  # 8, 8, 3 blocks
        assert np.array_equal(store.read(ask), np.stack([model[k] for k in ask]))
    assert len(threads) == 8 + 8 + 3 and all(t.startswith("featurestore-crc") for t in threads)
    assert len(preads) == (15 + 15 + 3 if reader == "preadv" else 0)  # one per chunk
    threads.clear()
    assert np.array_equal(store.read([_key(1)]), model[_key(1)][None])  # one chunk: inline
    assert threads == ["MainThread"]

    _flip_row_byte(store.path, 50, 7)  # chunk 7: rows 49..56
    for ask in (stored, shuffled, [_key(50)]):
        with pytest.raises(StoreCorruptError, match=r"feature rows 49\.\.56 fail their CRC32"):
            store.read(ask)
    with pytest.raises(StoreCorruptError, match="CRC32"):
        store.read_all()
    ok = [_key(i) for i in range(49)] + [_key(i) for i in range(56, 100)]
    assert np.array_equal(store.read(ok), np.stack([model[k] for k in ok]))  # other chunks read
    report = verify(store.path)
    assert report.problems == [f"{store.path}: features rows 49..56 unreadable"]
    with pytest.raises(StoreCorruptError, match="fail their checksum"):
        store.check()


def test_rows_without_their_crc32s_are_refused(tmp_path: Path) -> None:
    """A format-3 file whose CRC32 dataset is gone (or does not fit the chunks) is damage: its
    rows are never read unchecked."""
    store = FeatureStore.for_spec(tmp_path, SPEC)
    _journal(store, [(list(range(20)), 0)], {})
    store.compact()
    with h5py.File(store.path, "r+") as f:
        f["features_crc32"].resize((3,))
    with pytest.raises(StoreCorruptError, match="does not match the feature chunks"):
        store.read([_key(0)])
    assert not verify(store.path).ok
    with h5py.File(store.path, "r+") as f:
        del f["features_crc32"]
    with pytest.raises(StoreCorruptError, match="carry no checksum"):
        store.read([_key(0)])
    with pytest.raises(StoreCorruptError, match="carry no checksum"):
        store.check()
    assert any("carry no checksum" in p for p in verify(store.path).problems)


def test_compaction_over_a_damaged_consolidated_file_changes_nothing(
    small_chunks: type[FeatureStore], tmp_path: Path, folder_bytes: Any
) -> None:
    """Compaction checks every block of the consolidated file as it copies it: a damaged one
    raises, and the file, the journal and the directory are left as they were."""
    store = small_chunks.for_spec(tmp_path, SPEC)
    _journal(store, [(list(range(100)), 0)], {})
    store.compact()
    _flip_row_byte(store.path, 90, 7)  # in the last blocks: found midway through the copy
    _journal(store, [([100, 101], 1)], {})
    before = folder_bytes(tmp_path)
    with pytest.raises(StoreCorruptError, match=r"feature rows 84\.\.91 fail their CRC32"):
        store.compact()
    assert folder_bytes(tmp_path) == before
