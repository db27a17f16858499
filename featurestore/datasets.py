"""Image sources -> records (image key, label, split, path).

Sources:

* a folder in ImageFolder layout: ``ROOT/CLASS/*.jpg``, or with split folders
  ``ROOT/{train,val,validation,test}/CLASS/*.jpg``; images directly in ``ROOT`` get no label;
* a CSV manifest ``path,label[,split]`` (header optional; paths relative to the CSV);
* an HDF5 file of image arrays, or a folder of such files (image, label and class-name datasets
  are detected, or named with ``images_key``/``labels_key``);
* ``builtin:digits``: scikit-learn's 1,797 8x8 digit images (ships with scikit-learn).

Files that cannot be read are skipped and reported with their reason; decoding failures are
found later, in the extraction workers, and reported the same way.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featurestore.decode import IMAGE_EXTENSIONS, array_to_image, decode_file
from featurestore.errors import DecodeError, SourceError
from featurestore.keys import array_key, file_key

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "validation", "test")
BUILTINS = ("digits",)


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
    ref: tuple[Any, ...]  # how the loader finds the pixels


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class ImageLoader:
    """Loads a record's pixels as an RGB image; picklable for DataLoader workers."""

    def __init__(self) -> None:
        self._h5: dict[str, Any] = {}
        self._digits: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_h5": {}, "_digits": None}  # handles are reopened in each process

    def load(self, record: Record, *, draft_size: int | None = None) -> Image.Image:
        kind = record.ref[0]
        if kind == "file":
            return decode_file(Path(record.ref[1]), draft_size=draft_size)
        if kind == "h5":
            _, file, dataset, index = record.ref
            if file not in self._h5:
                import h5py

                self._h5[file] = h5py.File(file, "r")
            return array_to_image(self._h5[file][dataset][index])
        if kind == "digits":
            if self._digits is None:
                self._digits = _digits()[0]
            return array_to_image(self._digits[record.ref[1]])
        raise DecodeError(f"unknown record kind {kind!r}")


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

    def subset(self, records: list[Record]) -> Source:
        """This source with only ``records`` (same name, kind, loader, skipped, warnings)."""
        return Source(
            self.name, self.kind, records, list(self.skipped), list(self.warnings), self.loader
        )

    def select(self, split: str | None) -> list[Record]:
        """Records of one split (``None``: all of them)."""
        if split is None:
            return list(self.records)
        if split not in self.splits:
            raise SourceError(
                f"split {split!r} not in {self.name}; it has {self.splits or 'no splits'}"
            )
        return [r for r in self.records if r.split == split]


# ---------------------------------------------------------------------------- files
_HASH_CHUNK = 64  # files per hashing task


# Scanning works on path strings, not Path objects (a few hundred bytes each, 20,000 at once):
# every string is exactly what str(Path) gave for the same file.
def _hash_files(paths: Sequence[str], *, threads: int = 4) -> list[tuple[str | None, str | None]]:
    """(key, error) for each path; hashing releases the GIL, so threads help."""

    def one(path: str) -> tuple[str | None, str | None]:
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block, a device never end
                return None, f"not a regular file ({_file_type(st.st_mode)})"
            if st.st_size == 0:
                return None, "empty file (0 bytes)"
            return file_key(path), None  # type: ignore[arg-type]  # it opens a str as well
        except OSError as exc:
            return None, f"cannot read: {exc.strerror or exc}"

    def some(chunk: Sequence[str]) -> list[tuple[str | None, str | None]]:
        return [one(p) for p in chunk]

    if len(paths) < 2 * _HASH_CHUNK:
        return some(paths)
    # One task per chunk: a task per file costs more than hashing a small file (and
    # ThreadPoolExecutor.map ignores its chunksize argument).
    chunks = [paths[i : i + _HASH_CHUNK] for i in range(0, len(paths), _HASH_CHUNK)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [r for done in pool.map(some, chunks) for r in done]


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def _suffix(path: str) -> str:
    """``Path(path).suffix`` of a normalised path string (``str(Path(...))``)."""
    name = path[path.rfind("/") + 1 :]
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _walk_files(root: Path, skipped: list[Skipped]) -> Iterator[tuple[Path, list[str]]]:
    """(folder, its file names sorted) for ``root`` and each folder under it, top-down with
    sub-folders sorted, following directory symlinks once (loops are skipped); hidden names are
    left out."""
    seen: set[tuple[int, int]] = set()

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


def _file_records(
    entries: list[tuple[str, str | None, str | None]], skipped: list[Skipped]
) -> list[Record]:
    """Hash (path, label, split) entries into records; unreadable or non-image files skip."""
    candidates: list[tuple[str, str | None, str | None]] = []
    for entry in entries:
        suffix = _suffix(entry[0])
        if suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(entry[0], f"not an image file (extension {suffix!r})"))
            continue
        candidates.append(entry)
    hashed = _hash_files([p for p, _, _ in candidates])
    records = []
    for (path, label, split), (key, error) in zip(candidates, hashed, strict=True):
        if error is not None:
            skipped.append(Skipped(path, error))
            continue
        assert key is not None
        records.append(Record(key, path, label, split, ("file", path)))
    return records


