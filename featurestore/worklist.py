"""The work of a run: the distinct records of a source whose keys the store does not hold.

Matched with numpy on 64-bit hashes of the keys, never with Python sets of key strings (a key
string costs 113 bytes and a set slot about 40 more; with the dict of distinct records, 252
bytes per record and stored key, measured at a million of each: 25 GB at 100 million). Here the
stored keys are one ``S64`` array (64 bytes a key, the store's own form) and the rest costs
about 48 bytes per record and stored key (hashes, sort order, search positions): the records'
keys are turned into bytes a chunk at a time, never all at once. 100 million of each: about
11 GB at the peak (README, "Scale on paper").

Keys are sorted and searched as 64-bit hashes (:func:`featurestore.store.keymatch.key_hashes`);
every match is checked against the keys themselves, chunk by chunk, so two keys that share a
hash are never taken for one another: such keys go through an exact (slow) path instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featurestore.sources import Record
from featurestore.store.format import KEY_DTYPE
from featurestore.store.keymatch import as_key_array, first_match, key_hashes

__all__ = ["held", "missing", "record_keys"]

CHUNK = 1 << 20  # keys compared at once when checking hash matches


def record_keys(records: Sequence[Record]) -> np.ndarray:
    """The records' keys as a fixed-width bytes array, in order."""
    return as_key_array([r.key for r in records])


def _hashes(keys: np.ndarray) -> np.ndarray:
    """64-bit hashes of fixed-width keys (the stored keys' width is a multiple of 8)."""
    h = key_hashes(keys)
    if h is None:  # not the stored width: hash the keys padded to it
        h = key_hashes(keys.astype(f"S{-(-max(keys.dtype.itemsize, 1) // 8) * 8}"))
    assert h is not None
    return h


def _record_hashes(records: Sequence[Record]) -> np.ndarray:
    """The 64-bit hash of each record's key, computed a chunk at a time: the keys are never
    all held as one array."""
    h = np.empty(len(records), dtype=np.uint64)
    for s in range(0, len(records), CHUNK):
        h[s : s + CHUNK] = _hashes(record_keys(records[s : s + CHUNK]))
    return h


def _same_keys(
    records: Sequence[Record], ia: np.ndarray, other: np.ndarray | None, ib: np.ndarray
) -> np.ndarray:
    """Whether the key of ``records[ia[j]]`` equals ``other[ib[j]]`` (``other`` None: the key of
    ``records[ib[j]]``), a chunk at a time."""
    out = np.empty(len(ia), dtype=bool)
    for s in range(0, len(ia), CHUNK):
        a = record_keys([records[i] for i in ia[s : s + CHUNK]])
        chunk = ib[s : s + CHUNK]
        b = record_keys([records[i] for i in chunk]) if other is None else other[chunk]
        out[s : s + CHUNK] = a == b
    return out


def _first_of_each(records: Sequence[Record], h: np.ndarray) -> np.ndarray:
    """Mask of the first record of each key (in order)."""
    order = np.argsort(h, kind="stable")  # equal hashes keep the records' order
    hs = h[order]
    later = np.flatnonzero(hs[1:] == hs[:-1]) + 1  # sorted positions with the previous' hash
    del hs
    if not _same_keys(records, order[later], None, order[later - 1]).all():
        # two different keys share a hash: match the keys themselves
        keys = record_keys(records)
        return first_match(keys, keys) == np.arange(len(keys))
    first = np.ones(len(records), dtype=bool)
    first[order[later]] = False
    return first


def _held(records: Sequence[Record], h: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Mask of the records whose key is in ``have``."""
    hh = _hashes(have)
    horder = np.argsort(hh)
    hh = hh[horder]
    pos = np.minimum(np.searchsorted(hh, h), len(hh) - 1)
    cand = np.flatnonzero(hh[pos] == h)
    del hh
    held = np.zeros(len(records), dtype=bool)
    eq = _same_keys(records, cand, have, horder[pos[cand]])
    held[cand[eq]] = True
    for i in cand[~eq]:  # the hash is held by another key: look for this one itself
        held[i] = bool(np.any(have == record_keys([records[i]])[0]))
    return held


def held(records: Sequence[Record], have: np.ndarray) -> np.ndarray:
    """Mask of the records whose key is in ``have`` (the store's keys, any order)."""
    if not len(records) or not len(have):
        return np.zeros(len(records), dtype=bool)
    return _held(records, _record_hashes(records), have.astype(KEY_DTYPE, copy=False))


def missing(records: Sequence[Record], have: np.ndarray) -> tuple[int, list[Record]]:
    """(number of distinct keys, the first record of each key not in ``have``), in the order
    of ``records``. ``have``: the store's keys (:meth:`FeatureStore.key_array`), any order,
    duplicates allowed."""
    n_unique, todo, _ = missing_per_store(records, [have])
    return n_unique, todo


def missing_per_store(
    records: Sequence[Record], haves: Sequence[np.ndarray]
) -> tuple[int, list[Record], list[tuple[int, ...]]]:
    """(number of distinct keys, the first record of each key missing from one of the stores
    whose keys are ``haves``, and for each of those the stores it is missing from), in the
    order of ``records``: the work of a run that fills several stores (one per view)."""
    if not len(records):
        return 0, [], []
    h = _record_hashes(records)
    first = np.flatnonzero(_first_of_each(records, h))
    unique = [records[i] for i in first]
    held = np.zeros((len(haves), len(first)), dtype=bool)
    for s, have in enumerate(haves):
        if len(have):
            held[s] = _held(unique, h[first], have.astype(KEY_DTYPE, copy=False))
    todo = np.flatnonzero(~held.all(axis=0))
    wants = [tuple(np.flatnonzero(~held[:, j]).tolist()) for j in todo]
    return len(first), [unique[j] for j in todo], wants
