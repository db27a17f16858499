"""Image keys as stored (fixed-width ASCII) and vectorised matching of keys between files.

Every read and every compaction matches keys: which stored row holds each wanted key, and which
journal rows are new. The first occurrence of a key wins everywhere (the consolidated file, then
the journal parts in order, then the first row of a part).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featurestore.store.format import KEY_DTYPE

HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def as_key_array(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """Keys as fixed-width ASCII bytes (UnicodeEncodeError for any other character)."""
    if isinstance(keys, np.ndarray):
        return keys.astype(KEY_DTYPE)
    return np.array(keys, dtype=KEY_DTYPE)  # encodes str as ASCII, 15x faster than np.char


def key_hashes(keys: np.ndarray) -> np.ndarray | None:
    """A 64-bit hash of each fixed-width key; None if the width is not a multiple of 8 bytes."""
    width = keys.dtype.itemsize
    if keys.dtype.kind != "S" or not width or width % 8:
        return None
    words = np.ascontiguousarray(keys).view(np.uint64).reshape(len(keys), width // 8)
    h = np.zeros(len(keys), dtype=np.uint64)
    for col in range(words.shape[1]):
        h ^= words[:, col]
        h *= HASH_MULTIPLIER
    h ^= h >> np.uint64(29)
    return h


def first_match(have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Index of the first occurrence in ``have`` of each key of ``want``; -1 where absent.

    Vectorised: sorts ``have`` (stably, so equal keys keep their order and the first one is
    found) and binary-searches ``want`` in it. It sorts 64-bit hashes of the keys, which is much
    faster than sorting the keys, and falls back to the keys when two different keys share a
    hash (every match is checked against the keys themselves).
    """
    found = np.full(len(want), -1, dtype=np.intp)
    if not len(have) or not len(want):
        return found
    tries: list[tuple[np.ndarray, np.ndarray]] = []
    if have.dtype == want.dtype:
        h_have = key_hashes(have)
        if h_have is not None and len(have) == len(want) and np.array_equal(have, want):
            distinct = np.sort(h_have)  # the keys asked for are the stored ones, in order
            if not np.any(distinct[1:] == distinct[:-1]):
                return np.arange(len(want))
        h_want = key_hashes(want)
        if h_have is not None and h_want is not None:
            tries.append((h_have, h_want))
    for h_have, h_want in [*tries, (have, want)]:
        order = np.argsort(h_have, kind="stable")
        ordered = h_have[order]
        pos = np.minimum(np.searchsorted(ordered, h_want), len(ordered) - 1)
        hit = ordered[pos] == h_want
        index = order[pos[hit]]
        if np.array_equal(have[index], want[hit]):  # False only on a hash collision
            found[hit] = index
            return found
    raise AssertionError("unreachable: the keys themselves never collide")


def new_rows(old: np.ndarray, parts: list[np.ndarray]) -> list[np.ndarray]:
    """For each journal part's keys, a mask of the rows compaction adds: keys that are neither in
    ``old`` (the consolidated file) nor earlier in the journal. The first occurrence of a key
    wins, also among duplicates inside one part."""
    every = np.concatenate(parts) if parts else np.empty(0, dtype=KEY_DTYPE)
    keep = first_match(every, every) == np.arange(len(every))
    if len(old):
        keep &= first_match(old, every) < 0
    return np.split(keep, np.cumsum([len(k) for k in parts])[:-1])
