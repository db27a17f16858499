"""The errors featurestore raises on purpose: one hierarchy under :class:`FeatureStoreError`.

Each subclass also derives from the builtin a caller would catch for that kind of failure
(``ValueError`` for bad input, ``RuntimeError`` for a run that cannot go on, ``OSError`` for
files that cannot be written), so ``except ValueError`` keeps working. The command line turns
every :class:`FeatureStoreError` into one line on stderr and the error's ``exit_code``; anything
else is a bug and keeps its traceback.

This module imports nothing: every layer may use it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BackboneError",
    "DecodeError",
    "ExtractError",
    "FeatureStoreError",
    "HeadError",
    "HeadIntegrityError",
    "HeadMismatchError",
    "MissingRowsError",
    "NotAStoreError",
    "OptionError",
    "OutputError",
    "SourceError",
    "StoreCorruptError",
    "StoreError",
    "StoreNameError",
    "WeightsUnavailableError",
]


class FeatureStoreError(Exception):
    """Base of every error featurestore raises on purpose; its message is for the user."""

    exit_code = 1


class OptionError(FeatureStoreError, ValueError):
    """An option value that cannot work (not one of the allowed values, out of range)."""


class SourceError(FeatureStoreError, ValueError):
    """A source that cannot be read at all (missing, empty, ambiguous, malformed)."""


class DecodeError(FeatureStoreError, ValueError):
    """An image that cannot be decoded; the message is the reason shown to the user."""


class BackboneError(FeatureStoreError, ValueError):
    """Unknown backbone, node or weights, or options that do not fit the backbone."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights are not on this machine and cannot be fetched."""


class ExtractError(FeatureStoreError, RuntimeError):
    """Extraction stopped (``strict`` and a bad file, or an unusable device/precision)."""


class StoreError(FeatureStoreError, RuntimeError):
    """A store cannot be read or written (locked, unwritable, malformed)."""


class StoreCorruptError(StoreError):
    """A store file fails its checks; ``file`` names the damaged file (delete it to rebuild)."""

    def __init__(self, message: str, *, file: Path | None = None) -> None:
        super().__init__(message)
        self.file = file


class NotAStoreError(StoreError, ValueError):
    """A path given as a store is not one (a folder, a FIFO, a user's own HDF5 file): a usage
    error (exit status 2), never reported as a damaged store."""

    exit_code = 2


class StoreNameError(FeatureStoreError, ValueError):
    """A store name that names no store of the cache, or several (``candidates`` lists them)."""

    def __init__(self, message: str, *, candidates: tuple[Path, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class MissingRowsError(FeatureStoreError, KeyError):
    """Rows asked for are not in the store (extract them first)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class HeadError(FeatureStoreError, ValueError):
    """A head or sweep that cannot be built, saved or used as asked."""


class HeadIntegrityError(HeadError):
    """A saved head cannot be trusted: sidecar missing or unreadable, or sha256 mismatch."""


class HeadMismatchError(HeadError):
    """The head was trained on features this machine's extractor would not reproduce."""


class OutputError(FeatureStoreError, OSError):
    """An output (report folder, predictions file) cannot be written where it was asked."""
