"""Raw pixels as features (the "no transfer" baseline): every record resized to size x size
RGB and scaled to [0, 1], undecodable records skipped with their reason, and the files the
loader opened closed again."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

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


def test_threads_open_each_file_once_and_close_them_all(tmp_path: Path, monkeypatch) -> None:
    """Several threads reaching a file no thread has opened yet open it once (a second handle
    would stay open after ``close``)."""
    from featurestore.sources import arrays

    opened: list[str] = []
    real_open = arrays.open_file

    def slow_open(path):
        opened.append(str(path))
        time.sleep(0.05)  # wide enough for every thread to arrive
        return real_open(path)

    monkeypatch.setattr(arrays, "open_file", slow_open)
    for k in range(3):
        with h5py.File(tmp_path / f"x{k}.h5", "w") as f:
            f["x"] = np.full((70, 4, 4, 3), k, dtype=np.uint8)
    sources = [open_source(tmp_path / f"x{k}.h5") for k in range(3)]
    records = [r for src in sources for r in src.records]
    opened.clear()  # opening the sources read them too
    # Interleaved, so every thread's first chunk reaches every file at once.
    records = [records[i] for k in range(70) for i in (k, 70 + k, 140 + k)]
    _, ok, _ = pixel_rows(records, sources[0].loader, size=2, threads=4)
    assert ok.all() and sorted(opened) == sorted({str(tmp_path / f"x{k}.h5") for k in range(3)})
    for k in range(3):  # every handle is closed: HDF5 lets each file be rewritten
        with h5py.File(tmp_path / f"x{k}.h5", "w") as f:
            f["x"] = np.zeros((1, 4, 4, 3), np.uint8)


def test_an_error_stops_the_chunks_not_yet_started() -> None:
    """A failure (or Ctrl-C) in one chunk is raised at once: the chunks still queued are
    dropped, not decoded first."""

    class Failing:
        loads = 0

        def load(self, record):
            Failing.loads += 1
            if record == 100:
                raise KeyboardInterrupt
            time.sleep(0.002)  # a decode: the rest would take the threads 2.6 s
            return Image.new("RGB", (4, 4))

        def close(self) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        pixel_rows(list(range(64 * 40)), Failing(), size=2, threads=2)
    # Of 2,560: the chunks running when it failed, and any started before this thread saw it
    # (generous, for a loaded machine).
    assert Failing.loads < 2560 // 2
