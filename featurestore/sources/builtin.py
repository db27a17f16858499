"""Built-in samples: ``builtin:digits`` is scikit-learn's 1,797 8x8 digit images (it ships
with scikit-learn; imported only when the sample is used)."""

from __future__ import annotations

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


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images as uint8 0..255 of shape (1797, 8, 8), targets 0..9)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target


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
