"""Loading a record's pixels: each kind registers a loader for its ``ref[0]`` tag, and a
picklable :class:`ImageLoader` hands every record to its kind's loader."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from featurestore.errors import DecodeError

if TYPE_CHECKING:
    from PIL import Image

    from featurestore.sources.records import Record


class KindLoader(Protocol):
    """Loads the pixels a record's ``ref`` points at, as an RGB image."""

    def load(self, ref: tuple[Any, ...], *, draft_size: int | None) -> Image.Image: ...


_LOADERS: dict[str, Callable[[], KindLoader]] = {}


def register_loader(tag: str) -> Callable[[type[Any]], type[Any]]:
    """Class decorator: records whose ``ref[0]`` is ``tag`` are loaded by this class (built with
    no arguments, once per process and :class:`ImageLoader`)."""

    def register(cls: type[Any]) -> type[Any]:
        if tag in _LOADERS:
            raise ValueError(f"a loader for record kind {tag!r} is already registered")
        _LOADERS[tag] = cls
        return cls

    return register


def registered_kinds() -> list[str]:
    """The ``ref[0]`` tags that have a loader."""
    return sorted(_LOADERS)


class ImageLoader:
    """Loads a record's pixels as an RGB image; picklable for DataLoader workers.

    Each kind's loader is built on first use; pickling leaves them (and what they hold open,
    such as HDF5 files) behind, so every process opens its own.
    """

    def __init__(self) -> None:
        self._loaders: dict[str, KindLoader] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_loaders": {}}  # handles are reopened in each process

    def close(self) -> None:
        """Close what the kinds' loaders hold open (HDF5 files); a later load reopens it."""
        for loader in self._loaders.values():
            close = getattr(loader, "close", None)
            if close is not None:
                close()

    def load(self, record: Record, *, draft_size: int | None = None) -> Image.Image:
        kind = record.ref[0]
        loader = self._loaders.get(kind)
        if loader is None:
            factory = _LOADERS.get(kind)
            if factory is None:
                raise DecodeError(f"unknown record kind {kind!r}")
            # setdefault: threads loading side by side (the pixel baseline) share one loader
            loader = self._loaders.setdefault(kind, factory())
        return loader.load(record.ref, draft_size=draft_size)
