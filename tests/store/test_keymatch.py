"""Key matching, against a plain-Python model: the first occurrence of a key wins."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.store import keymatch
from featurestore.store.keymatch import as_key_array, first_match, key_hashes, new_rows


def _keys(ids: list[int], width: int = 64) -> np.ndarray:
    return np.array(
        [hashlib.sha256(str(i).encode()).hexdigest()[:width] for i in ids], dtype=f"S{width}"
    )


def _model_first(have: np.ndarray, want: np.ndarray) -> list[int]:
    first: dict[bytes, int] = {}
    for i, k in enumerate(have.tolist()):
        first.setdefault(k, i)
    return [first.get(k, -1) for k in want.tolist()]


ids = st.lists(st.integers(0, 15), max_size=30)


@settings(max_examples=60, deadline=None)
@given(have=ids, want=ids, width=st.sampled_from([64, 8, 5]))
def test_first_match_finds_the_first_occurrence(
    have: list[int], want: list[int], width: int
) -> None:
    h, w = _keys(have, width), _keys(want, width)
    assert first_match(h, w).tolist() == _model_first(h, w)
    assert first_match(h, h).tolist() == _model_first(h, h)  # the same array: a shortcut


@settings(max_examples=30, deadline=None)
@given(have=ids, want=ids)
def test_first_match_survives_hash_collisions(have: list[int], want: list[int]) -> None:
    h, w = _keys(have), _keys(want)
    real = keymatch.key_hashes
    try:
        keymatch.key_hashes = lambda k: None if real(k) is None else real(k) % np.uint64(2)
        assert first_match(h, w).tolist() == _model_first(h, w)
        assert first_match(h, h).tolist() == _model_first(h, h)
    finally:
        keymatch.key_hashes = real


@settings(max_examples=60, deadline=None)
@given(old=ids, parts=st.lists(ids, min_size=1, max_size=5))  # compaction has parts
def test_new_rows_keeps_keys_seen_nowhere_before(old: list[int], parts: list[list[int]]) -> None:
    seen = set(old)
    want = []
    for part in parts:
        mask = []
        for i in part:
            mask.append(i not in seen)
            seen.add(i)
        want.append(mask)
    got = new_rows(_keys(old), [_keys(p) for p in parts])
    assert [m.tolist() for m in got] == want


def test_key_hashes_need_whole_words() -> None:
    keys = _keys([1, 2, 3])
    h = key_hashes(keys)
    assert h is not None and h.dtype == np.uint64 and len(set(h.tolist())) == 3
    assert np.array_equal(h, key_hashes(keys.copy()))  # a function of the bytes only
    assert key_hashes(_keys([1, 2], width=5)) is None
    assert key_hashes(np.array(["a" * 8])) is None  # not bytes


def test_keys_as_stored_are_fixed_width_ascii() -> None:
    k = hashlib.sha256(b"x").hexdigest()
    got = as_key_array([k, k])
    assert got.dtype == np.dtype("S64") and got.tolist() == [k.encode()] * 2
    assert as_key_array(np.array([k])).dtype == np.dtype("S64")
    with pytest.raises(UnicodeEncodeError):
        as_key_array(["é" * 64])
