"""Reading a store: the consolidated file and the journal parts as one set of rows.

The first occurrence of a key wins: the consolidated file's row, else the earliest journal
part's (the first row of a part that holds it twice). Each function reads one snapshot of the
files and is meant to run under the shared lock, through :meth:`Journal.shared`, which also
runs it again when a file vanished under a reader without the lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import MissingRowsError, StoreCorruptError, StoreError
from featurestore.store.format import KEY_DTYPE, attr_text, json_attr
from featurestore.store.journal import Journal, VanishedError
from featurestore.store.keymatch import first_match
from featurestore.store.reader import CheckedRows, open_checked, read_keys


@dataclass
class StoreInfo:
    """What a store holds: enough for `featurestore ls` and `info`."""

    path: Path
    fingerprint: str
    backbone: str
    spec: dict[str, Any]
    n_rows: int
    feature_dim: int
    n_parts: int
    size_bytes: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "backbone": self.backbone,
            "spec": self.spec,
            "n_rows": self.n_rows,
            "feature_dim": self.feature_dim,
            "pending_parts": self.n_parts,
            "size_bytes": self.size_bytes,
            "provenance": self.provenance,
        }


def all_keys(journal: Journal, expected: str | None) -> set[str]:
    """Every key held, consolidated or in the journal."""
    out: set[str] = set()
    for path in journal.sources():
        with open_checked(path, expected) as f:
            out.update(k.decode() for k in read_keys(f, path).tolist())
    return out


def key_array(journal: Journal, expected: str | None) -> np.ndarray:
    """Every key held (consolidated file, then the parts in order) as one fixed-width array,
    duplicates included: 64 bytes a key, where a set of ``str`` costs about 150."""
    arrays = []
    for path in journal.sources():
        with open_checked(path, expected) as f:
            arrays.append(read_keys(f, path))
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=KEY_DTYPE)


def feature_dim(journal: Journal, expected: str | None) -> int | None:
    """The width of the rows (of the first file); None for an empty store."""
    for path in journal.sources():
        with open_checked(path, expected) as f:
            return int(f["features"].shape[1])
    return None


def read_rows(journal: Journal, expected: str | None, want: np.ndarray) -> np.ndarray:
    """Rows for keys ``want`` in that order, as float32 (n, D). KeyError for missing keys."""
    out: np.ndarray | None = None
    pending = np.arange(len(want))  # positions in ``want`` not found in an earlier file
    dim: int | None = None
    for path in journal.sources():
        if not len(pending) and dim is not None:
            break
        with open_checked(path, expected) as f:
            ds = f["features"]
            dim = int(ds.shape[1]) if dim is None else dim
            if ds.shape[1] != dim:
                raise StoreCorruptError(f"{path}: width {ds.shape[1]} != {dim}", file=path)
            src = first_match(read_keys(f, path), want[pending])
            hit = src >= 0
            if not hit.any():
                continue
            if out is None:
                out = np.empty((len(want), dim), dtype=np.float32)
            CheckedRows(f, path, store=journal.path).read_into(src[hit], pending[hit], out)
            pending = pending[~hit]
    if len(pending):
        raise MissingRowsError(f"{len(pending)} of {len(want)} keys are not in {journal.path.name}")
    if out is None:
        return np.empty((0, dim or 0), dtype=np.float32)
    return out


def _first_of_each(every: np.ndarray, n_files: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys of ``every`` (the files' keys, concatenated in order), sorted, and the
    position in ``every`` of each one's first occurrence."""
    if n_files == 1 and np.all(every[1:] > every[:-1]):  # sorted, no duplicates
        return every, np.arange(len(every))
    # sort; of equal keys (kept in file order by the stable sort) the first wins
    order = np.argsort(every, kind="stable")
    ordered = every[order]
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return ordered[first], order[first]


def read_all(journal: Journal, expected: str | None) -> tuple[list[str], np.ndarray]:
    """Every (key, row) pair, sorted by key, duplicates dropped (the first occurrence wins)."""
    files: list[tuple[Path, np.ndarray]] = []
    dim: int | None = None
    for path in journal.sources():
        with open_checked(path, expected) as f:
            files.append((path, read_keys(f, path)))
            width = int(f["features"].shape[1])
            dim = width if dim is None else dim
            if width != dim:
                raise StoreCorruptError(f"{path}: width {width} != {dim}", file=path)
    if not files:
        return [], np.empty((0, 0), dtype=np.float32)
    keys, origin = _first_of_each(np.concatenate([k for _, k in files]), len(files))
    out = np.empty((len(keys), dim or 0), dtype=np.float32)
    start = 0
    for path, fkeys in files:
        stop = start + len(fkeys)
        dst = np.flatnonzero((origin >= start) & (origin < stop))
        if len(dst):
            with open_checked(path, expected) as f:
                if not np.array_equal(read_keys(f, path), fkeys):
                    raise VanishedError(f"{path} was replaced while reading; run again")
                CheckedRows(f, path, store=journal.path).read_into(origin[dst] - start, dst, out)
        start = stop
    return [k.decode() for k in keys.tolist()], out


def read_info(journal: Journal, expected: str | None) -> StoreInfo:
    """Summary of the store (consolidated rows plus journal parts)."""
    sources = journal.sources()
    if not sources:
        raise StoreError(f"no store at {journal.path}")
    with open_checked(sources[0], expected) as f:
        spec = json.loads(attr_text(f, "spec"))
        fp = attr_text(f, "fingerprint")
        dim = int(f["features"].shape[1])
        prov = json_attr(f, "provenance", sources[0])
    n_parts = len(journal.part_paths())
    size = sum(p.stat().st_size for p in sources)
    # Counted by a read of its own (nested: the lock is re-entrant), as `keys()` counts them.
    n_rows = len(journal.shared(lambda: all_keys(journal, expected)))
    return StoreInfo(
        path=journal.path,
        fingerprint=fp,
        backbone=str(spec.get("backbone", "")),
        spec=spec,
        n_rows=n_rows,
        feature_dim=dim,
        n_parts=n_parts,
        size_bytes=size,
        provenance=prov,
    )
