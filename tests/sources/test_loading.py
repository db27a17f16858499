"""ImageLoader: every record kind has its own registered loader; the loader pickles without
its open handles, and a fresh process (a DataLoader worker) reopens them."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from featurestore.errors import DecodeError
from featurestore.sources import ImageLoader, Record, open_source, register_loader
from featurestore.sources.loading import registered_kinds

_CHILD = """
import pickle, sys
import numpy as np
loader, records = pickle.loads(sys.stdin.buffer.read())
print([int(np.asarray(loader.load(r), dtype=np.int64).sum()) for r in records])
"""


def test_each_kind_registers_its_loader() -> None:
    assert registered_kinds() == ["digits", "file", "h5"]


def test_an_unknown_record_kind_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="unknown record kind 'tape'"):
        ImageLoader().load(Record("k", "p", None, None, ("tape", 0)))


def test_a_kind_registers_once() -> None:
    with pytest.raises(ValueError, match="'file' is already registered"):
        register_loader("file")(object)
    assert registered_kinds() == ["digits", "file", "h5"]


def _sources(tmp_path: Path, make_images: Any) -> list[Record]:
    make_images(tmp_path / "imgs", 2, ("a",))
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = rng.integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    records = open_source(tmp_path / "imgs").records + open_source(tmp_path / "x.h5").records
    return records + open_source("builtin:digits").records[:2]


def test_pickled_loader_leaves_handles_behind_and_a_new_process_reopens_them(
    tmp_path: Path, make_images: Any, cli_env: Any
) -> None:
    records = _sources(tmp_path, make_images)
    loader = ImageLoader()
    here = [int(np.asarray(loader.load(r), dtype=np.int64).sum()) for r in records]
    assert sorted(loader._loaders) == ["digits", "file", "h5"]  # built on first use
    copy = pickle.loads(pickle.dumps(loader))
    assert copy._loaders == {}  # no open HDF5 file, no digits array travels
    assert len(pickle.dumps(loader)) < 200
    assert [int(np.asarray(copy.load(r), dtype=np.int64).sum()) for r in records] == here
    child = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=pickle.dumps((loader, records)),
        env=cli_env(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr.decode(errors="replace")
    assert json.loads(child.stdout) == here
