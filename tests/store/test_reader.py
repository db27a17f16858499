"""Opening a store file with its checks: a vanished file (retried by readers), a damaged one
and another extractor's are told apart, and damage names the file and how to rebuild."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.store import FeatureStore, StoreCorruptError, StoreError, rebuild_hint
from featurestore.store.journal import VanishedError
from featurestore.store.reader import CheckedRows, damaged, open_checked, read_keys

SPEC = {"backbone": "reader", "dim": 4}


def _part(root: Path) -> tuple[FeatureStore, Path]:
    store = FeatureStore.for_spec(root, SPEC)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3)]
    return store, store.append(keys, np.arange(12, dtype=np.float32).reshape(3, 4))


def test_a_good_file_opens_and_reads(tmp_path: Path) -> None:
    store, part = _part(tmp_path)
    with open_checked(part, store.fingerprint) as f:
        assert len(read_keys(f, part)) == 3
        out = np.zeros((3, 4), np.float32)
        CheckedRows(f, part, store=store.path).read_into(np.array([2, 0]), np.array([0, 1]), out)
    assert out.tolist() == [[8, 9, 10, 11], [0, 1, 2, 3], [0, 0, 0, 0]]


def test_a_vanished_file_is_not_damage(tmp_path: Path) -> None:
    with pytest.raises(VanishedError, match="disappeared while reading"):
        open_checked(tmp_path / "gone.h5", None)


def test_a_file_that_is_not_hdf5_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(StoreCorruptError, match="not a readable HDF5 file") as exc:
        open_checked(path, None)
    assert exc.value.file == path and not isinstance(exc.value, VanishedError)


def test_a_file_without_its_datasets_is_damage(tmp_path: Path) -> None:
    store, part = _part(tmp_path)
    with h5py.File(part, "r+") as f:
        del f["keys"]
    with pytest.raises(StoreCorruptError, match="'features' and 'keys' are required"):
        open_checked(part, store.fingerprint)


def test_another_extractors_file_is_refused_but_not_called_damaged(tmp_path: Path) -> None:
    _, part = _part(tmp_path)
    with pytest.raises(StoreError, match="belongs to another extractor") as exc:
        open_checked(part, "f" * 64)
    assert not isinstance(exc.value, StoreCorruptError)
    open_checked(part, None).close()  # a reader without a spec takes any fingerprint


def test_damage_names_the_file_and_how_to_rebuild(tmp_path: Path) -> None:
    store, part = _part(tmp_path)
    err = damaged(store.path, part, "bad bytes")
    assert err.file == part
    assert str(err) == f"{part}: bad bytes. {rebuild_hint(store.path, part)}"
    assert f"delete the damaged journal part {part}" in str(err)
    assert "journal parts in" in rebuild_hint(store.path, store.path)
