"""The file format: what a written file holds, and files of the older formats (1-2) as
``write_legacy`` writes them read back through the store."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.keys import canonical_json, fingerprint
from featurestore.store import FORMAT, FeatureStore, StoreError, verify, write_legacy
from featurestore.store import format as fmt

SPEC = {"backbone": "fmt", "dim": 24}
DIM = 24


def _key(i: int) -> str:
    return hashlib.sha256(f"img{i}".encode()).hexdigest()


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)


def test_row_writer_fills_in_order_and_records_each_chunks_crc32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of any size, across blocks of two 7-row chunks: rows, keys and every CRC32 as a
    plain h5py read of the file says."""
    monkeypatch.setattr(fmt, "TARGET_CHUNK_BYTES", 7 * DIM * 4)
    monkeypatch.setattr(fmt, "BLOCK_BYTES", 14 * DIM * 4)
    rows, keys = _rows(50), np.array([_key(i) for i in range(50)], dtype=fmt.KEY_DTYPE)
    cuts = [0, 3, 4, 20, 21, 50]

    def fill(writer: fmt.RowWriter) -> None:
        assert writer.step == 14
        for lo, hi in itertools.pairwise(cuts):
            writer.add(keys[lo:hi], rows[lo:hi])

    path = tmp_path / "f.h5"
    fmt.write_file(path, 50, DIM, fmt.store_attrs(SPEC, {"run": 1}), fill)
    with h5py.File(path, "r") as f:
        assert f["features"].chunks == (7, DIM) and f["features"].dtype == fmt.STORED
        assert np.array_equal(f["features"][...], rows)
        assert np.array_equal(f["keys"][...], keys)
        want = [fmt.crc32(rows[i : i + 7]) for i in range(0, 50, 7)]
        assert f[fmt.CRC][...].tolist() == want
        assert fmt.attr_text(f, "format") == FORMAT and f.attrs["format_version"] == 3
        assert fmt.attr_text(f, "spec") == canonical_json(SPEC)
        assert fmt.attr_text(f, "fingerprint") == fingerprint(SPEC)
        assert fmt.json_attr(f, "provenance", path) == {"run": 1}
        assert (f.attrs["n_rows"], f.attrs["feature_dim"]) == (50, DIM)


def test_a_file_short_of_rows_is_an_error(tmp_path: Path) -> None:
    keys = np.array([_key(0)], dtype=fmt.KEY_DTYPE)
    with pytest.raises(ValueError, match="1 rows written to a file of 2"):
        fmt.write_file(tmp_path / "f.h5", 2, DIM, {}, lambda w: w.add(keys, _rows(1)))


@pytest.mark.parametrize("version", [1, 2])
def test_legacy_files_read_verify_and_compact_into_format_3(
    version: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fmt, "BLOCK_BYTES", 3 * DIM * 4)  # copied in blocks of whole chunks
    store = FeatureStore.for_spec(tmp_path, SPEC)
    keys = [_key(i) for i in range(40)]
    rows = _rows(40)
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["rows"] = rows
    with h5py.File(src, "r") as f:  # rows given as a dataset, as the scale benchmark does
        assert write_legacy(store.path, keys, f["rows"], format_version=version, spec=SPEC) == (
            store.path
        )
    with h5py.File(store.path, "r") as f:
        assert f.attrs["format_version"] == version and fmt.CRC not in f
        assert f["features"].fletcher32 and f["keys"].fletcher32
        assert f["features"].chunks == (min(fmt.chunk_rows(DIM), 40), DIM)
        assert f["features"].maxshape == (None, DIM) and f["keys"].maxshape == (None,)
        vlen = h5py.check_string_dtype(f.attrs.get_id("spec").dtype).length is None
        assert vlen == (version == 1)
        assert json.loads(f.attrs["spec"]) == SPEC and fmt.attr_text(f, "spec")
    assert np.array_equal(store.read(keys[::-1]), rows[::-1])
    got_keys, got = store.read_all()
    order = np.argsort(keys)
    assert got_keys == sorted(keys) and np.array_equal(got, rows[order])
    assert verify(store.path).ok and store.info().n_rows == 40
    store.check()
    store.append([_key(99)], _rows(1))
    assert store.compact() == 1
    with h5py.File(store.path, "r") as f:
        assert f.attrs["format_version"] == 3 and not f["features"].fletcher32 and fmt.CRC in f
    assert np.array_equal(store.read(keys), rows) and verify(store.path).ok


def test_legacy_writer_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format_version"):
        write_legacy(tmp_path / "a.h5", [_key(0)], _rows(1), format_version=3, spec=SPEC)
    with pytest.raises(ValueError, match="len"):
        write_legacy(tmp_path / "a.h5", [_key(0)], _rows(2), format_version=2, spec=SPEC)


def test_a_legacy_file_of_another_extractor_is_refused(tmp_path: Path) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)
    other = {**SPEC, "dim": 25}
    write_legacy(store.path, [_key(0)], _rows(1), format_version=2, spec=other)
    with pytest.raises(StoreError, match="belongs to another extractor"):
        store.keys()
    assert FeatureStore(store.path).keys() == {_key(0)}
