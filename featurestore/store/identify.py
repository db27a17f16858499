"""What is a featurestore store, decided before anything is opened.

`verify` and `info` take any path a user types. Only a store may ever be called damaged (and
its deletion advised), so they first make sure the path is one (:func:`identify`): a regular
``.h5`` file named as featurestore names its stores or with a journal beside it, or any other
HDF5 file that carries the store's ``format`` attribute (a store copied under another name). A
folder, a FIFO, a device, a socket, a file that is not HDF5 or an HDF5 file without that
attribute (a user's own dataset) is not a store: :class:`NotAStoreError`, and nothing was
opened, locked or created next to it.

Every open of a store file checks its type first (:func:`require_regular_file`), so a FIFO or a
device put in a store's place is refused at once instead of blocking a reader forever or being
read without end.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import h5py

from featurestore.errors import NotAStoreError, StoreError
from featurestore.store.format import FORMAT, H5_ERRORS, attr_text

# featurestore's own store names: ``store_name(backbone, fingerprint)``
STORE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+-[0-9a-f]{16}\.h5$")
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is when it is not a regular file ("a FIFO ..."),
    None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def require_regular_file(path: Path) -> None:
    """Refuse, without opening it, a store file ``path`` that is not a regular file (symbolic
    links followed): StoreError. FileNotFoundError when it does not exist."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(f"{path}: cannot be examined ({exc.strerror})") from exc
    kind = file_kind(mode)
    if kind is not None:
        raise StoreError(
            f"{path} is {kind}, not a store file (featurestore writes only regular files); "
            "nothing was read from it: remove it, then run again"
        )


def _journal_of(path: Path) -> Path:
    return path.with_name(path.stem + ".parts")


def identify(path: Path | str) -> Path:
    """``path`` when it is a featurestore store, damaged or not; NotAStoreError (with what it
    is instead) when it is not. Opens nothing but a regular file with an HDF5 signature, and
    that read-only."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        if p.suffix == ".h5" and _journal_of(p).is_dir():
            return p  # rows only in the journal so far
        raise NotAStoreError(
            f"{p}: no such store (neither the file nor its journal exists)"
        ) from None
    except OSError as exc:
        raise NotAStoreError(f"{p}: cannot be examined ({exc.strerror}), so not a store") from None
    kind = file_kind(mode)
    if kind is not None:
        hint = ""
        if stat.S_ISDIR(mode) and p.suffix == ".parts":
            hint = f"; it holds the journal of the store {p.with_name(p.stem + '.h5')}"
        raise NotAStoreError(f"{p} is {kind}, not a featurestore store (one .h5 file){hint}")
    if p.suffix != ".h5":
        raise NotAStoreError(f"{p} is not a featurestore store (a store is one .h5 file)")
    if STORE_NAME.match(p.name) or _journal_of(p).is_dir():
        return p  # named as featurestore names its stores: whatever is inside is damage
    try:
        hdf5 = h5py.is_hdf5(p)
    except H5_ERRORS:
        hdf5 = False
    if not hdf5:
        raise NotAStoreError(f"{p} is not an HDF5 file, so not a featurestore store")
    try:
        with h5py.File(p, "r") as f:
            fmt = attr_text(f, "format", "")
    except H5_ERRORS as exc:
        raise NotAStoreError(
            f"{p} is an HDF5 file that cannot be read as a featurestore store ({exc})"
        ) from exc
    if fmt != FORMAT:
        raise NotAStoreError(
            f"{p} is an HDF5 file but not a featurestore store (no format attribute "
            f"{FORMAT!r}); nothing in it was checked or changed"
        )
    return p
