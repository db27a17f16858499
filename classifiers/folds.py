"""Cross-validation folds of a training split: stratified, grouped by image, sized to the data.

Rows of one image (its *group*, e.g. the image key) must never sit on both sides of a fold: a
manifest that lists each training image 5 times would otherwise score CV 1.0 on a head that
scores 0.5 on held-out images. :func:`plan_folds` therefore

- uses ``StratifiedGroupKFold`` when the given groups repeat (some group has several rows), and
  plain ``StratifiedKFold`` when every group has one row (the same folds as without groups);
- without groups, treats rows that repeat exactly (the same features: the same image twice) as
  one group, and says so;
- reports repeated groups and groups whose rows carry different labels;
- lowers the number of folds to the rarest class's count (rows, or groups when grouped), and
  refuses a class with fewer than 2, before anything is fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from classifiers.heads import FoldShape

__all__ = ["FoldPlan", "duplicate_row_groups", "plan_folds"]

#: Examples listed in a note before "and N more".
_EXAMPLES = 5


@dataclass(frozen=True)
class FoldPlan:
    """The folds of one training split.

    Attributes:
        splits: (train indices, test indices) per fold.
        n_folds: Number of folds.
        note: Why ``n_folds`` is below the requested number (``None`` when it is not).
        grouped: Folds keep each group's rows together (``StratifiedGroupKFold``).
        groups: The group of each row used for the folds (``None`` when not grouped).
        notes: Repeated groups, conflicting labels, groups derived from repeated rows.
        shape: Sizes a head's grid may need (:class:`classifiers.heads.FoldShape`).
    """

    splits: tuple[tuple[np.ndarray, np.ndarray], ...]
    n_folds: int
    note: str | None
    grouped: bool
    groups: np.ndarray | None
    notes: tuple[str, ...]
    shape: FoldShape


def duplicate_row_groups(X: np.ndarray) -> np.ndarray | None:
    """One group id per row, equal for rows with identical bytes; ``None`` when no row repeats."""
    X = np.ascontiguousarray(X)
    ids: dict[bytes, int] = {}
    groups = np.fromiter(
        (ids.setdefault(row.tobytes(), len(ids)) for row in X), dtype=np.int64, count=len(X)
    )
    return groups if len(ids) < len(X) else None


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_EXAMPLES])
    more = len(items) - _EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def _group_notes(
    groups: np.ndarray, y: np.ndarray, class_names: Sequence[str], *, derived: bool
) -> list[str]:
    """Notes on groups with several rows and on groups whose rows disagree on the label
    (``derived``: the groups are sets of identical rows, not image keys)."""
    notes = []
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    repeated = counts > 1
    if repeated.any() and not derived:
        notes.append(
            f"{int(repeated.sum())} image keys have more than one training row "
            f"({int(counts[repeated].sum())} rows, up to {int(counts.max())} per key); each "
            "key's rows stay in one CV fold"
        )
    labels_per_group = [set() for _ in uniq]
    for g, label in zip(inverse, y, strict=True):
        labels_per_group[g].add(int(label))
    what = "sets of identical rows" if derived else "image keys"
    conflicts = [
        f"{uniq[g]!s}: {sorted(class_names[c] for c in labels)}"
        for g, labels in enumerate(labels_per_group)
        if len(labels) > 1
    ]
    if conflicts:
        notes.append(
            f"{len(conflicts)} {what} carry conflicting labels in the training split "
            f"({_listing(conflicts)}); their rows count for every label they carry"
        )
    return notes


def _per_class_counts(y: np.ndarray, groups: np.ndarray | None, n_classes: int) -> np.ndarray:
    """Rows per class, or distinct groups per class when grouped."""
    if groups is None:
        return np.bincount(y, minlength=n_classes)
    pairs = np.unique(np.column_stack([y, np.unique(groups, return_inverse=True)[1]]), axis=0)
    return np.bincount(pairs[:, 0], minlength=n_classes)


def _fold_count(
    y: np.ndarray, groups: np.ndarray | None, cv: int, class_names: Sequence[str]
) -> tuple[int, str | None]:
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(
            "the training split must hold at least 2 classes, got only "
            f"{[class_names[c] for c in present]!r}"
        )
    counts = _per_class_counts(y, groups, len(class_names))[present]
    smallest = int(counts.min())
    if smallest >= cv:
        return cv, None
    rarest = class_names[int(present[counts.argmin()])]
    unit = "item" if groups is None else "image (distinct key)"
    if smallest < 2:
        raise ValueError(
            f"class {rarest!r} has {smallest} training {unit}; stratified cross-validation needs "
            "at least 2 per class. Add items to that class or drop it from the feature set."
        )
    units = "items" if groups is None else "images (distinct keys)"
    note = (
        f"cv reduced from {cv} to {smallest} folds: the smallest training class "
        f"({rarest!r}) has {smallest} {units}"
    )
    return smallest, note


def _shape(
    splits: Sequence[tuple[np.ndarray, np.ndarray]], y: np.ndarray, n_features: int
) -> FoldShape:
    present = np.unique(y)
    min_class = min(
        int(np.bincount(y[train], minlength=int(y.max()) + 1)[present].min()) for train, _ in splits
    )
    return FoldShape(
        n_classes=len(present),
        min_train_rows=min(len(train) for train, _ in splits),
        min_class_rows=min_class,
        n_features=n_features,
    )


def plan_folds(
    X: np.ndarray,
    y: np.ndarray,
    *,
    cv: int,
    class_names: Sequence[str],
    groups: Sequence[Any] | np.ndarray | None = None,
    random_state: int = 0,
) -> FoldPlan:
    """Stratified (and, where rows repeat, grouped) CV folds of a training split.

    Args:
        X: Training rows (used only to find exact repeats when ``groups`` is ``None``).
        y: Class indices into ``class_names``.
        cv: Requested number of folds (at least 2).
        class_names: Name of each class index (for messages).
        groups: The image key (or any group label) of each row, or ``None``.
        random_state: Seed of the shuffled folds.

    Raises:
        ValueError: Fewer than 2 classes, a class with fewer than 2 rows (groups when grouped),
            or ``groups`` of the wrong length.
    """
    y = np.asarray(y)
    notes: list[str] = []
    derived = groups is None
    if groups is None:
        repeats = duplicate_row_groups(X)
        if repeats is not None:
            n_rows = len(repeats) - len(np.unique(repeats))
            notes.append(
                f"{n_rows} training rows repeat another row exactly (the same image more than "
                "once?); repeats were grouped so that no copy straddles a CV fold. Pass the "
                "image keys as groups to group by image."
            )
            groups = repeats
    else:
        groups = np.asarray(groups)
        if groups.shape != y.shape:
            raise ValueError(
                f"groups must have one entry per training row ({len(y)}), got {groups.shape}"
            )
    grouped = groups is not None and len(np.unique(groups)) < len(groups)
    if groups is not None:
        notes += _group_notes(groups, y, class_names, derived=derived)
    used = groups if grouped else None
    n_folds, note = _fold_count(y, used, cv, class_names)
    if grouped:
        splitter: Any = StratifiedGroupKFold(n_folds, shuffle=True, random_state=random_state)
    else:
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=random_state)
    splits = tuple((np.asarray(a), np.asarray(b)) for a, b in splitter.split(X, y, used))
    return FoldPlan(
        splits=splits,
        n_folds=n_folds,
        note=note,
        grouped=grouped,
        groups=used,
        notes=tuple(notes),
        shape=_shape(splits, y, int(np.shape(X)[1])),
    )
