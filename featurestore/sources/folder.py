"""An image folder in ImageFolder layout: ``ROOT/CLASS/*.jpg``, or with split folders
``ROOT/{train,val,validation,test}/CLASS/*.jpg``; images directly in ``ROOT`` get no label.

Its records are file records (:mod:`featurestore.sources.files` loads them).
"""

from __future__ import annotations

from pathlib import Path

from featurestore.sources.files import Entry, file_records, walk_files
from featurestore.sources.records import Skipped, Source

SPLIT_NAMES = ("train", "val", "validation", "test")


def folder_entries(
    root: Path, split: str | None, skipped: list[Skipped], warnings: list[str]
) -> list[Entry]:
    """(path, label, split) of the files under ``root``; label: the first folder below root."""
    entries: list[Entry] = []
    for folder, names in walk_files(root, skipped):
        rel = folder.relative_to(root).parts
        label = rel[0] if rel else None  # one string for the whole folder
        text = str(folder)
        # = str(folder / name): names hold no "/" and are not "." or ".." (nor hidden)
        prefix = "" if text == "." else text if text.endswith("/") else text + "/"
        entries.extend((prefix + name, label, split) for name in names)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any(e[1] == sub.name for e in entries):
            warnings.append(f"class folder {sub} holds no files")
    return entries


def _split_entries(
    root: Path,
    subdirs: dict[str, Path],
    split_dirs: list[Path],
    skipped: list[Skipped],
    warnings: list[str],
) -> list[Entry]:
    """Entries of each split folder, then the files directly in ``root`` (no label, no split);
    the other folders in ``subdirs`` are ignored, with a warning."""
    entries: list[Entry] = []
    for d in split_dirs:
        entries += folder_entries(d, d.name.lower(), skipped, warnings)
    others = sorted(set(subdirs.values()) - set(split_dirs))
    if others:
        warnings.append(
            f"split layout detected; ignoring non-split folders {[p.name for p in others]}"
        )
    entries += [
        (str(p), None, None)
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]
    return entries


def from_folder(root: Path) -> Source:
    """An ImageFolder-layout folder, with split folders detected."""
    skipped: list[Skipped] = []
    warnings: list[str] = []
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    split_dirs = [subdirs[s] for s in SPLIT_NAMES if s in subdirs]
    if split_dirs:
        entries = _split_entries(root, subdirs, split_dirs, skipped, warnings)
    else:
        entries = folder_entries(root, None, skipped, warnings)
    records = file_records(entries, skipped)
    return Source(str(root), "folder", records, skipped, warnings)
