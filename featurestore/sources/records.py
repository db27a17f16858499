"""The core records of every source: one image (:class:`Record`), one file that could not be
read (:class:`Skipped`), an ordered set of those (:class:`SkippedFiles`) and a scanned source
(:class:`Source`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

from featurestore.errors import SourceError
from featurestore.sources.loading import ImageLoader


@dataclass(frozen=True, slots=True)
class Record:
    """One image: its content key, label (or None), split (or None) and where it comes from.

    Slotted (no per-instance ``__dict__``): a source of 20,000 files holds 20,000 of these for
    the whole run. A file record's ``ref`` shares the ``path`` string, and the records of one
    folder share their ``label`` string.
    """

    key: str
    path: str
    label: str | None
    split: str | None
    ref: tuple[Any, ...]  # how the loader finds the pixels: ref[0] names the kind's loader


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class SkippedFiles(Sequence[Skipped]):
    """Skipped files in the order first seen; adding one already held does nothing (O(1))."""

    __slots__ = ("_items", "_seen")

    def __init__(self, items: Iterable[Skipped] = ()) -> None:
        self._items: list[Skipped] = []
        self._seen: set[Skipped] = set()
        self.update(items)

    def add(self, item: Skipped) -> None:
        if item not in self._seen:
            self._seen.add(item)
            self._items.append(item)

    def update(self, items: Iterable[Skipped]) -> None:
        for item in items:
            self.add(item)

    extend = update

    def __contains__(self, item: object) -> bool:
        return item in self._seen

    def __iter__(self) -> Iterator[Skipped]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Skipped: ...
    @overload
    def __getitem__(self, index: slice) -> list[Skipped]: ...
    def __getitem__(self, index: int | slice) -> Skipped | list[Skipped]:
        return self._items[index]

    def __repr__(self) -> str:
        return f"SkippedFiles({self._items!r})"


@dataclass
class Source:
    """Records of an image source, plus what could not be read and any warnings."""

    name: str
    kind: str
    records: list[Record]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loader: ImageLoader = field(default_factory=ImageLoader)

    @property
    def class_names(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label is not None})

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records if r.split is not None})

    def select(self, split: str | None) -> list[Record]:
        """Records of one split (``None``: all of them)."""
        if split is None:
            return list(self.records)
        if split not in self.splits:
            raise SourceError(
                f"split {split!r} not in {self.name}; it has {self.splits or 'no splits'}"
            )
        return [r for r in self.records if r.split == split]

    def subset(self, records: Iterable[Record]) -> Source:
        """This source with only ``records``: same name, kind, loader, skipped and warnings
        (the two lists copied)."""
        return replace(
            self, records=list(records), skipped=list(self.skipped), warnings=list(self.warnings)
        )
