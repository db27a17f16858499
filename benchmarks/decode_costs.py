"""Per-photo CPU cost of the preprocessing that precedes the forward pass, one thread.

On the real hymenoptera JPEGs: decoding (Pillow in draft mode, as extract does, and
torchvision.io's ``decode_jpeg``) and the eval transform, resize of the shorter side to 256
(bicubic, antialiased) and a centre crop of 224, done three ways: Pillow resize then crop (what
extract does), Pillow resizing only the crop box (``Image.resize(box=...)``), and torch's uint8
antialiased resize on a tensor. Also how far the two alternatives' pixels are from extract's.
The numbers bound extraction's b/a (``extract_throughput.py``) on a machine where decoding
shares the cores with the network.

    python benchmarks/decode_costs.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, print_machine, print_table, real_jpegs
from PIL import Image
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from featurestore.decode import decode_file

RESIZE, CROP = 256, 224


def ms_per_item(fn: Callable[[Any], Any], items: Sequence[Any], reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        for x in items:
            fn(x)
    return (time.perf_counter() - t) / (reps * len(items)) * 1e3


def pil_resize_crop(im: Image.Image) -> Image.Image:
    im = F.resize(im, [RESIZE], InterpolationMode.BICUBIC, antialias=True)
    return F.center_crop(im, [CROP])


def pil_resize_box(im: Image.Image) -> Image.Image:
    """The crop's source region resized straight to CROP x CROP (same geometry as above)."""
    W, H = im.size
    w, h = (RESIZE, int(RESIZE * H / W)) if W <= H else (int(RESIZE * W / H), RESIZE)
    top, left = round((h - CROP) / 2.0), round((w - CROP) / 2.0)  # as torchvision center_crop
    sx, sy = W / w, H / h
    box = (left * sx, top * sy, (left + CROP) * sx, (top + CROP) * sy)
    return im.resize((CROP, CROP), Image.BICUBIC, box=box)


def torch_resize_crop(x: torch.Tensor) -> torch.Tensor:
    x = F.resize(x, [RESIZE], InterpolationMode.BICUBIC, antialias=True)
    return F.center_crop(x, [CROP])


def differs(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(int) - b.astype(int))
    return f"{(d > 0).mean():.1%} of values differ, max {d.max()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="passes over the photos per resize")
    args = p.parse_args()
    torch.set_num_threads(1)
    print_machine(machine())
    files = real_jpegs()
    imgs = [decode_file(Path(f), draft_size=RESIZE) for f in files]
    tensors = [F.pil_to_tensor(im) for im in imgs]
    datas = [read_file(str(f)) for f in files]
    ref = np.stack([np.asarray(pil_resize_crop(im)) for im in imgs])
    box = np.stack([np.asarray(pil_resize_box(im)) for im in imgs])
    tch = np.stack([torch_resize_crop(x).permute(1, 2, 0).numpy() for x in tensors])
    rows = [
        {
            "step": "decode, Pillow draft mode -> RGB (extract)",
            "ms/photo": ms_per_item(lambda f: decode_file(Path(f), draft_size=RESIZE), files, 1),
            "pixels vs extract": "",
        },
        {
            "step": "decode, torchvision.io.decode_jpeg",
            "ms/photo": ms_per_item(decode_jpeg, datas, 1),
            "pixels vs extract": "",
        },
        {
            "step": "resize 256 + crop 224, Pillow (extract)",
            "ms/photo": ms_per_item(pil_resize_crop, imgs, args.reps),
            "pixels vs extract": "same",
        },
        {
            "step": "resize of the crop box to 224, Pillow",
            "ms/photo": ms_per_item(pil_resize_box, imgs, args.reps),
            "pixels vs extract": differs(ref, box),
        },
        {
            "step": "resize 256 + crop 224, torch uint8 tensor",
            "ms/photo": ms_per_item(torch_resize_crop, tensors, args.reps),
            "pixels vs extract": differs(ref, tch),
        },
    ]
    print(f"{len(files)} photos from the hymenoptera dataset, one thread")
    print_table(rows)


if __name__ == "__main__":
    main()
