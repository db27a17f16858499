"""FeatureStore: the store of one extractor fingerprint, as the rest of featurestore uses it.

A thin facade: the files and the lock are :mod:`~featurestore.store.journal`'s, reads
:mod:`~featurestore.store.lookup`'s, merging :mod:`~featurestore.store.compaction`'s and checks
:mod:`~featurestore.store.checks`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import StoreError
from featurestore.keys import fingerprint
from featurestore.store import checks, compaction, lookup
from featurestore.store.format import store_attrs
from featurestore.store.journal import Journal, store_name
from featurestore.store.keymatch import as_key_array
from featurestore.store.lookup import StoreInfo

log = logging.getLogger(__package__)  # "featurestore.store", as before the package split


class FeatureStore:
    """Rows of one extractor fingerprint: a consolidated HDF5 file plus a journal of parts.

    Use :meth:`for_spec` to get the store of an extractor spec under a cache root, or pass the
    path of an existing ``.h5`` file. Reading never needs write access to the cache directory.
    Every read runs under the shared lock and again when a file vanished under it
    (:meth:`Journal.shared`).
    """

    def __init__(self, path: Path | str, *, spec: dict[str, Any] | None = None) -> None:
        self.journal = Journal(path)
        self.path = self.journal.path
        self.parts_dir = self.journal.parts_dir
        self.lock_path = self.journal.lock_path
        self.gate_path = self.journal.gate_path
        self.spec = spec
        self.fingerprint = fingerprint(spec) if spec is not None else None

    @classmethod
    def for_spec(cls, root: Path | str, spec: dict[str, Any]) -> FeatureStore:
        """The store for ``spec`` (which must name its ``backbone``) under cache root ``root``."""
        fp = fingerprint(spec)
        return cls(Path(root) / store_name(str(spec.get("backbone", "features")), fp), spec=spec)

    def _attrs(self, provenance: dict[str, Any]) -> dict[str, Any]:
        if self.spec is None:
            raise StoreError(f"{self.path}: writing needs the extractor spec")
        return store_attrs(self.spec, provenance)

    # ------------------------------------------------------------------ writing
    def append(
        self, keys: Sequence[str], rows: np.ndarray, *, provenance: dict[str, Any] | None = None
    ) -> Path:
        """Write one batch as a new journal file (atomic rename). Returns its path.

        A batch holding a row that is not finite (NaN, infinity) is refused with a StoreError
        and nothing of it is written."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        karr = as_key_array(keys)
        if rows.ndim != 2 or rows.shape[0] != len(karr):
            raise ValueError(f"rows must be (len(keys), D), got {rows.shape} for {len(karr)} keys")
        checks.require_finite(karr, rows, self.path)
        return self.journal.append(karr, rows, lambda: self._attrs(provenance or {}))

    def compact(self, *, force: bool = False) -> int:
        """Merge journal parts into the consolidated file. Returns the number of rows added.

        Runs under the exclusive lock, and also deletes temp files left by killed writers.
        Without ``force`` a large store is only rewritten once the journal holds a quarter as
        many rows as the consolidated file (or many parts). With nothing to merge or clean up
        it returns at once without the lock, so a read-only cache that is complete works.
        """
        return compaction.compact(
            self.journal, expected=self.fingerprint, attrs=self._attrs, force=force
        )

    # ------------------------------------------------------------------ reading
    def check(self) -> None:
        """Health check before appending: raises :class:`StoreCorruptError` if damaged.

        Every file must open with valid attributes and readable keys; every journal part and a
        consolidated file up to 256 MiB must also pass every feature chunk's checksum (a larger
        one is checked in full when compaction copies it). The error names the damaged file and
        says how to rebuild.
        """
        checks.check(self.journal, self.fingerprint)

    def keys(self) -> set[str]:
        """Every key held, consolidated or in the journal."""
        return self.journal.shared(lambda: lookup.all_keys(self.journal, self.fingerprint))

    def key_array(self) -> np.ndarray:
        """Every key held, as a fixed-width bytes array (duplicates included): the form to
        match millions of keys with numpy (:mod:`featurestore.worklist`)."""
        return self.journal.shared(lambda: lookup.key_array(self.journal, self.fingerprint))

    def read(self, keys: Sequence[str]) -> np.ndarray:
        """Rows for ``keys`` in that order, as float32 (n, D). Raises KeyError for missing keys."""
        want = as_key_array(keys)
        return self.journal.shared(lambda: lookup.read_rows(self.journal, self.fingerprint, want))

    def read_all(self) -> tuple[list[str], np.ndarray]:
        """Every (key, row) pair, sorted by key, duplicates dropped (the first occurrence wins:
        the consolidated file's row, else the earliest journal part's)."""
        return self.journal.shared(lambda: lookup.read_all(self.journal, self.fingerprint))

    def feature_dim(self) -> int | None:
        """The width of the stored rows; None when the store holds no file yet."""
        return self.journal.shared(lambda: lookup.feature_dim(self.journal, self.fingerprint))

    def info(self) -> StoreInfo:
        """Summary of the store (consolidated rows plus journal parts)."""
        return self.journal.shared(lambda: lookup.read_info(self.journal, self.fingerprint))


def list_stores(root: Path | str) -> list[StoreInfo]:
    """Every store under cache root ``root``, sorted by file name."""
    root = Path(root)
    if not root.is_dir():
        return []
    paths = {p for p in root.glob("*.h5")}
    paths.update(d.with_name(d.name[: -len(".parts")] + ".h5") for d in root.glob("*.parts"))
    infos = []
    for path in sorted(paths):
        try:
            infos.append(FeatureStore(path).info())
        except StoreError as exc:
            log.warning("skipping %s: %s", path, exc)
    return infos
