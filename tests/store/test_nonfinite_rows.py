"""Rows that are not numbers: a store never takes a row holding NaN or an infinity, and one
found in a store (written by an older version, or by hand) is damage.

The promise under test: `append` refuses such a batch with a StoreError naming it and writes
nothing; `verify` reports such rows (exit 1), the check before appending refuses the store and
compaction never carries them into a new file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featurestore.cli import main as cli
from featurestore.store import FeatureStore, StoreCorruptError, StoreError, verify
from featurestore.store.format import store_attrs, write_legacy
from featurestore.store.keymatch import as_key_array

SPEC = {"backbone": "toy", "dim": 32}
BAD = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def _keys(n: int, seed: int = 0) -> list[str]:
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n)]


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, SPEC["dim"])).astype(np.float32)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("value", sorted(BAD))
def test_append_refuses_a_batch_with_a_nonfinite_row_and_writes_nothing(
    value: str, tmp_path: Path
) -> None:
    store = FeatureStore.for_spec(tmp_path, SPEC)
    store.append(_keys(4), _rows(4))
    before = _files(tmp_path)
    keys, rows = _keys(5, seed=1), _rows(5, seed=1)
    rows[3, 7] = BAD[value]
    with pytest.raises(StoreError) as err:
        store.append(keys, rows)
    msg = str(err.value)
    assert "batch of 5 rows" in msg and "1 of them" in msg and keys[3] in msg, msg
    assert _files(tmp_path) == before, "a refused batch left a file behind"
    assert store.keys() == set(_keys(4))


def _hand_written(tmp_path: Path, where: str) -> FeatureStore:
    """A store whose NaN row was written around the check, with a good journal part to merge:
    in the consolidated file (format 2, as an older version wrote it) or in a journal part."""
    store = FeatureStore.for_spec(tmp_path, SPEC)
    rows = _rows(6)
    rows[2] = np.nan
    if where == "consolidated":
        write_legacy(store.path, _keys(6), rows, format_version=2, spec=SPEC)
        store.append(_keys(3, seed=9), _rows(3, seed=9))
    else:
        store.append(_keys(3, seed=9), _rows(3, seed=9))
        store.compact()
        store.journal.append(as_key_array(_keys(6)), rows, lambda: store_attrs(SPEC, {}))
    return store


@pytest.mark.parametrize("where", ["consolidated", "journal-part"])
def test_nonfinite_rows_in_a_store_are_damage(where: str, tmp_path: Path) -> None:
    store = _hand_written(tmp_path, where)
    report = verify(store.path)
    assert not report.ok
    assert any("NaN or infinite" in p and "row 2 first" in p for p in report.problems), report
    r = CliRunner().invoke(cli, ["verify", str(store.path), "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["ok"] is False
    before = _files(tmp_path)
    with pytest.raises(StoreCorruptError, match="NaN or infinite"):
        store.check()  # what extract runs before appending
    with pytest.raises(StoreCorruptError, match="NaN or infinite"):
        store.compact(force=True)
    assert _files(tmp_path) == before, "a store with non-finite rows was rewritten"


def test_compaction_of_a_large_store_never_carries_nonfinite_rows(tmp_path: Path) -> None:
    """A consolidated file too large for the check before appending is checked in full when
    compaction copies it: a NaN row there stops the compaction."""
    store = FeatureStore.for_spec(tmp_path, SPEC)
    rows = _rows(4000)
    rows[3999, 0] = np.inf  # the last chunk
    write_legacy(store.path, _keys(4000), rows, format_version=2, spec=SPEC)
    store.append(_keys(2, seed=5), _rows(2, seed=5))
    with pytest.raises(StoreCorruptError, match="row 3999 holds NaN or infinite"):
        store.compact(force=True)
    assert len(list(store.parts_dir.glob("part-*.h5"))) == 1, "the journal part was lost"
