"""Raw pixels as features (the "no transfer" baseline): every record resized to size x size
RGB and scaled to [0, 1], undecodable records skipped with their reason, and the files the
loader opened closed again."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from featurestore.pixels import pixel_rows
from featurestore.sources import Record, open_source


def test_rows_are_the_resized_pixels_over_255_and_bad_records_are_skipped(
    tmp_path: Path,
) -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x[1] = 200  # a flat image stays flat after resizing
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["x"] = x
    src = open_source(path)
    gone = Record("k", "gone.png", None, None, ("file", str(tmp_path / "no")))
    rows, ok, skipped = pixel_rows([*src.records, gone], src.loader, size=4)
    assert rows.shape == (4, 4 * 4 * 3) and rows.dtype == np.float32
    assert ok.tolist() == [True, True, True, False]
    assert np.allclose(rows[1], 200 / 255)
    assert 0.0 <= rows.min() and rows.max() <= 1.0 and not rows[3].any()
    assert [(s.path, s.reason.split(":")[0]) for s in skipped] == [("gone.png", "cannot read")]


def test_the_files_the_loader_opened_are_closed_after(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
    src = open_source(path)
    pixel_rows(src.records, src.loader, size=2)
    with h5py.File(path, "w") as f:  # HDF5 refuses this while the loader holds the file
        f["x"] = np.ones((2, 4, 4), np.uint8)


def test_threads_give_the_rows_and_skips_of_one_thread(tmp_path: Path) -> None:
    """Several threads' chunks land in the records' order, skips included."""
    rng = np.random.default_rng(1)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["x"] = rng.integers(0, 256, (300, 9, 7, 3), dtype=np.uint8)
    records = list(open_source(path).records)
    for i in (0, 70, 199, 299):  # in the first, middle and last chunks
        missing = str(tmp_path / f"no{i}.png")
        records.insert(i, Record(f"k{i}", f"no{i}.png", None, None, ("file", missing)))
    one = pixel_rows(records, open_source(path).loader, size=5, threads=1)
    four = pixel_rows(records, open_source(path).loader, size=5, threads=4)
    np.testing.assert_array_equal(one[0], four[0])
    np.testing.assert_array_equal(one[1], four[1])
    assert [s.path for s in four[2]] == [s.path for s in one[2]]
    assert [s.path for s in four[2]] == ["no0.png", "no70.png", "no199.png", "no299.png"]
    assert int(four[1].sum()) == 300 and four[0][four[1]].any(axis=1).all()
