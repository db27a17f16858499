"""How array values become pixels: decided once per dataset from its dtype and the range of
all its values (never per image), stated when it depends on the data, refused when the values
are not pixels; NaN images are skipped with their dataset and index; the channels-first/last
reading is one per dataset. Keys follow the pixels, so cached rows never mix two readings."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from featurestore.keys import array_key
from featurestore.sources import SourceError, open_source


def _write(path: Path, **datasets: Any) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


def _pixels(src: Any) -> list[np.ndarray]:
    return [np.asarray(src.loader.load(r)) for r in src.records]


def test_uint16_is_scaled_by_the_datasets_maximum_not_saturated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4096, (3, 8, 8, 3)).astype(np.uint16)  # 12-bit data in uint16
    x[0, 0, 0, 0] = 4095
    path = _write(tmp_path / "u16.h5", x=x)
    src = open_source(path)
    got = np.stack(_pixels(src))
    assert np.array_equal(got, np.rint(x * (255.0 / 4095)).astype(np.uint8))
    assert (got == 255).mean() < 0.01  # was 99.7% saturated
    assert src.warnings == [
        f"{path}::x: uint16 values up to 4095 scaled by 255/4095 (the dataset's maximum)",
        f"{path}::x: no labels dataset found",
    ]


def test_integers_within_0_255_are_taken_as_is_whatever_their_dtype(tmp_path: Path) -> None:
    x = np.arange(2 * 4 * 4).reshape(2, 4, 4).astype(np.int64) * 8  # numpy's default ints
    src = open_source(_write(tmp_path / "i.h5", x=x))
    assert [p[..., 0].tolist() for p in _pixels(src)] == x.tolist()


def test_floats_are_scaled_once_for_the_whole_dataset(tmp_path: Path) -> None:
    dim = np.full((4, 4), 0.9)
    bright = np.full((4, 4), 200.0)
    mixed = open_source(_write(tmp_path / "mixed.h5", x=np.stack([dim, bright])))
    assert [int(p[0, 0, 0]) for p in _pixels(mixed)] == [1, 200]  # [0, 255] for both
    unit = open_source(_write(tmp_path / "unit.h5", x=np.stack([dim, dim / 2])))
    assert [int(p[0, 0, 0]) for p in _pixels(unit)] == [230, 115]  # [0, 1] times 255
    # the same stored image read two ways gives two keys: cached rows never mix them
    assert mixed.records[0].key != unit.records[0].key
    assert mixed.records[0].key == array_key(_pixels(mixed)[0][..., :1].reshape(4, 4))


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([-0.5, 0.5], r"negative values \(minimum -0\.5\)"),
        ([-3, 7], r"negative values \(minimum -3\)"),
        ([0.2, 1.5], r"float values up to 1\.5: above 1 but below 2"),
    ],
)
def test_values_that_are_not_pixels_are_refused_naming_the_dataset(
    tmp_path: Path, values: list[float], reason: str
) -> None:
    x = np.array(values).reshape(2, 1, 1) * np.ones((2, 3, 3))
    x = x.astype(np.int16) if isinstance(values[0], int) else x
    path = _write(tmp_path / "bad.h5", x=x)
    with pytest.raises(SourceError, match=rf"bad\.h5::x: {reason}"):
        open_source(path, images_key="x")
    with pytest.raises(SourceError, match=rf"skipped, e\.g\. .*bad\.h5::x: {reason}"):
        open_source(path)


def test_a_nan_image_is_skipped_with_its_dataset_and_index_without_numpy_warnings(
    tmp_path: Path,
) -> None:
    x = np.random.default_rng(0).random((4, 3, 3)).astype(np.float32)
    x[2, 1, 1] = np.nan
    x[3, 0, 0] = -np.inf
    path = _write(tmp_path / "nan.h5", x=x, y=np.arange(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src = open_source(path)
        pixels = _pixels(src)
    assert [r.path for r in src.records] == [f"{path}::x[0]", f"{path}::x[1]"]
    assert [(s.path, s.reason) for s in src.skipped] == [
        (f"{path}::x[2]", "NaN or infinite values: not an image"),
        (f"{path}::x[3]", "NaN or infinite values: not an image"),
    ]
    scale = 255.0  # the finite images are in [0, 1]
    assert np.array_equal(pixels[1][..., 0], np.rint(x[1].astype(np.float64) * scale))


def test_bool_images_are_black_and_white(tmp_path: Path) -> None:
    x = np.array([[[True, False], [False, True]]])
    src = open_source(_write(tmp_path / "b.h5", masks=x), images_key="masks")
    assert _pixels(src)[0][..., 0].tolist() == [[255, 0], [0, 255]]


def test_the_channel_axis_is_chosen_once_per_dataset_and_ambiguity_is_stated(
    tmp_path: Path,
) -> None:
    x = np.random.default_rng(1).integers(0, 256, (2, 3, 8, 4), dtype=np.uint8)
    path = _write(tmp_path / "amb.h5", x=x)
    src = open_source(path)
    assert [p.shape for p in _pixels(src)] == [(3, 8, 3)] * 2  # channels last: 3x8, RGBA
    notes = [w for w in src.warnings if "fits channels last" in w]
    assert notes == [
        f"{path}::x: image shape (3, 8, 4) fits channels last (3x8, 4 channels) and channels "
        "first (8x4, 3 channels): read channels last; set the dataset attribute "
        "INTERLACE_MODE='INTERLACE_PLANE' to read it channels first"
    ]
    assert [r.key for r in src.records] == [array_key(a) for a in x]  # uint8: stored bytes
    src.loader.close()
    with h5py.File(path, "a") as f:
        f["x"].attrs["INTERLACE_MODE"] = np.bytes_("INTERLACE_PLANE")
    planar = open_source(path)
    assert [p.tolist() for p in _pixels(planar)] == [np.moveaxis(a, 0, -1).tolist() for a in x]
    assert not [w for w in planar.warnings if "fits channels" in w]
    # read another way than its shape says: keyed by its pixels, apart from the first reading
    assert [r.key for r in planar.records] == [array_key(np.moveaxis(a, 0, -1)) for a in x]


def test_uint8_channels_first_keeps_the_key_of_its_stored_array(tmp_path: Path) -> None:
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 6, 5), dtype=np.uint8)
    src = open_source(_write(tmp_path / "chw.h5", x=x))
    assert [r.key for r in src.records] == [array_key(a) for a in x]
    assert [p.shape for p in _pixels(src)] == [(6, 5, 3)] * 2


def test_every_key_is_what_the_loader_gives(tmp_path: Path) -> None:
    """A non-uint8 image's key is the key of the 8-bit pixels the network sees."""
    rng = np.random.default_rng(3)
    path = _write(
        tmp_path / "many.h5",
        a_x=rng.integers(0, 1000, (3, 5, 4)).astype(np.uint16),
        b_x=rng.random((3, 5, 4, 3)).astype(np.float16),
        c_x=rng.integers(0, 256, (3, 5, 4, 1)).astype(np.int32),
    )
    src = open_source(path)
    assert len(src.records) == 9
    loaded = _pixels(src)
    src.loader.close()
    for record, pixels in zip(src.records, loaded, strict=True):
        fmt = record.ref[4]
        with h5py.File(path, "r") as f:
            stored = f[record.ref[2]][record.ref[3]]
        assert record.key == array_key(fmt.pixels(stored[None])[0])
        channels = fmt.pixels(stored[None])[0]
        gray = channels if channels.ndim == 2 else channels[..., 0]
        assert np.array_equal(pixels[..., 0], gray)
