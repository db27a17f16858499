"""Decode image bytes, files or arrays into RGB Pillow images.

Every mode Pillow opens becomes 8-bit RGB: 16-bit images are scaled (not clipped), palette and
alpha images are composited over white, CMYK is converted, the EXIF orientation is applied and
animated images give their first frame. Pillow's decompression-bomb warning is an error here.
Files are opened without blocking and refused unless regular (a FIFO never hangs a reader).

Arrays follow an :class:`ArrayFormat`, decided once per dataset from its dtype, image shape
and value range (see :func:`value_rule` and :func:`image_layout`), never per image.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def file_type(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file is, in words."""
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


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """(read-only descriptor, its stat) of ``path``, refused unless it is a regular file.

    A folder, FIFO, socket or device is refused from its ``stat`` without being opened (opening
    some devices does something); the file is then opened without blocking and checked again
    on the descriptor (``fstat``), so one swapped for a FIFO in between never blocks the
    reader. OSError for what cannot be opened; :class:`NotRegularFile` (an OSError) for the
    rest. The caller closes the descriptor.
    """
    _refuse_irregular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        _refuse_irregular(st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _refuse_irregular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"not a regular file ({file_type(mode)})")


class NotRegularFile(OSError):
    """A path that names a folder, FIFO, socket or device where a file was expected."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def decode_file(path: Path, *, draft_size: int | None = None) -> Image.Image:
    """Read and decode an image file (OSErrors while reading become DecodeError; a FIFO or a
    device is refused without blocking)."""
    try:
        with open(open_regular(path)[0], "rb") as fh:
            data = fh.read()
    except NotRegularFile as exc:
        raise DecodeError(str(exc)) from exc
    except OSError as exc:
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL character in the path
        raise DecodeError(f"cannot read: {exc}") from exc
    return decode_bytes(data, draft_size=draft_size)


# ------------------------------------------------------------------------------- arrays
ARRAY_CHANNELS = (1, 3, 4)
#: Pixels per image an array may hold: Pillow's default decompression-bomb limit for files.
MAX_ARRAY_PIXELS = 89_478_485
_STEP = 1 << 20  # values converted at a time (8 MiB of float64)


def image_layout(shape: tuple[int, ...], interlace: str | None = None) -> tuple[bool, str | None]:
    """(channels first?, a note when the shape could be read both ways) for one stored image:
    ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C = 1, 3 or 4.

    Channels last when the last axis is 1, 3 or 4, else channels first when the first one is.
    A shape that fits both (``(3, 8, 4)``) is read channels last, with a note, unless the
    dataset's HDF5 image attribute ``INTERLACE_MODE`` says ``INTERLACE_PLANE`` (channels first)
    or ``INTERLACE_PIXEL`` (channels last).
    """
    if len(shape) == 2:
        return False, None
    if len(shape) != 3:
        raise DecodeError(f"an image array has 2 or 3 dimensions, got shape {shape}")
    first, last = shape[0] in ARRAY_CHANNELS, shape[-1] in ARRAY_CHANNELS
    if not (first or last):
        raise DecodeError(
            f"an image array has 1, 3 or 4 channels on its first or last axis, got shape {shape}"
        )
    if first and last:
        if interlace == "INTERLACE_PLANE":
            return True, None
        if interlace == "INTERLACE_PIXEL":
            return False, None
        return False, (
            f"image shape {shape} fits channels last ({shape[0]}x{shape[1]}, {shape[2]} "
            f"channels) and channels first ({shape[1]}x{shape[2]}, {shape[0]} channels): read "
            "channels last; set the dataset attribute INTERLACE_MODE='INTERLACE_PLANE' to read "
            "it channels first"
        )
    return (not last), None


def image_geometry(shape: tuple[int, ...], interlace: str | None = None) -> tuple[bool, str | None]:
    """:func:`image_layout`, and DecodeError for an image with no pixels or more than
    :data:`MAX_ARRAY_PIXELS` (checked from the shape alone, before any value is read)."""
    channels_first, note = image_layout(shape, interlace)
    height, width = shape[1:] if channels_first else shape[:2]
    if height < 1 or width < 1:
        raise DecodeError(f"an image array of shape {shape} holds no pixels")
    if height * width > MAX_ARRAY_PIXELS:
        raise DecodeError(
            f"{height}x{width} pixels per image is more than {MAX_ARRAY_PIXELS:,} "
            "(the decompression-bomb guard)"
        )
    return channels_first, note


def value_rule(dtype: np.dtype[Any], lo: float, hi: float) -> tuple[float, str | None]:
    """(scale, a note when the scale depends on the data) for values of ``dtype`` whose finite
    range over the whole dataset is [``lo``, ``hi``]: a pixel is ``round(value * scale)``
    (half to even). DecodeError for values that are not pixels.

    * bool: False 0, True 255;
    * uint8: as is;
    * other integers: 0..255 as is; larger values scaled by 255 / the dataset's maximum;
    * floats: [0, 1] times 255; [0, 255] as is (a maximum in [2, 255]); larger values scaled
      by 255 / the dataset's maximum; a maximum above 1 but below 2 fits neither range;
    * negative values, NaN or infinity, and any other dtype are refused.
    """
    kind = dtype.kind
    if kind == "b":
        return 255.0, None
    if kind not in "uif":
        raise DecodeError(f"values of dtype {dtype} are not pixels (numbers or booleans)")
    if dtype == np.uint8:
        return 1.0, None
    if lo < 0:
        raise DecodeError(
            f"negative values (minimum {lo:g}): pixels are 0..255, or 0..1 for floats; "
            "shift or rescale the arrays before reading them"
        )
    if kind == "f" and hi <= 1:
        return 255.0, None
    if kind == "f" and hi < 2:
        raise DecodeError(
            f"float values up to {hi:g}: above 1 but below 2 fits neither [0, 1] (times 255) "
            "nor [0, 255] (as is); clip them to [0, 1] or rescale them"
        )
    if hi <= 255:
        return 1.0, None
    return 255.0 / hi, f"{dtype} values up to {hi:g} scaled by 255/{hi:g} (the dataset's maximum)"


@dataclass(frozen=True, slots=True)
class ArrayFormat:
    """How the arrays of one dataset become 8-bit pixels: decided once for the whole dataset
    (from its dtype, one image's shape and the range of all its values), then applied to every
    image alike, so equal values always give equal pixels."""

    dtype: str  # numpy ``dtype.str`` of the stored values
    shape: tuple[int, ...]  # one stored image
    channels_first: bool
    scale: float  # pixel = round(value * scale), then 0..255
    notes: tuple[str, ...] = ()  # what a user should be told (data-dependent scale, layout)

    @classmethod
    def decide(
        cls,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        lo: float,
        hi: float,
        *,
        interlace: str | None = None,
    ) -> ArrayFormat:
        """The format of a dataset of ``dtype`` images of ``shape`` whose finite values lie in
        [``lo``, ``hi``]; DecodeError (the reason) when such arrays are not images."""
        channels_first, layout_note = image_geometry(tuple(shape), interlace)
        scale, scale_note = value_rule(np.dtype(dtype), lo, hi)
        notes = tuple(n for n in (layout_note, scale_note) if n)
        return cls(np.dtype(dtype).str, tuple(shape), channels_first, scale, notes)

    @classmethod
    def of(cls, images: np.ndarray) -> ArrayFormat:
        """The format of a block of images ``(N, *shape)`` taken as a whole dataset."""
        a = np.asarray(images)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DecodeError("NaN or infinite values: not an image")
        lo, hi = (a.min(), a.max()) if a.size and a.dtype.kind in "uif" else (0, 0)
        return cls.decide(a.dtype, a.shape[1:], _number(lo), _number(hi))

    @property
    def as_is(self) -> bool:
        """True when the stored values are the pixels: uint8, channels last or 2-D."""
        return self.dtype == "|u1" and not self.channels_first

    @property
    def raw_keys(self) -> bool:
        """True when an image's stored array keys it: uint8 read the way its shape alone says
        (so equal arrays always give equal pixels); other images are keyed by their pixels."""
        return self.dtype == "|u1" and self.channels_first == image_layout(self.shape)[0]

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """``(k, *shape)`` stored values -> ``(k, H, W[, C])`` uint8, channels last.

        Converted a slice at a time (bounded memory); DecodeError for NaN or infinity, or for
        arrays whose dtype or shape differ from the dataset's (changed since it was read).
        """
        a = np.asarray(images)
        if a.dtype.str != self.dtype or a.shape[1:] != self.shape:
            raise DecodeError(
                f"array of dtype {a.dtype.str} and image shape {a.shape[1:]} where "
                f"{self.dtype} {self.shape} was read (changed since the source was scanned?)"
            )
        if self.as_is:
            out = a
        else:
            flat = np.ascontiguousarray(a).reshape(-1)
            converted = np.empty(flat.size, np.uint8)
            for start in range(0, flat.size, _STEP):
                part = flat[start : start + _STEP]
                if a.dtype.kind == "f" and not _finite(part):
                    raise DecodeError("NaN or infinite values: not an image")
                values = part.astype(np.float64) * self.scale
                np.rint(values, out=values)
                np.clip(values, 0, 255, out=values)
                converted[start : start + part.size] = values
            out = converted.reshape(a.shape)
        return np.moveaxis(out, 1, -1) if self.channels_first else out

    def image(self, array: np.ndarray) -> Image.Image:
        """One stored image as an RGB Pillow image."""
        return pixels_to_image(self.pixels(np.asarray(array)[None])[0])


def _finite(values: np.ndarray) -> bool:
    """No NaN and no infinity in ``values`` (both show in the minimum or the maximum)."""
    return bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def _number(value: Any) -> float:
    """A numpy scalar as a Python int (integers, exactly) or float."""
    return int(value) if np.asarray(value).dtype.kind in "uib" else float(value)


def pixels_to_image(pixels: np.ndarray) -> Image.Image:
    """An ``(H, W)`` or ``(H, W, C)`` uint8 array (C = 1, 3 or 4) as an RGB image (transparency
    composited on white)."""
    a = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a)))


def array_to_image(arr: np.ndarray) -> Image.Image:
    """One ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` array as an RGB image, read by the rules
    of a dataset of that one image (:class:`ArrayFormat`)."""
    a = np.asarray(arr)
    if a.ndim not in (2, 3):
        raise DecodeError(f"an image array has 2 or 3 dimensions, got shape {a.shape}")
    return ArrayFormat.of(a[None]).image(a)
