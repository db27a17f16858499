"""An image folder in ImageFolder layout: ``ROOT/CLASS/*.jpg``, or with split folders
``ROOT/{train,val,validation,test}/CLASS/*.jpg``; images directly in ``ROOT`` get no label.

Each class folder is walked on its own, so a class folder that is a link to another class
folder lists its images under both labels (with a warning); inside one class a folder reached
twice (a link back up) is walked once. Split folder names match whatever their case; two that
differ only in case (``Train/`` and ``train/``) are both read, with a warning. A root that
cannot be listed is an error; a split or class folder that cannot be listed is skipped with
its reason.

Its records are file records (:mod:`featurestore.sources.files` loads them).
"""

from __future__ import annotations

import os
from pathlib import Path

from featurestore.errors import SourceError
from featurestore.sources.files import Entry, file_records, walk_files
from featurestore.sources.records import Skipped, Source

SPLIT_NAMES = ("train", "val", "validation", "test")

Identity = tuple[int, int]  # (st_dev, st_ino) of a folder


def _listing(folder: Path) -> tuple[list[str], list[str]]:
    """(file names, folder names) directly in ``folder``, sorted, hidden names left out; an
    entry that is not a folder (a dangling link too) counts as a file. OSError when it cannot
    be listed."""
    files, folders = [], []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (folders if is_dir else files).append(entry.name)
    return sorted(files), sorted(folders)


def _identity(folder: Path) -> Identity | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def folder_entries(
    root: Path,
    split: str | None,
    skipped: list[Skipped],
    warnings: list[str],
    *,
    above: frozenset[Identity] = frozenset(),
) -> list[Entry]:
    """(path, label, split) of the files under ``root``; label: the class folder (the first
    folder below ``root``); files directly in ``root`` get none. ``above``: folders above
    ``root``, never walked again from inside it (a link back up is a loop)."""
    try:
        files, classes = _listing(root)
    except OSError as exc:
        skipped.append(Skipped(str(root), f"cannot list: {exc.strerror or exc}"))
        return []
    text = str(root)
    prefix = "" if text == "." else text if text.endswith("/") else text + "/"
    entries: list[Entry] = [(prefix + name, None, split) for name in files]
    here = _identity(root)
    seen = above | ({here} if here else set())
    first_of: dict[Identity, Path] = {}
    for label in classes:
        folder = root / label
        found = len(entries)
        for sub, names in walk_files(folder, skipped, seen=set(seen)):
            sub_text = str(sub)
            sub_prefix = sub_text if sub_text.endswith("/") else sub_text + "/"
            entries.extend((sub_prefix + name, label, split) for name in names)
        if len(entries) == found:
            warnings.append(f"class folder {folder} holds no files")
        ident = _identity(folder)
        if ident is not None and ident in first_of:
            warnings.append(
                f"class folder {folder} is the folder {first_of[ident]} (a link): its images "
                "are listed under both labels"
            )
        elif ident is not None:
            first_of[ident] = folder
    return entries


def _split_entries(
    root: Path,
    files: list[str],
    folders: list[str],
    skipped: list[Skipped],
    warnings: list[str],
) -> list[Entry]:
    """Entries of each split folder, then the files directly in ``root`` (no label, no split);
    the other folders are ignored, with a warning."""
    above = frozenset(filter(None, [_identity(root)]))
    entries: list[Entry] = []
    for split in SPLIT_NAMES:
        same = [name for name in folders if name.lower() == split]
        if len(same) > 1:
            warnings.append(f"split folders {same} are all read as split {split!r}")
        for name in same:
            entries += folder_entries(root / name, split, skipped, warnings, above=above)
    others = [name for name in folders if name.lower() not in SPLIT_NAMES]
    if others:
        warnings.append(f"split layout detected; ignoring non-split folders {others}")
    entries += [(str(root / name), None, None) for name in files]
    return entries


def from_folder(root: Path) -> Source:
    """An ImageFolder-layout folder, with split folders detected."""
    skipped: list[Skipped] = []
    warnings: list[str] = []
    try:
        files, folders = _listing(root)
    except OSError as exc:
        raise SourceError(f"{root}: cannot list the folder ({exc.strerror or exc})") from exc
    if any(name.lower() in SPLIT_NAMES for name in folders):
        entries = _split_entries(root, files, folders, skipped, warnings)
    else:
        entries = folder_entries(root, None, skipped, warnings)
    records = file_records(entries, skipped)
    return Source(str(root), "folder", records, skipped, warnings)
