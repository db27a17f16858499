"""The work of a run: the distinct records of a source whose keys the store does not hold.

Matched with numpy on fixed-width key arrays (64 bytes a key, plus 16 bytes of hash and index
while matching), never with a Python set of key strings (about 150 bytes a key: some 15 GiB
at 100 million keys). :func:`featurestore.store.keymatch.first_match` sorts 64-bit hashes of
the keys and checks every match against the keys themselves, so a hash collision can never
mark a missing image as done.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featurestore.sources import Record
from featurestore.store.keymatch import as_key_array, first_match

__all__ = ["missing", "record_keys"]


def record_keys(records: Sequence[Record]) -> np.ndarray:
    """The records' keys as a fixed-width bytes array, in order."""
    return as_key_array([r.key for r in records])


def missing(records: Sequence[Record], have: np.ndarray) -> tuple[int, list[Record]]:
    """(number of distinct keys, the first record of each key not in ``have``), in the order
    of ``records``. ``have``: the store's keys (:meth:`FeatureStore.key_array`), any order,
    duplicates allowed."""
    keys = record_keys(records)
    first = first_match(keys, keys) == np.arange(len(keys))  # first record of each key
    n_unique = int(first.sum())
    todo = first & (first_match(have, keys) < 0) if len(have) else first
    return n_unique, [records[i] for i in np.flatnonzero(todo)]