def _folder_entries(
    root: Path, split: str | None, skipped: list[Skipped], warnings: list[str]
) -> list[tuple[str, str | None, str | None]]:
    """(path, label, split) of the files under ``root``; label: the first folder below root."""
    entries: list[tuple[str, str | None, str | None]] = []
    for folder, names in _walk_files(root, skipped):
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


def from_folder(root: Path) -> Source:
    """An ImageFolder-layout folder, with split folders detected."""
    skipped: list[Skipped] = []
    warnings: list[str] = []
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    split_dirs = [subdirs[s] for s in SPLIT_NAMES if s in subdirs]
    entries: list[tuple[str, str | None, str | None]] = []
    if split_dirs:
        for d in split_dirs:
            entries += _folder_entries(d, d.name.lower(), skipped, warnings)
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
    else:
        entries = _folder_entries(root, None, skipped, warnings)
    records = _file_records(entries, skipped)
    return Source(str(root), "folder", records, skipped, warnings)


def from_csv(path: Path) -> Source:
    """A CSV manifest of ``path,label[,split]``; paths are relative to the CSV's folder."""
    skipped: list[Skipped] = []
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            # (line number, row) for non-blank rows; line_num counts physical lines
            numbered = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: a manifest must be UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise SourceError(f"{path}: not a readable CSV manifest ({exc})") from exc
    if not numbered:
        raise SourceError(f"{path}: the manifest is empty (expected lines of path,label[,split])")
    if numbered[0][1][0].strip().lower() == "path":
        header = [c.strip().lower() for c in numbered[0][1]]
        numbered = numbered[1:]
    else:
        header = ["path", "label", "split"][: max(len(r) for _, r in numbered)]
    if "path" not in header:
        raise SourceError(f"{path}: a manifest needs a 'path' column, got {header}")
    col = {name: i for i, name in enumerate(header)}
    entries = []
    for n, row in numbered:
        if len(row) <= col["path"] or not row[col["path"]].strip():
            skipped.append(Skipped(f"{path}:{n}", f"no path (manifest line {n})"))
            continue
        rel = row[col["path"]].strip()
        file = (base / rel) if not os.path.isabs(rel) else Path(rel)
        label = (
            row[col["label"]].strip() or None
            if "label" in col and len(row) > col["label"]
            else None
        )
        split = (
            row[col["split"]].strip() or None
            if "split" in col and len(row) > col["split"]
            else None
        )
        if not file.exists() and not file.is_symlink():
            skipped.append(Skipped(str(file), f"missing file (manifest line {n})"))
            continue
        entries.append((str(file), label, split))
    records = _file_records(entries, skipped)
    return Source(str(path), "csv", records, skipped)


# ---------------------------------------------------------------------------- arrays
_SPLIT_RE = re.compile(r"(?:^|[^a-z])(train|val|validation|test)(?:[^a-z]|$)")


def _split_from(*names: str) -> str | None:
    for name in names:
        m = _SPLIT_RE.search(name.lower())
        if m:
            return m.group(1)
    return None


def _detect_arrays(f: Any) -> list[tuple[str, str | None]]:
    """(images dataset, labels dataset) pairs in an open HDF5 file."""
    import h5py

    datasets = {k: v for k, v in f.items() if isinstance(v, h5py.Dataset)}
    images = [
        k
        for k, v in datasets.items()
        if v.ndim in (3, 4)
        and v.shape[0] > 0
        and v.dtype.kind in "uif"
        and (v.ndim == 3 or v.shape[-1] in (1, 3, 4) or v.shape[1] in (1, 3, 4))
    ]
    pairs = []
    for name in sorted(images):
        n = datasets[name].shape[0]
        guesses = [
            re.sub(r"x$", "y", name),
            re.sub(r"_x(_|$)", r"_y\1", name),
            name.replace("images", "labels"),
            name.replace("image", "label"),
            name.replace("data", "labels"),
        ]
        label = next(
            (
                g
                for g in guesses
                if g != name
                and g in datasets
                and datasets[g].size == n
                and datasets[g].dtype.kind in "uib"
            ),
            None,
        )
        pairs.append((name, label))
    return pairs


