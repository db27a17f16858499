""":func:`open_source`: which kind a path (or ``builtin:NAME``) is, and its records."""

from __future__ import annotations

from pathlib import Path

from featurestore.decode import IMAGE_EXTENSIONS
from featurestore.errors import SourceError
from featurestore.sources.arrays import H5_SUFFIXES, from_hdf5
from featurestore.sources.builtin import PREFIX, builtin
from featurestore.sources.files import from_image_file
from featurestore.sources.folder import from_folder
from featurestore.sources.manifest import from_csv
from featurestore.sources.records import Source


def open_source(
    source: str | Path,
    *,
    images_key: str | None = None,
    labels_key: str | None = None,
) -> Source:
    """Turn a path or ``builtin:NAME`` into a :class:`Source`; raises SourceError if empty."""
    text = str(source)
    if text.startswith(PREFIX):
        src = builtin(text.split(":", 1)[1])
    else:
        src = _open_path(Path(source), images_key=images_key, labels_key=labels_key)
    if not src.records:
        raise SourceError(f"{src.name}: no images found{_skipped_detail(src)}")
    return src


def _open_path(path: Path, *, images_key: str | None, labels_key: str | None) -> Source:
    if not path.exists():
        raise SourceError(
            f"{path}: no such file or folder (sources: an image folder, a .csv manifest, "
            f"an .h5 file of arrays, or builtin:digits)"
        )
    if path.is_dir():
        h5s = sorted(p for p in path.iterdir() if p.suffix.lower() in H5_SUFFIXES)
        images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))
        if h5s and not images:
            return from_hdf5(h5s, images_key=images_key, labels_key=labels_key)
        return from_folder(path)
    if path.suffix.lower() == ".csv":
        return from_csv(path)
    if path.suffix.lower() in H5_SUFFIXES:
        return from_hdf5([path], images_key=images_key, labels_key=labels_key)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return from_image_file(path)
    raise SourceError(f"{path}: not a folder, .csv, .h5 or image file")


def _skipped_detail(src: Source) -> str:
    if not src.skipped:
        return ""
    first = src.skipped[0]
    return f"; {len(src.skipped)} file(s) skipped, e.g. {first.path}: {first.reason}"
