"""Deterministic, stratified train/test split keyed by image hash."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["hash_unit", "stratified_hash_split"]

_HEX_DIGITS = 16  # 64 bits of the digest are plenty to order and threshold items
_SCALE = float(16**_HEX_DIGITS)


def hash_unit(key: str, *, seed: int = 0) -> float:
    """Map ``key`` to a number in ``[0, 1)``: ``int(sha256(f"{seed}:{key}")[:16], 16) / 16**16``.

    The value depends only on the key and the seed, never on the other items.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(digest[:_HEX_DIGITS], 16) / _SCALE


def stratified_hash_split(
    keys: Sequence[str],
    labels: Sequence[Hashable],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """Assign each item to the test side (``True``) or the training side (``False``).

    The rule, exactly:

    1. Each item gets a number ``u = int(sha256(f"{seed}:{key}").hexdigest()[:16], 16) / 16**16``
       in ``[0, 1)`` (``key`` is the item's image key, the sha256 hex string of its bytes).
    2. An item goes to test when ``u < test_fraction``, else to train.
    3. Fix-up, per class (items with the same label) that has at least 2 items: if no item of
       the class is on the test side, its item with the smallest ``u`` moves to test; if no item
       of the class is on the training side, its item with the largest ``u`` moves to train.
       Ties on ``u`` (only duplicate keys) are broken by key, then by position.
       A class with a single item keeps the rule-2 assignment (it may land on either side).

    Consequences:

    - Deterministic: same keys, labels, fraction and seed give the same split, in any order of
      the items (the result is aligned with the input order).
    - Stable when items are added: in a class that already has at least 2 items, an item
      placed by rule 2 never changes side. Only an item moved by the fix-up can move back, and
      only when a newcomer of its class makes the fix-up unnecessary or takes its place (a
      newcomer that lands on the side that was empty, or has a more extreme ``u``). The one
      other case: a class with a single item that grows to 2 or more may need the fix-up, which
      can then move the old item (no rule that ignores history can avoid this).
    - Duplicate keys (the same image twice) land on the same side unless the fix-up separates
      them, so duplicates do not leak between train and test.
    - Per class the test share is ``test_fraction`` in expectation, not exactly.

    Args:
        keys: One image key per item (sha256 hex string of the image bytes).
        labels: One label per item, any hashable values.
        test_fraction: Target share of each class on the test side, strictly between 0 and 1.
        seed: Changes every item's ``u`` and so gives an independent split.

    Returns:
        Boolean array of ``len(keys)``, ``True`` where the item is in the test split.

    Raises:
        ValueError: Lengths differ, ``test_fraction`` is outside ``(0, 1)``, or a key is not a
            string.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise ValueError(
            f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}"
        )
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    keys = list(keys)
    labels = list(labels)
    if len(keys) != len(labels):
        raise ValueError(
            f"keys and labels must have the same length, got {len(keys)} keys "
            f"and {len(labels)} labels"
        )
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise ValueError(
                f"keys must be strings (sha256 hex of the image bytes); item {i} is {key!r}"
            )

    u = np.array([hash_unit(k, seed=int(seed)) for k in keys], dtype=np.float64)
    is_test = u < float(test_fraction)

    by_class: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)

    for members in by_class.values():
        if len(members) < 2:
            continue
        order = sorted(members, key=lambda i: (u[i], keys[i], i))
        if not is_test[members].any():
            is_test[order[0]] = True
        if is_test[members].all():
            is_test[order[-1]] = False
    return is_test
