""":func:`open_source`: which kind a path (or ``builtin:NAME``) is, and its records.

A folder is a folder of HDF5 files when its top level holds ``.h5``/``.hdf5`` files and no
image file is found at its top level or in the two levels of folders below it (the search
stops at the first image); otherwise it is an image folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from featurestore.decode import IMAGE_EXTENSIONS, file_type
from featurestore.errors import SourceError
from featurestore.sources.arrays import H5_SUFFIXES, from_hdf5
from featurestore.sources.builtin import PREFIX, builtin
from featurestore.sources.files import from_image_file, suffix
from featurestore.sources.folder import from_folder
from featurestore.sources.manifest import from_csv
from featurestore.sources.records import Source

SOURCES_HINT = "sources: an image folder, a .csv manifest, an .h5 file of arrays, or builtin:digits"
IMAGE_SEARCH_DEPTH = 2  # folder levels below a folder of .h5 files searched for images


def open_source(
    source: str | Path,
    *,
    images_key: str | None = None,
    labels_key: str | None = None,
) -> Source:
    """Turn a path or ``builtin:NAME`` into a :class:`Source`; raises SourceError if empty.

    Adds a warning when some images have a split and others none (a sweep on the splits
    leaves those out), and when some have a label and others none.
    """
    text = str(source)
    if text.startswith(PREFIX):
        src = builtin(text.split(":", 1)[1])
    else:
        src = _open_path(Path(source), images_key=images_key, labels_key=labels_key)
    if not src.records:
        raise SourceError(f"{src.name}: no images found{_skipped_detail(src)}")
    src.warnings += _partial_warnings(src)
    return src


def _open_path(path: Path, *, images_key: str | None, labels_key: str | None) -> Source:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file or folder ({SOURCES_HINT})") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    if stat.S_ISDIR(mode):
        h5s = _h5_files(path)
        if h5s and not _holds_images(path, IMAGE_SEARCH_DEPTH):
            return from_hdf5(h5s, images_key=images_key, labels_key=labels_key)
        return from_folder(path)
    kind = path.suffix.lower()
    if kind in (".csv", *H5_SUFFIXES) and not stat.S_ISREG(mode):
        raise SourceError(f"{path}: not a regular file ({file_type(mode)})")
    if kind == ".csv":
        return from_csv(path)
    if kind in H5_SUFFIXES:
        return from_hdf5([path], images_key=images_key, labels_key=labels_key)
    if kind in IMAGE_EXTENSIONS:
        return from_image_file(path)
    raise SourceError(f"{path}: not a folder, .csv, .h5 or image file")


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` that are not hidden (none when it cannot be listed)."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError:
        return []


def _h5_files(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if suffix(e.name).lower() in H5_SUFFIXES]
    except OSError as exc:
        raise SourceError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from exc
    return [folder / name for name in sorted(names) if not name.startswith(".")]


def _holds_images(folder: Path, depth: int) -> bool:
    """Whether an image file is in ``folder`` or up to ``depth`` folder levels below it."""
    subfolders = []
    for entry in _entries(folder):
        if suffix(entry.name).lower() in IMAGE_EXTENSIONS:
            return True
        try:
            if depth > 0 and entry.is_dir():
                subfolders.append(Path(entry.path))
        except OSError:
            continue
    return any(_holds_images(sub, depth - 1) for sub in sorted(subfolders))


def _partial_warnings(src: Source) -> list[str]:
    total = len(src.records)
    no_split = sum(r.split is None for r in src.records)
    no_label = sum(r.label is None for r in src.records)
    out = []
    if 0 < no_split < total:
        out.append(
            f"{no_split} of {total} images have no split (e.g. {_first(src, 'split')}); a "
            "sweep that uses the splits leaves them out"
        )
    if 0 < no_label < total:
        out.append(f"{no_label} of {total} images have no label (e.g. {_first(src, 'label')})")
    return out


def _first(src: Source, field: str) -> str:
    return next(r.path for r in src.records if getattr(r, field) is None)


def _skipped_detail(src: Source) -> str:
    if not src.skipped:
        return ""
    first = src.skipped[0]
    return f"; {len(src.skipped)} file(s) skipped, e.g. {first.path}: {first.reason}"
