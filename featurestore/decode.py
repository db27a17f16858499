"""Decode image bytes or arrays into RGB Pillow images, and the eval transform to uint8 tensors.

Every mode Pillow opens becomes 8-bit RGB: 16-bit images are scaled (not clipped), palette and
alpha images are composited over white, CMYK is converted, the EXIF orientation is applied and
animated images give their first frame. Pillow's decompression-bomb warning is an error here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from featurestore.errors import DecodeError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def decode_bytes(data: bytes, *, draft_size: int | None = None) -> Image.Image:
    """Decode encoded image bytes to an RGB image.

    ``draft_size``: for JPEGs, let libjpeg decode at the smallest 1/2, 1/4 or 1/8 scale whose
    sides both stay >= ``draft_size`` (the resize that follows needs no more pixels).
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))
                im = ImageOps.exif_transpose(im) or im
                im.load()
                return _to_rgb(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError(f"too many pixels (decompression-bomb guard): {exc}") from exc
        except Image.UnidentifiedImageError as exc:
            raise DecodeError("not an image Pillow can identify") from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise DecodeError(f"cannot decode: {exc}") from exc


def decode_file(path: Path, *, draft_size: int | None = None) -> Image.Image:
    """Read and decode an image file (OSErrors while reading become DecodeError)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from exc
    return decode_bytes(data, draft_size=draft_size)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, C) or (C, H, W) array (uint8, or float in [0, 1]) as an RGB image."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float64)
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    if a.ndim not in (2, 3):
        raise DecodeError(f"an image array has 2 or 3 dimensions, got shape {a.shape}")
    return _to_rgb(Image.fromarray(a))
