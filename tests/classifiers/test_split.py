"""Tests of the stratified hash split: the documented rule, determinism and stability."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.split import hash_unit, stratified_hash_split


def _key(i: int, salt: str = "") -> str:
    return hashlib.sha256(f"image-{salt}{i}".encode()).hexdigest()


def _u(key: str, seed: int = 0) -> float:
    """Independent re-implementation of the documented hash-to-[0, 1) map."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16], 16) / 16**16


def _dataset(n: int, n_classes: int, salt: str = "") -> tuple[list[str], list[str]]:
    rng = random.Random(salt)
    keys = [_key(i, salt) for i in range(n)]
    labels = [f"class{rng.randrange(n_classes)}" for _ in range(n)]
    return keys, labels


def test_hash_unit_matches_the_documented_formula() -> None:
    for i in range(50):
        key = _key(i)
        assert hash_unit(key, seed=3) == _u(key, 3)
        assert 0.0 <= hash_unit(key) < 1.0


def test_large_classes_follow_the_threshold_rule_exactly() -> None:
    keys, labels = _dataset(2000, 4)
    split = stratified_hash_split(keys, labels, test_fraction=0.2, seed=0)
    expected = np.array([_u(k) < 0.2 for k in keys])
    # With ~500 items per class both sides are populated, so no fix-up happens.
    np.testing.assert_array_equal(split, expected)
    assert split.dtype == bool and split.shape == (2000,)
    assert 0.17 < split.mean() < 0.23


def test_deterministic_and_independent_of_item_order() -> None:
    keys, labels = _dataset(300, 5)
    first = stratified_hash_split(keys, labels, test_fraction=0.3, seed=7)
    again = stratified_hash_split(keys, labels, test_fraction=0.3, seed=7)
    np.testing.assert_array_equal(first, again)
    order = list(range(300))
    random.Random(1).shuffle(order)
    shuffled = stratified_hash_split(
        [keys[i] for i in order], [labels[i] for i in order], test_fraction=0.3, seed=7
    )
    np.testing.assert_array_equal(shuffled, first[order])


def test_seed_changes_the_split() -> None:
    keys, labels = _dataset(400, 3)
    a = stratified_hash_split(keys, labels, seed=0)
    b = stratified_hash_split(keys, labels, seed=1)
    assert (a != b).sum() > 40


def test_existing_items_keep_their_side_when_items_are_added() -> None:
    keys, labels = _dataset(600, 5, salt="a")
    new_keys, new_labels = _dataset(900, 5, salt="b")
    before = stratified_hash_split(keys, labels, test_fraction=0.2, seed=0)
    after = stratified_hash_split(keys + new_keys, labels + new_labels, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(after[: len(keys)], before)


def test_every_class_with_two_or_more_items_has_both_sides() -> None:
    keys, labels = [], []
    for size in (1, 2, 3, 4, 5, 8, 50):
        for i in range(size):
            keys.append(_key(i, salt=f"size{size}-"))
            labels.append(f"size{size}")
    for seed in range(5):
        split = stratified_hash_split(keys, labels, test_fraction=0.2, seed=seed)
        for name in set(labels):
            side = split[[lab == name for lab in labels]]
            if len(side) >= 2:
                assert side.any() and not side.all(), (seed, name, side)


def _keys_with(predicate, count: int, salt: str) -> list[str]:
    found, i = [], 0
    while len(found) < count:
        key = _key(i, salt)
        if predicate(_u(key)):
            found.append(key)
        i += 1
    return found


def test_fix_up_moves_lowest_item_and_a_newcomer_can_release_it() -> None:
    # Two items, both above the threshold: the lower one is moved to test.
    high = sorted(_keys_with(lambda u: u >= 0.2, 2, "hi"), key=_u)
    split = stratified_hash_split(high, ["cat", "cat"], test_fraction=0.2)
    assert split.tolist() == [True, False]
    # A newcomer below the threshold makes the fix-up unnecessary: the moved item returns.
    low = _keys_with(lambda u: u < 0.2, 1, "lo")
    split = stratified_hash_split([*high, *low], ["cat"] * 3, test_fraction=0.2)
    assert split.tolist() == [False, False, True]
    # Both below the threshold: the higher one is moved to train.
    lows = sorted(_keys_with(lambda u: u < 0.2, 2, "lo2"), key=_u)
    assert stratified_hash_split(lows, ["dog", "dog"], test_fraction=0.2).tolist() == [
        True,
        False,
    ]


def test_a_growing_singleton_class_may_move_its_old_item() -> None:
    # Documented limit of stability: one item stays where rule 2 puts it (train here)...
    old, newcomer = sorted(_keys_with(lambda u: u >= 0.2, 2, "single"), key=_u)
    assert stratified_hash_split([old], ["owl"]).tolist() == [False]
    # ...but with a second train-side item the fix-up moves the lower u (the old one) to test.
    assert stratified_hash_split([old, newcomer], ["owl", "owl"]).tolist() == [True, False]


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    added=st.lists(st.integers(0, 3), min_size=0, max_size=40),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 10),
)
def test_threshold_decided_items_never_move(base, added, fraction, seed) -> None:
    keys = [_key(i, "p") for i in range(len(base) + len(added))]
    labels = base + added
    before = stratified_hash_split(keys[: len(base)], base, test_fraction=fraction, seed=seed)
    after = stratified_hash_split(keys, labels, test_fraction=fraction, seed=seed)
    threshold = np.array([_u(k, seed) < fraction for k in keys[: len(base)]])
    class_size = {label: base.count(label) for label in base}
    # Items the fix-up did not move, in classes that already had 2 or more items (a singleton
    # class that grows may need the fix-up, which can move its old item: documented).
    kept = (before == threshold) & np.array([class_size[label] >= 2 for label in base])
    np.testing.assert_array_equal(after[: len(base)][kept], before[kept])
    for label in set(labels):
        side = after[[lab == label for lab in labels]]
        if len(side) >= 2:
            assert side.any() and not side.all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": ["a", "b"], "labels": [0]}, "same length"),
        ({"keys": ["a"], "labels": [0], "test_fraction": 0.0}, "strictly between 0 and 1"),
        ({"keys": ["a"], "labels": [0], "test_fraction": 1.0}, "strictly between 0 and 1"),
        ({"keys": ["a"], "labels": [0], "test_fraction": "0.2"}, "test_fraction"),
        ({"keys": [b"a"], "labels": [0]}, "keys must be strings"),
        ({"keys": ["a"], "labels": [0], "seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, message) -> None:
    keys = kwargs.pop("keys")
    labels = kwargs.pop("labels")
    with pytest.raises(ValueError, match=message):
        stratified_hash_split(keys, labels, **kwargs)


def test_empty_input_gives_an_empty_split() -> None:
    assert stratified_hash_split([], []).shape == (0,)
