"""Raw pixels as features: the "no transfer" baseline every sweep report shows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from featurestore.decode import DecodeError
from featurestore.sources import ImageLoader, Record, Skipped

#: Side of the baseline's images: 16 x 16 RGB, 768 columns. At 32 x 32 (3,072 columns) the
#: baseline's heads took 60% of caltech101's default sweep (159 of 263 s) and half of digits';
#: at 16 the pixel heads run 2-4x faster, and their test accuracy moved by -4..+2 images on
#: digits, hymenoptera and catvnoncat (``benchmarks/RESULTS.md``, issue 11).
DEFAULT_SIZE = 16


def pixel_rows(
    records: Sequence[Record], loader: ImageLoader, *, size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
    """(rows, ok mask, skipped): each image resized to ``size`` x ``size`` RGB, flattened, /255.

    Resizing squashes to a square (no crop), bilinear with antialiasing. The files the loader
    opened (HDF5 sources) are closed at the end; a later load opens them again.
    """
    rows = np.zeros((len(records), size * size * 3), dtype=np.float32)
    ok = np.zeros(len(records), dtype=bool)
    skipped: list[Skipped] = []
    try:
        for i, record in enumerate(records):
            try:
                img = loader.load(record).resize((size, size), Image.Resampling.BILINEAR)
            except DecodeError as exc:
                skipped.append(Skipped(record.path, str(exc)))
                continue
            rows[i] = np.asarray(img, dtype=np.float32).reshape(-1) / 255.0
            ok[i] = True
    finally:
        loader.close()
    return rows, ok, skipped
