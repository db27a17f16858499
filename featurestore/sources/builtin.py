"""Built-in samples: ``builtin:digits`` is scikit-learn's 1,797 8x8 digit images (its data
file ships with scikit-learn; read when the sample is used)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featurestore.decode import array_to_image
from featurestore.errors import SourceError
from featurestore.keys import array_key
from featurestore.sources.loading import register_loader
from featurestore.sources.records import Record, Source

BUILTINS = ("digits",)
PREFIX = "builtin:"


def _digits_table() -> np.ndarray:
    """scikit-learn's ``digits.csv.gz`` (64 pixel columns 0..16, then the target), read as its
    ``load_digits`` reads it, from the installed package's folder without importing scikit-learn
    (whose import takes about 2 s, more than the rest of a command on cached rows, and is paid
    again by every decoding worker); through ``load_digits`` where the file is not there."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as fh:
                return np.loadtxt(fh, delimiter=",")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return np.column_stack([X, y])


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images as uint8 0..255 of shape (1797, 8, 8), targets 0..9)."""
    table = _digits_table()
    images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return images, table[:, -1].astype(int)


def builtin(name: str) -> Source:
    """A built-in sample: ``digits`` (scikit-learn's 1,797 8x8 grayscale digits)."""
    if name != "digits":
        raise SourceError(f"unknown built-in sample {name!r}; choose from {BUILTINS}")
    images, target = digits()
    records = [
        Record(
            array_key(images[i]), f"builtin:digits[{i}]", str(int(target[i])), None, ("digits", i)
        )
        for i in range(len(images))
    ]
    return Source("builtin:digits", "builtin", records)


@register_loader("digits")
class DigitsLoader:
    """``("digits", index)``: one image of the digits sample (loaded once per process)."""

    def __init__(self) -> None:
        self._images: np.ndarray | None = None

    def load(self, ref: tuple[Any, ...], *, draft_size: int | None) -> Image.Image:
        if self._images is None:
            self._images = digits()[0]
        return array_to_image(self._images[ref[1]])
