"""Images stored as arrays in an HDF5 file, or a folder of such files: image, label and
class-name datasets are detected, or named with ``images_key``/``labels_key``; the split comes
from the dataset or file name.

Nothing outside the file is read (:mod:`featurestore.sources.hdf5` checks every object before
a byte of it is read). Each images dataset is checked from its metadata first (3 or 4
dimensions, 1, 3 or 4 channels, a sane size, labels of the same length), then read in blocks
of about :data:`BLOCK_BYTES`, never whole: once for the range of its values when they need
converting, once to key its images. How its values become pixels is decided once for the
whole dataset (:class:`~featurestore.decode.ArrayFormat`). An image with NaN or infinite
values, and images whose storage was never written, are skipped with their reason; a dataset
that cannot be read is skipped with its reason (an error when it was named); in a folder of
files a file that cannot be read is skipped with its reason.

A record's ``ref`` is ``("h5", file, dataset, index, format)``; each process opens the files it
loads from once, and :meth:`ArrayLoader.close` closes them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featurestore.decode import ArrayFormat, DecodeError, image_geometry
from featurestore.errors import SourceError
from featurestore.keys import array_key
from featurestore.sources.hdf5 import Refused, check_inside, lookup, open_file, unwritten_runs
from featurestore.sources.loading import register_loader
from featurestore.sources.records import Record, Skipped, Source

H5_SUFFIXES = (".h5", ".hdf5")
BLOCK_BYTES = 64 << 20  # images read at a time
MAX_IMAGES = 10_000_000  # per dataset: every image is a record held in memory for the run
MAX_CLASS_NAMES = 100_000
CLASS_NAME_DATASETS = ("list_classes", "classes", "class_names", "label_names")
_SPLIT_RE = re.compile(r"(?:^|[^a-z])(train|val|validation|test)(?:[^a-z]|$)")
_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


def split_from(*names: str) -> str | None:
    """The first split name found as a word in ``names`` (``train_set_x`` -> ``train``)."""
    for name in names:
        m = _SPLIT_RE.search(name.lower())
        if m:
            return m.group(1)
    return None


def _is_image_array(v: Any) -> bool:
    """(N, H, W) or (N, H, W, C) / (N, C, H, W) with 1, 3 or 4 channels, numeric, no empty
    axis (read from the metadata only)."""
    return (
        v.ndim in (3, 4)
        and all(s > 0 for s in v.shape)
        and v.dtype.kind in "uif"
        and (v.ndim == 3 or v.shape[-1] in (1, 3, 4) or v.shape[1] in (1, 3, 4))
    )


def _label_guesses(name: str) -> list[str]:
    return [
        re.sub(r"x$", "y", name),
        re.sub(r"_x(_|$)", r"_y\1", name),
        name.replace("images", "labels"),
        name.replace("image", "label"),
        name.replace("data", "labels"),
    ]


def _top_datasets(f: Any, warnings: list[str]) -> dict[str, Any]:
    """The datasets at the top of ``f`` by name, each reached without leaving the file; a
    name whose link is refused is left out with a warning, and a soft link to a dataset
    already listed under its own (hard-linked) name is left out."""
    import h5py

    names = sorted(f)
    hard = {n for n in names if _is_hard_link(f, n)}
    found: dict[str, Any] = {}
    ids: set[Any] = set()
    refused = []
    for name in sorted(names, key=lambda n: n not in hard):  # hard links first
        try:
            obj = lookup(f, name)
        except Refused as exc:
            refused.append(f"{exc.where}: {exc.reason} (ignored)")
            continue
        if isinstance(obj, h5py.Dataset) and obj.id not in ids:
            ids.add(obj.id)
            found[name] = obj
    warnings += sorted(refused)
    return dict(sorted(found.items()))


def _is_hard_link(group: Any, name: str) -> bool:
    import h5py

    try:
        return isinstance(group.get(name, getlink=True), h5py.HardLink)
    except _READ_ERRORS:
        return False


def detect_arrays(f: Any, warnings: list[str] | None = None) -> list[tuple[str, str | None]]:
    """(images dataset, labels dataset) pairs in an open HDF5 file."""
    datasets = _top_datasets(f, [] if warnings is None else warnings)
    pairs = []
    for name in sorted(n for n, v in datasets.items() if _is_image_array(v)):
        n = datasets[name].shape[0]
        label = next(
            (
                g
                for g in _label_guesses(name)
                if g != name
                and g in datasets
                and datasets[g].size == n
                and datasets[g].dtype.kind in "uib"
            ),
            None,
        )
        pairs.append((name, label))
    return pairs


def class_names(f: Any, warnings: list[str] | None = None) -> list[str] | None:
    """Class names stored beside the arrays (``list_classes``, ``classes``, ...), if any.

    Text that is not UTF-8 keeps its bytes as ``\\xNN`` escapes, an empty name becomes its
    index, and a name given twice keeps its classes apart as ``name (index)``, each with a
    warning; a class-name dataset that cannot be used is ignored with a warning.
    """
    notes = [] if warnings is None else warnings
    for name in CLASS_NAME_DATASETS:
        if not f.id.links.exists(name.encode()):
            continue
        try:
            return _class_names(f, name, notes)
        except Refused as exc:
            notes.append(f"{exc.where}: {exc.reason}; class names not used")
            return None
    return None


def _class_names(f: Any, name: str, notes: list[str]) -> list[str]:
    import h5py

    where = f"{f.filename}::{name}"
    obj = lookup(f, name)
    if not isinstance(obj, h5py.Dataset):
        raise Refused(where, "a group, not a dataset of names")
    if obj.size > MAX_CLASS_NAMES:
        raise Refused(where, f"{obj.size:,} names (more than {MAX_CLASS_NAMES:,})")
    check_inside(f, obj, where)
    if unwritten_runs(obj):
        raise Refused(where, "never written")
    if obj.dtype.kind not in "SOUuib" or (
        obj.dtype.kind == "O" and h5py.check_string_dtype(obj.dtype) is None
    ):
        raise Refused(where, f"names of dtype {obj.dtype} (expected text or integers)")
    raw = np.asarray(obj[()]).ravel()
    names = []
    for i, v in enumerate(raw):
        text = _text(v, where, notes) if isinstance(v, bytes | str) else str(int(v))
        if not text.strip():
            notes.append(f"{where}: class {i} has an empty name; named {i!s}")
            text = str(i)
        names.append(text)
    seen: dict[str, list[int]] = {}
    for i, text in enumerate(names):
        seen.setdefault(text, []).append(i)
    for text, where_twice in seen.items():
        if len(where_twice) > 1:
            notes.append(
                f"{where}: class name {text!r} given {len(where_twice)} times (entries "
                f"{where_twice}); kept apart as {[f'{text} ({i})' for i in where_twice]}"
            )
            for i in where_twice:
                names[i] = f"{text} ({i})"
    return names


def _text(v: bytes | str, where: str, notes: list[str]) -> str:
    if isinstance(v, str):
        return v
    try:
        return v.decode()
    except UnicodeDecodeError:
        text = v.decode(errors="backslashreplace")
        notes.append(f"{where}: name {bytes(v)!r} is not UTF-8 text; read as {text!r}")
        return text


@dataclass
class _Scan:
    """What one file gave."""

    records: list[Record] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _images_dataset(f: Any, path: Path, name: str) -> Any:
    """The images dataset ``name``, checked from its metadata (Refused with the reason)."""
    import h5py

    where = f"{path}::{name}"
    obj = lookup(f, name)
    if not isinstance(obj, h5py.Dataset):
        raise Refused(where, "a group, not a dataset of images")
    if obj.ndim not in (3, 4):
        raise Refused(
            where,
            f"shape {obj.shape} is not (N, H, W) or (N, H, W, C)/(N, C, H, W) images",
        )
    if obj.shape[0] == 0:
        raise Refused(where, "holds no images (N = 0)")
    if obj.shape[0] > MAX_IMAGES:
        raise Refused(where, f"{obj.shape[0]:,} images (more than {MAX_IMAGES:,} per dataset)")
    if obj.dtype.kind not in "uifb":
        raise Refused(where, f"values of dtype {obj.dtype} are not pixels (numbers or booleans)")
    check_inside(f, obj, where)
    return obj


def _labels(f: Any, path: Path, name: str, n: int, classes: list[str] | None) -> list[str]:
    """The label of each of ``n`` images from dataset ``name``: integers (an HDF5 enum's
    names, else via ``classes`` when in range), whole floats as integers, or text; Refused
    otherwise."""
    import h5py

    where = f"{path}::{name}"
    obj = lookup(f, name)
    if not isinstance(obj, h5py.Dataset):
        raise Refused(where, "a group, not a dataset of labels")
    if obj.size != n:
        raise Refused(where, f"{obj.size:,} labels (shape {obj.shape}) for {n:,} images")
    check_inside(f, obj, where)
    if unwritten_runs(obj):
        raise Refused(where, "labels never written (they would read as the fill value)")
    kind = obj.dtype.kind
    if kind == "O" and h5py.check_string_dtype(obj.dtype) is None:
        kind = "?"
    if kind not in "uibfSO":
        raise Refused(where, f"labels of dtype {obj.dtype} (expected integers or text)")
    values = np.asarray(obj[()]).ravel()
    if kind in "SO":
        notes: list[str] = []
        labels = [_text(v, where, notes) for v in values]
        if notes:
            raise Refused(where, "labels that are not UTF-8 text")
        return labels
    if kind == "f":
        values = values.astype(np.float64)
        whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) <= 2**53)
        bad = np.flatnonzero(~whole)
        if bad.size:
            i = int(bad[0])
            raise Refused(
                where,
                f"float labels must be whole numbers; index {i} holds {float(values[i])!r} "
                f"({bad.size} such)",
            )
    ints = values.astype(np.int64) if kind != "u" else values
    enum = h5py.check_enum_dtype(obj.dtype)
    if enum:  # an HDF5 enum names its own values
        names = {int(v): k for k, v in enum.items()}
        return [names.get(v, str(v)) for v in map(int, ints)]
    return [classes[v] if classes and 0 <= v < len(classes) else str(v) for v in map(int, ints)]


def _blocks(dataset: Any, runs: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """(start, images) blocks of about BLOCK_BYTES over the written rows of ``dataset``, read
    into one buffer (whole chunk rows where it can): each block is a view of that buffer, valid
    until the next one is read."""
    per_image = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:])))
    step = max(1, BLOCK_BYTES // per_image)
    rows = dataset.chunks[0] if dataset.chunks else 1
    step = max(rows, step // rows * rows) if step >= rows else step
    n = dataset.shape[0]
    buffer = np.empty((min(step, n), *dataset.shape[1:]), dataset.dtype)
    start = 0
    gaps = iter(runs)
    gap = next(gaps, None)
    while start < n:
        if gap is not None and start >= gap[0]:
            start = max(start, gap[1])
            gap = next(gaps, None)
            continue
        stop = min(n, start + step, gap[0] if gap is not None else n)
        dataset.read_direct(buffer, np.s_[start:stop], np.s_[0 : stop - start])
        yield start, buffer[: stop - start]
        start = stop


def _value_range(
    dataset: Any, runs: list[tuple[int, int]]
) -> tuple[float, float, list[int], tuple[int, np.ndarray] | None]:
    """(lowest, highest) finite value over the dataset's images that are finite throughout,
    the indices of the others, and (start, block) when its written images were one block
    (read once)."""
    if dataset.dtype.kind not in "uif" or dataset.dtype == np.uint8:
        return 0, 0, [], None  # uint8 and bool: the dtype alone decides
    lo: Any = None
    hi: Any = None
    bad: list[int] = []
    only: tuple[int, np.ndarray] | None = None
    for n_blocks, (start, block) in enumerate(_blocks(dataset, runs)):
        only = (start, block) if n_blocks == 0 else None
        flat = block.reshape(block.shape[0], -1)
        if not flat.size:
            continue
        b_lo, b_hi = flat.min(), flat.max()  # NaN and infinity show here: then look closer
        if block.dtype.kind == "f" and not (np.isfinite(b_lo) and np.isfinite(b_hi)):
            ok = np.isfinite(flat).all(axis=1)
            bad += [start + int(i) for i in np.flatnonzero(~ok)]
            flat = flat[ok]
            if not flat.size:
                continue
            b_lo, b_hi = flat.min(), flat.max()
        lo = b_lo if lo is None else min(lo, b_lo)
        hi = b_hi if hi is None else max(hi, b_hi)
    if lo is None:
        return 0, 0, bad, only
    as_number = int if dataset.dtype.kind in "uib" else float
    return as_number(lo), as_number(hi), bad, only


def _decide(where: str, dataset: Any, lo: float, hi: float, interlace: str | None) -> ArrayFormat:
    try:
        return ArrayFormat.decide(dataset.dtype, dataset.shape[1:], lo, hi, interlace=interlace)
    except DecodeError as exc:
        raise Refused(where, str(exc)) from exc


def dataset_format(path: Path, name: str, dataset: Any) -> ArrayFormat:
    """The :class:`~featurestore.decode.ArrayFormat` of an images dataset, from one read of
    its written images (Refused when its values are not pixels)."""
    lo, hi, _, _ = _value_range(dataset, unwritten_runs(dataset))
    return _decide(f"{path}::{name}", dataset, lo, hi, _interlace(dataset))


def _interlace(dataset: Any) -> str | None:
    """The HDF5 image attribute ``INTERLACE_MODE`` of ``dataset`` when it is one short text
    (its shape and type are checked before it is read)."""
    import h5py

    try:
        if "INTERLACE_MODE" not in dataset.attrs:
            return None
        attr = h5py.h5a.open(dataset.id, b"INTERLACE_MODE")
        if attr.shape not in ((), (1,)) or attr.dtype.kind not in "SO":
            return None
        value = dataset.attrs["INTERLACE_MODE"]
    except _READ_ERRORS:
        return None
    if isinstance(value, np.ndarray):
        value = value.ravel()[0]
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value.strip().upper()[:32] if isinstance(value, str) else None


def _array_records(
    path: Path, images: str, dataset: Any, labels: list[str] | None, scan: _Scan
) -> None:
    """Records of ``dataset`` (named ``images``, labelled by ``labels``) into ``scan``;
    Refused when the dataset as a whole cannot be read."""
    where = f"{path}::{images}"
    interlace = _interlace(dataset)
    try:
        image_geometry(tuple(dataset.shape[1:]), interlace)
    except DecodeError as exc:
        raise Refused(where, str(exc)) from exc
    runs = unwritten_runs(dataset)
    for a, b in runs:
        span = f"[{a}]" if b == a + 1 else f"[{a}:{b}]"
        scan.skipped.append(
            Skipped(f"{where}{span}", "never written (would read as the fill value)")
        )
    lo, hi, bad, only = _value_range(dataset, runs)
    scan.skipped += [Skipped(f"{where}[{i}]", "NaN or infinite values: not an image") for i in bad]
    if sum(b - a for a, b in runs) + len(bad) == dataset.shape[0]:
        return
    fmt = _decide(where, dataset, lo, hi, interlace)
    scan.warnings += [f"{where}: {note}" for note in fmt.notes]
    split = split_from(images, path.stem)
    bad_set = set(bad)
    for start, block in [only] if only is not None else _blocks(dataset, runs):
        good = [j for j in range(block.shape[0]) if start + j not in bad_set]
        part = block if len(good) == block.shape[0] else block[good]
        for j, image in zip(good, part if fmt.raw_keys else fmt.pixels(part), strict=True):
            i = start + j
            label = labels[i] if labels is not None else None
            ref = ("h5", str(path), images, i, fmt)
            scan.records.append(Record(array_key(image), f"{where}[{i}]", label, split, ref))


def _pairs(
    f: Any, path: Path, images_key: str | None, labels_key: str | None, warnings: list[str]
) -> list[tuple[str, str | None]]:
    """The (images, labels) datasets to read: the named ones, or those detected (each with
    ``labels_key`` when only that is named)."""
    if images_key:
        return [(images_key, labels_key)]
    pairs = detect_arrays(f, warnings)
    if not pairs:
        refused = "".join(f"; {w}" for w in warnings[:3])
        raise Refused(
            str(path),
            f"no image arrays found (looked for (N,H,W[,C]) datasets in {sorted(f)}); name "
            f"one with --images-key{refused}",
        )
    if labels_key:
        return [(images, labels_key) for images, _ in pairs]
    return pairs


def _scan_pair(
    f: Any,
    path: Path,
    images: str,
    labels: str | None,
    classes: list[str] | None,
    scan: _Scan,
    *,
    named: tuple[str | None, str | None],
) -> None:
    """One (images, labels) pair into ``scan``. A dataset the user named that cannot be read
    is an error (Refused); a detected one is skipped with its reason."""
    try:
        dataset = _images_dataset(f, path, images)
        y = _labels(f, path, labels, dataset.shape[0], classes) if labels else None
    except Refused as exc:
        if images in named or (labels is not None and labels in named):
            raise
        scan.skipped.append(Skipped(exc.where, exc.reason))
        return
    try:
        _array_records(path, images, dataset, y, scan)
    except Refused as exc:
        if images in named:
            raise
        scan.skipped.append(Skipped(exc.where, exc.reason))
    except _READ_ERRORS as exc:  # h5py on a damaged dataset: OSError, RuntimeError, ...
        if images in named:
            raise Refused(f"{path}::{images}", f"cannot read ({exc})") from exc
        scan.skipped.append(Skipped(f"{path}::{images}", f"cannot read ({exc})"))
    else:
        if labels is None:
            scan.warnings.append(f"{path}::{images}: no labels dataset found")


def _scan_file(path: Path, images_key: str | None, labels_key: str | None) -> _Scan:
    """The records of one file; Refused when the file, or a dataset named in it, cannot be
    read (a detected dataset that cannot be read is skipped with its reason)."""
    scan = _Scan()
    f = open_file(path)
    try:
        pairs = _pairs(f, path, images_key, labels_key, scan.warnings)
        classes = class_names(f, scan.warnings)
        for images, labels in pairs:
            _scan_pair(f, path, images, labels, classes, scan, named=(images_key, labels_key))
    except SourceError:
        raise
    except _READ_ERRORS as exc:
        raise Refused(str(path), f"cannot read ({exc})") from exc
    finally:
        f.close()
    return scan


def from_hdf5(
    paths: list[Path], *, images_key: str | None = None, labels_key: str | None = None
) -> Source:
    """Images stored as arrays inside HDF5 files; with several files, one that cannot be read
    is skipped with its reason (a single file is an error: SourceError)."""
    records: list[Record] = []
    skipped: list[Skipped] = []
    warnings: list[str] = []
    for path in paths:
        try:
            scan = _scan_file(path, images_key, labels_key)
        except Refused as exc:
            if len(paths) == 1:
                raise
            skipped.append(Skipped(exc.where, exc.reason))
            continue
        records += scan.records
        skipped += scan.skipped
        warnings += scan.warnings
    name = str(paths[0].parent if len(paths) > 1 else paths[0])
    return Source(name, "hdf5", records, skipped, warnings)


@register_loader("h5")
class ArrayLoader:
    """``("h5", file, dataset, index, format)``: one image of an HDF5 array (each file opened
    once per process and each dataset checked once, as when it was scanned). A ref without its
    format (``("h5", file, dataset, index)``) gets the dataset's format, decided once."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}
        self._datasets: dict[tuple[str, str], Any] = {}
        self._formats: dict[tuple[str, str], ArrayFormat] = {}
        # Threads may load side by side (the pixel baseline): each file is opened by one.
        self._lock = threading.Lock()

    def load(self, ref: tuple[Any, ...], *, draft_size: int | None) -> Image.Image:
        file, name, index = ref[1:4]
        try:
            dataset = self._dataset(file, name)
            fmt = ref[4] if len(ref) > 4 else self._format(file, name, dataset)
            return fmt.image(dataset[index])
        except SourceError as exc:
            raise DecodeError(str(exc)) from exc
        except _READ_ERRORS as exc:
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(f"cannot read {file}::{name}[{index}] ({exc})") from exc

    def _dataset(self, file: str, name: str) -> Any:
        dataset = self._datasets.get((file, name))
        if dataset is None:
            with self._lock:
                dataset = self._datasets.get((file, name))
                if dataset is None:
                    if file not in self._files:
                        self._files[file] = open_file(Path(file))
                    dataset = _images_dataset(self._files[file], Path(file), name)
                    self._datasets[(file, name)] = dataset
        return dataset

    def _format(self, file: str, name: str, dataset: Any) -> ArrayFormat:
        fmt = self._formats.get((file, name))
        if fmt is None:
            fmt = self._formats[(file, name)] = dataset_format(Path(file), name, dataset)
        return fmt

    def close(self) -> None:
        """Close the files this loader opened (a later load opens them again)."""
        with self._lock:
            self._datasets.clear()
            files, self._files = self._files, {}
        for f in files.values():
            f.close()
