"""featurestore.decode: image bytes, files and arrays to 8-bit RGB Pillow images."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from featurestore.decode import (
    IMAGE_EXTENSIONS,
    DecodeError,
    array_to_image,
    decode_bytes,
    decode_file,
)
from featurestore.errors import DecodeError as ErrorsDecodeError


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_extensions_are_lower_case_with_a_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert DecodeError is ErrorsDecodeError


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "PPM", "WEBP"])
def test_lossless_formats_round_trip_exactly(fmt: str) -> None:
    im = _noise(7, 5)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_bytes(_encode(im, fmt, **kw))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(im))


def test_draft_shrinks_only_jpegs_and_never_below_the_size_asked() -> None:
    big = _noise(256, 128)
    jpeg, png = _encode(big, "JPEG", quality=90), _encode(big, "PNG")
    assert decode_bytes(jpeg).size == (256, 128)
    assert decode_bytes(jpeg, draft_size=32).size == (64, 32)  # 1/4: both sides still >= 32
    assert decode_bytes(jpeg, draft_size=100).size == (256, 128)  # 1/2 would give 64 < 100
    assert decode_bytes(png, draft_size=32).size == (256, 128)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("I;16", 65535, 255),  # 16-bit: scaled from 0..65535
        ("I;16", 257 * 10, 10),
        ("I", 200, 200),  # 32-bit whose values fit in 0..255: kept
        ("I", 1000, 4),  # larger values: scaled from 0..65535 (1000 * 255 / 65535)
        ("F", 0.0, 0),
        ("L", 77, 77),
    ],
)
def test_high_bit_depth_modes_are_scaled_to_8_bits(mode: str, value: float, expected: int) -> None:
    im = Image.new(mode, (4, 3), value)
    out = decode_bytes(_encode(im, "TIFF" if mode in ("I", "F") else "PNG"))
    assert out.mode == "RGB" and out.size == (4, 3)
    assert np.asarray(out)[0, 0].tolist() == [expected] * 3


def test_alpha_is_composited_over_white() -> None:
    im = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    im.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    out = np.asarray(decode_bytes(_encode(im, "PNG")))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    la = Image.new("LA", (1, 1), (0, 128))  # half-transparent black
    assert np.asarray(decode_bytes(_encode(la, "PNG")))[0, 0].tolist() == [127] * 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"plain text, not an image", "not an image Pillow can identify"),
        (_encode(_noise(64, 64), "PNG")[:200], "cannot decode"),
    ],
)
def test_undecodable_bytes_raise_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_bytes(data)
    assert reason in str(err.value)


def test_decode_file_reads_and_turns_os_errors_into_decode_errors(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_encode(_noise(3, 2), "PNG"))
    assert decode_file(tmp_path / "a.png").size == (3, 2)
    with pytest.raises(DecodeError, match=r"not a regular file \(a folder\)"):
        decode_file(tmp_path)
    os.mkfifo(tmp_path / "pipe.png")  # never opened: a FIFO would block the reader
    with pytest.raises(DecodeError, match=r"not a regular file \(a FIFO\)"):
        decode_file(tmp_path / "pipe.png")
    with pytest.raises(DecodeError, match="cannot read: No such file"):
        decode_file(tmp_path / "gone.png")


@pytest.mark.parametrize(
    ("shape", "moved"),
    [((5, 6), False), ((5, 6, 1), False), ((5, 6, 3), False), ((3, 5, 6), True), ((1, 5, 6), True)],
)
def test_arrays_of_every_layout_become_rgb(shape: tuple[int, ...], moved: bool) -> None:
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = array_to_image(arr)
    assert out.mode == "RGB" and out.size == (6, 5)  # (width, height)
    hwc = np.moveaxis(arr, 0, -1) if moved else arr
    hwc = hwc if hwc.ndim == 3 else hwc[..., None]
    expected = np.broadcast_to(hwc, (5, 6, 3)) if hwc.shape[-1] == 1 else hwc
    assert np.array_equal(np.asarray(out), expected)


def test_one_array_is_read_as_a_dataset_of_that_one_image() -> None:
    unit = np.array([[0.0, 0.5], [1.0, 0.25]])  # floats in [0, 1]: times 255
    assert np.asarray(array_to_image(unit))[..., 0].tolist() == [[0, 128], [255, 64]]
    wide = np.array([[0.0, 2.0], [255.0, 100.4]])  # floats up to 255: as is, rounded
    assert np.asarray(array_to_image(wide))[..., 0].tolist() == [[0, 2], [255, 100]]
    with pytest.raises(DecodeError, match=r"negative values \(minimum -5\)"):
        array_to_image(np.array([[-5.0, 2.0], [300.0, 100.4]]))  # was clipped to black
    rgba = np.zeros((1, 1, 4), np.uint8)  # transparent: white
    assert np.asarray(array_to_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_an_array_of_the_wrong_rank_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"2 or 3 dimensions, got shape \(2, 2, 2, 2\)"):
        array_to_image(np.zeros((2, 2, 2, 2), np.float32))
