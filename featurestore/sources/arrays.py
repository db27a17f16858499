"""Images stored as arrays in an HDF5 file, or a folder of such files: image, label and
class-name datasets are detected, or named with ``images_key``/``labels_key``; the split comes
from the dataset or file name.

A record's ``ref`` is ``("h5", file, dataset, index)``; each process opens the files it loads
from once (h5py is imported only when an HDF5 source is read).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image

from featurestore.decode import array_to_image
from featurestore.errors import SourceError
from featurestore.keys import array_key
from featurestore.sources.loading import register_loader
from featurestore.sources.records import Record, Source

H5_SUFFIXES = (".h5", ".hdf5")
_SPLIT_RE = re.compile(r"(?:^|[^a-z])(train|val|validation|test)(?:[^a-z]|$)")


def split_from(*names: str) -> str | None:
    """The first split name found as a word in ``names`` (``train_set_x`` -> ``train``)."""
    for name in names:
        m = _SPLIT_RE.search(name.lower())
        if m:
            return m.group(1)
    return None


def _is_image_array(v: Any) -> bool:
    """(N, H, W) or (N, H, W, C) / (N, C, H, W) with 1, 3 or 4 channels, numeric, non-empty."""
    return (
        v.ndim in (3, 4)
        and v.shape[0] > 0
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


def detect_arrays(f: Any) -> list[tuple[str, str | None]]:
    """(images dataset, labels dataset) pairs in an open HDF5 file."""
    import h5py

    datasets = {k: v for k, v in f.items() if isinstance(v, h5py.Dataset)}
    images = [k for k, v in datasets.items() if _is_image_array(v)]
    pairs = []
    for name in sorted(images):
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


def class_names(f: Any) -> list[str] | None:
    """Class names stored beside the arrays (``list_classes``, ``classes``, ...), if any."""
    for name in ("list_classes", "classes", "class_names", "label_names"):
        if name in f:
            return [c.decode() if isinstance(c, bytes) else str(c) for c in f[name][...].ravel()]
    return None


def _pairs(
    f: Any, path: Path, images_key: str | None, labels_key: str | None
) -> list[tuple[str, str | None]]:
    """The (images, labels) datasets to read: the named ones, or those detected."""
    if images_key:
        if images_key not in f:
            raise SourceError(f"{path}: no dataset {images_key!r}; has {sorted(f)}")
        return [(images_key, labels_key)]
    pairs = detect_arrays(f)
    if not pairs:
        raise SourceError(
            f"{path}: no image arrays found (looked for (N,H,W[,C]) datasets in "
            f"{sorted(f)}); name one with --images-key"
        )
    return pairs


def _array_records(
    f: Any, path: Path, images: str, labels: str | None, classes: list[str] | None
) -> list[Record]:
    """One record per image of dataset ``images``, labelled from ``labels`` (via ``classes``)."""
    data = f[images][...]
    y = f[labels][...].ravel() if labels else None
    split = split_from(images, path.stem)
    records = []
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
    return records


def from_hdf5(
    paths: list[Path], *, images_key: str | None = None, labels_key: str | None = None
) -> Source:
    """Images stored as arrays inside HDF5 files."""
    import h5py

    records: list[Record] = []
    warnings: list[str] = []
    for path in paths:
        with h5py.File(path, "r") as f:
            pairs = _pairs(f, path, images_key, labels_key)
            classes = class_names(f)
            for images, labels in pairs:
                records += _array_records(f, path, images, labels, classes)
                if labels is None:
                    warnings.append(f"{path}::{images}: no labels dataset found")
    name = str(paths[0].parent if len(paths) > 1 else paths[0])
    return Source(name, "hdf5", records, [], warnings)


@register_loader("h5")
class ArrayLoader:
    """``("h5", file, dataset, index)``: one image of an HDF5 array (files opened once)."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def load(self, ref: tuple[Any, ...], *, draft_size: int | None) -> Image.Image:
        _, file, dataset, index = ref
        if file not in self._files:
            import h5py

            self._files[file] = h5py.File(file, "r")
        return array_to_image(self._files[file][dataset][index])
