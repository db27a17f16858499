"""Raw pixels as features: the "no transfer" baseline every sweep report shows."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from featurestore.decode import DecodeError
from featurestore.provenance import cores
from featurestore.sources import ImageLoader, Record, Skipped

#: Side of the baseline's images: 16 x 16 RGB, 768 columns. At 32 x 32 (3,072 columns) the
#: baseline's heads took 60% of caltech101's default sweep (159 of 263 s) and half of digits';
#: at 16 the pixel heads run 2-4x faster, and their test accuracy moved by -4..+2 images on
#: digits, hymenoptera and catvnoncat (``benchmarks/RESULTS.md``, issue 11).
DEFAULT_SIZE = 16

#: Images per task of a decoding thread.
_CHUNK = 64


def pixel_rows(
    records: Sequence[Record],
    loader: ImageLoader,
    *,
    size: int = DEFAULT_SIZE,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
    """(rows, ok mask, skipped): each image resized to ``size`` x ``size`` RGB, flattened, /255.

    Resizing squashes to a square (no crop), bilinear with antialiasing. The images are decoded
    on ``threads`` threads (default: one per core; Pillow decodes and resizes without the GIL),
    with the same rows as on one. The files the loader opened (HDF5 sources) are closed at the
    end; a later load opens them again.
    """
    rows = np.zeros((len(records), size * size * 3), dtype=np.float32)
    ok = np.zeros(len(records), dtype=bool)

    def one(i: int) -> Skipped | None:
        try:
            img = loader.load(records[i]).resize((size, size), Image.Resampling.BILINEAR)
        except DecodeError as exc:
            return Skipped(records[i].path, str(exc))
        rows[i] = np.asarray(img, dtype=np.float32).reshape(-1) / 255.0
        ok[i] = True
        return None

    def chunk(start: int) -> list[Skipped | None]:
        return [one(i) for i in range(start, min(start + _CHUNK, len(records)))]

    workers = max(1, min(threads or cores(), -(-len(records) // _CHUNK)))
    starts = range(0, len(records), _CHUNK)
    try:
        if workers == 1:
            outcomes = [o for start in starts for o in chunk(start)]
        else:
            # A chunk's error (or Ctrl-C) ends map at once: the chunks not started are dropped.
            with ThreadPoolExecutor(workers, thread_name_prefix="featurestore-pixels") as pool:
                outcomes = [o for part in pool.map(chunk, starts) for o in part]
    finally:
        loader.close()
    return rows, ok, [s for s in outcomes if s is not None]
