"""Image files on disk, for every kind that lists files (folder, manifest, a single image):
walking folders, hashing files on threads, turning (path, label, split) entries into records,
and loading a file record's pixels.

Scanning works on path strings, not Path objects (a few hundred bytes each, 20,000 at once):
every string is exactly what str(Path) gave for the same file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from featurestore.decode import IMAGE_EXTENSIONS, NotRegularFile, decode_file, open_regular
from featurestore.keys import file_key
from featurestore.sources.loading import register_loader
from featurestore.sources.records import Record, Skipped, Source

HASH_CHUNK = 64  # files per hashing task

Entry = tuple[str, str | None, str | None]  # (path, label, split)


def hash_files(paths: Sequence[str], *, threads: int = 4) -> list[tuple[str | None, str | None]]:
    """(key, error) for each path; hashing releases the GIL, so threads help."""

    def some(chunk: Sequence[str]) -> list[tuple[str | None, str | None]]:
        return [_hash_one(p) for p in chunk]

    if len(paths) < 2 * HASH_CHUNK:
        return some(paths)
    # One task per chunk: a task per file costs more than hashing a small file (and
    # ThreadPoolExecutor.map ignores its chunksize argument).
    chunks = [paths[i : i + HASH_CHUNK] for i in range(0, len(paths), HASH_CHUNK)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [r for done in pool.map(some, chunks) for r in done]


def _hash_one(path: str) -> tuple[str | None, str | None]:
    """(key, None) for a regular file with bytes; (None, the reason) for anything else. The
    file is opened without blocking and checked on its descriptor, so a FIFO or a device (even
    one swapped in after listing) is never read."""
    try:
        fd, st = open_regular(path)
    except NotRegularFile as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    except ValueError as exc:  # a NUL character in the path
        return None, f"cannot read: {exc}"
    if st.st_size == 0:
        os.close(fd)
        return None, "empty file (0 bytes)"
    try:
        return file_key(fd), None  # type: ignore[arg-type]  # open() takes a descriptor too
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"


def suffix(path: str) -> str:
    """``Path(path).suffix`` of a normalised path string (``str(Path(...))``)."""
    name = path[path.rfind("/") + 1 :]
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def walk_files(
    root: Path, skipped: list[Skipped], *, seen: set[tuple[int, int]] | None = None
) -> Iterator[tuple[Path, list[str]]]:
    """(folder, its file names sorted) for ``root`` and each folder under it, top-down with
    sub-folders sorted, following directory symlinks once (a folder already visited, or in
    ``seen``, is skipped as a loop); hidden names are left out."""
    seen = set() if seen is None else seen

    def onerror(exc: OSError) -> None:
        skipped.append(Skipped(str(exc.filename), f"cannot list: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            skipped.append(Skipped(dirpath, f"cannot read: {exc.strerror or exc}"))
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            skipped.append(Skipped(dirpath, "symlink loop (folder already visited)"))
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield Path(dirpath), sorted(f for f in filenames if not f.startswith("."))


def file_records(entries: list[Entry], skipped: list[Skipped]) -> list[Record]:
    """Hash (path, label, split) entries into records; unreadable or non-image files skip."""
    candidates: list[Entry] = []
    for entry in entries:
        ext = suffix(entry[0])
        if ext.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(entry[0], f"not an image file (extension {ext!r})"))
            continue
        candidates.append(entry)
    hashed = hash_files([p for p, _, _ in candidates])
    records = []
    for (path, label, split), (key, error) in zip(candidates, hashed, strict=True):
        if error is not None:
            skipped.append(Skipped(path, error))
            continue
        assert key is not None
        records.append(Record(key, path, label, split, ("file", path)))
    return records


def from_image_file(path: Path) -> Source:
    """A single image file: one unlabelled record (or none, and the reason it was skipped)."""
    skipped: list[Skipped] = []
    records = file_records([(str(path), None, None)], skipped)
    return Source(str(path), "files", records, skipped)


@register_loader("file")
class FileLoader:
    """``("file", path)``: decode the file (JPEGs drafted down to ``draft_size``)."""

    def load(self, ref: tuple[Any, ...], *, draft_size: int | None) -> Image.Image:
        return decode_file(Path(ref[1]), draft_size=draft_size)
