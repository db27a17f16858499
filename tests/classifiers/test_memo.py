"""The one-entry memo keyed by array content (classifiers.memo)."""

from __future__ import annotations

import numpy as np

from classifiers.memo import LastResult, content_key


def test_content_key_follows_the_bytes_dtype_and_shape() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert content_key(a) == content_key(a.copy())
    changed = a.copy()
    changed[0, 0] = 1.0
    assert content_key(changed) != content_key(a)
    assert content_key(a.reshape(4, 3)) != content_key(a)
    assert content_key(a.astype(np.float64)) != content_key(a)


def test_the_last_value_is_made_once_per_key_and_only_kept_when_asked() -> None:
    memo, made = LastResult(), []

    def make(value: int):
        return lambda: made.append(value) or value

    assert memo.get("a", make(1)) == 1
    assert memo.get("a", make(2)) == 1  # kept: not made again
    assert memo.get("b", make(3)) == 3
    assert memo.get("a", make(4)) == 4  # one entry: "a" was dropped for "b"
    assert memo.get("c", make(5), keep=lambda v: False) == 5
    assert memo.get("c", make(6), keep=lambda v: False) == 6  # never kept
    assert memo.get("a", make(7)) == 7  # "a" was dropped before "c" was made
    assert made == [1, 3, 4, 5, 6, 7]
