"""CV folds of a training split (classifiers.folds): grouped by image, sized to the data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.folds import duplicate_row_groups, plan_folds

NAMES = ["a", "b", "c"]


def _no_group_straddles(plan) -> None:
    for train, test in plan.splits:
        assert not set(plan.groups[train]) & set(plan.groups[test])


def _repeated_images(n_images: int, copies: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n_images`` random rows of 3 classes, each listed ``copies`` times, keyed by image."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_images, 4)).astype(np.float32)
    y = np.arange(n_images) % 3
    keys = np.array([f"key{i:03d}" for i in range(n_images)])
    return np.repeat(X, copies, axis=0), np.repeat(y, copies), np.repeat(keys, copies)


def test_repeated_keys_never_straddle_a_fold() -> None:
    X, y, keys = _repeated_images(30, 5)
    plan = plan_folds(X, y, cv=5, class_names=NAMES, groups=keys)
    assert plan.grouped and plan.n_folds == 5 and plan.note is None
    _no_group_straddles(plan)
    assert sorted(np.concatenate([test for _, test in plan.splits])) == list(range(len(y)))
    assert any("30 image keys have more than one training row" in n for n in plan.notes)
    assert any("up to 5 per key" in n for n in plan.notes)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=12, max_size=40),
    cv=st.integers(2, 5),
    seed=st.integers(0, 10),
)
def test_no_group_ever_lands_on_both_sides(sizes: list[int], cv: int, seed: int) -> None:
    keys = np.repeat(np.arange(len(sizes)), sizes).astype(str)
    y = np.repeat(np.arange(len(sizes)) % 3, sizes)
    X = np.random.default_rng(seed).normal(size=(len(y), 3))
    if min(np.bincount(np.arange(len(sizes)) % 3)) < 2:
        return
    plan = plan_folds(X, y, cv=cv, class_names=NAMES, groups=keys, random_state=seed)
    if plan.grouped:
        _no_group_straddles(plan)
    else:  # every key has one row: plain stratified folds
        assert max(sizes) == 1


def test_unique_groups_give_the_plain_stratified_folds() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.arange(60) % 3
    with_keys = plan_folds(X, y, cv=4, class_names=NAMES, groups=np.arange(60).astype(str))
    without = plan_folds(X, y, cv=4, class_names=NAMES)
    assert not with_keys.grouped and with_keys.notes == ()
    for (a, b), (c, d) in zip(with_keys.splits, without.splits, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_identical_rows_without_keys_are_grouped_and_said() -> None:
    X, y, _ = _repeated_images(30, 5)
    plan = plan_folds(X, y, cv=5, class_names=NAMES)
    assert plan.grouped
    _no_group_straddles(plan)
    assert any("120 training rows repeat another row exactly" in n for n in plan.notes)
    np.testing.assert_array_equal(duplicate_row_groups(X), np.repeat(np.arange(30), 5))
    assert duplicate_row_groups(X[::5]) is None


def test_conflicting_labels_of_one_key_are_reported() -> None:
    X, y, keys = _repeated_images(30, 2)
    y = y.copy()
    y[1] = (y[1] + 1) % 3  # key000's second row says another class
    plan = plan_folds(X, y, cv=3, class_names=NAMES, groups=keys)
    (conflict,) = [n for n in plan.notes if "conflicting labels" in n]
    assert "1 image keys carry conflicting labels" in conflict
    assert "key000: ['a', 'b']" in conflict


def test_folds_shrink_to_the_rarest_class_counted_in_images() -> None:
    X, y, keys = _repeated_images(30, 3)
    rare = np.isin(keys, ["key002", "key005"])  # class c: 10 images, keep only 2 of them
    keep = (y != 2) | rare
    plan = plan_folds(X[keep], y[keep], cv=5, class_names=NAMES, groups=keys[keep])
    assert plan.n_folds == 2
    assert "smallest training class ('c') has 2 images (distinct keys)" in plan.note


def test_a_class_with_one_image_is_refused() -> None:
    X, y, keys = _repeated_images(30, 3)
    keep = (y != 2) | (keys == "key002")  # class c: one image, three rows
    with pytest.raises(ValueError, match="class 'c' has 1 training image"):
        plan_folds(X[keep], y[keep], cv=5, class_names=NAMES, groups=keys[keep])


def test_groups_of_the_wrong_length_are_refused() -> None:
    X, y, keys = _repeated_images(30, 1)
    with pytest.raises(ValueError, match="one entry per training row"):
        plan_folds(X, y, cv=3, class_names=NAMES, groups=keys[:-1])


def test_fold_shape_describes_the_smallest_fit() -> None:
    X, y, keys = _repeated_images(30, 2)
    plan = plan_folds(X, y, cv=3, class_names=NAMES, groups=keys)
    shape = plan.shape
    assert shape.n_classes == 3 and shape.n_features == 4
    assert shape.min_train_rows == min(len(train) for train, _ in plan.splits)
    assert shape.min_class_rows == min(
        np.bincount(y[train], minlength=3).min() for train, _ in plan.splits
    )