def _class_names(f: Any) -> list[str] | None:
    for name in ("list_classes", "classes", "class_names", "label_names"):
        if name in f:
            return [c.decode() if isinstance(c, bytes) else str(c) for c in f[name][...].ravel()]
    return None


def from_hdf5(
    paths: list[Path], *, images_key: str | None = None, labels_key: str | None = None
) -> Source:
    """Images stored as arrays inside HDF5 files."""
    import h5py

    records: list[Record] = []
    warnings: list[str] = []
    for path in paths:
        with h5py.File(path, "r") as f:
            if images_key:
                if images_key not in f:
                    raise SourceError(f"{path}: no dataset {images_key!r}; has {sorted(f)}")
                pairs = [(images_key, labels_key)]
            else:
                pairs = _detect_arrays(f)
                if not pairs:
                    raise SourceError(
                        f"{path}: no image arrays found (looked for (N,H,W[,C]) datasets in "
                        f"{sorted(f)}); name one with --images-key"
                    )
            classes = _class_names(f)
            for images, labels in pairs:
                data = f[images][...]
                y = f[labels][...].ravel() if labels else None
                split = _split_from(images, path.stem)
                for i in range(data.shape[0]):
                    label = None
                    if y is not None:
                        v = int(y[i])
                        label = classes[v] if classes and 0 <= v < len(classes) else str(v)
                    records.append(
                        Record(
                            array_key(data[i]),
                            f"{path}::{images}[{i}]",
                            label,
                            split,
                            ("h5", str(path), images, i),
                        )
                    )
                if labels is None:
                    warnings.append(f"{path}::{images}: no labels dataset found")
    name = str(paths[0].parent if len(paths) > 1 else paths[0])
    return Source(name, "hdf5", records, [], warnings)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target


def builtin(name: str) -> Source:
    """A built-in sample: ``digits`` (scikit-learn's 1,797 8x8 grayscale digits)."""
    if name != "digits":
        raise SourceError(f"unknown built-in sample {name!r}; choose from {BUILTINS}")
    images, target = _digits()
    records = [
        Record(
            array_key(images[i]), f"builtin:digits[{i}]", str(int(target[i])), None, ("digits", i)
        )
        for i in range(len(images))
    ]
    return Source("builtin:digits", "builtin", records)


# ---------------------------------------------------------------------------- entry point
def open_source(
    source: str | Path,
    *,
    images_key: str | None = None,
    labels_key: str | None = None,
) -> Source:
    """Turn a path or ``builtin:NAME`` into a :class:`Source`; raises SourceError if empty."""
    text = str(source)
    if text.startswith("builtin:"):
        src = builtin(text.split(":", 1)[1])
    else:
        path = Path(source)
        if not path.exists():
            raise SourceError(
                f"{path}: no such file or folder (sources: an image folder, a .csv manifest, "
                f"an .h5 file of arrays, or builtin:digits)"
            )
        if path.is_dir():
            h5s = sorted(p for p in path.iterdir() if p.suffix.lower() in (".h5", ".hdf5"))
            images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))
            if h5s and not images:
                src = from_hdf5(h5s, images_key=images_key, labels_key=labels_key)
            else:
                src = from_folder(path)
        elif path.suffix.lower() == ".csv":
            src = from_csv(path)
        elif path.suffix.lower() in (".h5", ".hdf5"):
            src = from_hdf5([path], images_key=images_key, labels_key=labels_key)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            src = Source(
                str(path), "files", _file_records([(str(path), None, None)], skipped := []), skipped
            )
        else:
            raise SourceError(f"{path}: not a folder, .csv, .h5 or image file")
    if not src.records:
        detail = (
            f"; {len(src.skipped)} file(s) skipped, e.g. {src.skipped[0].path}: "
            f"{src.skipped[0].reason}"
            if src.skipped
            else ""
        )
        raise SourceError(f"{src.name}: no images found{detail}")
    return src
