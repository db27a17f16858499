"""An HDF5 source reads only its own file: external raw storage, external links and virtual
datasets mapping other files are refused before a byte is read (a watched FIFO outside the
source is never opened), soft links that dangle or loop are reported, never a crash."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from fifo_sentinel import FifoSentinel

from featurestore.errors import DecodeError
from featurestore.sources import SourceError, open_source
from featurestore.sources.arrays import ArrayLoader

MAX_LINK_HOPS = 16  # soft links followed to reach one object


def _external_storage(path: Path, target: Path, n: int = 4) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", (n, 4, 4, 3), "u1", external=[(str(target), 0, n * 48)])
        f["y"] = np.arange(n) % 2
    return path


def test_external_raw_storage_is_refused_without_opening_the_file(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with FifoSentinel(outside / "secret") as sentinel:
        src = _external_storage(tmp_path / "x.h5", sentinel.path)
        with pytest.raises(SourceError) as err:
            open_source(src)
    assert sentinel.opened == 0
    assert str(err.value) == (
        f"{src}: no images found; 1 file(s) skipped, e.g. {src}::x: raw data stored outside "
        f"the file (external storage in '{sentinel.path}'): a source reads only its own file"
    )


def test_external_storage_beside_a_good_dataset_skips_only_that_dataset(tmp_path: Path) -> None:
    with FifoSentinel(tmp_path / "fifo") as sentinel:
        path = _external_storage(tmp_path / "x.h5", sentinel.path)
        with h5py.File(path, "a") as f:
            f["good_x"] = np.zeros((2, 4, 4), np.uint8)
        src = open_source(path)
    assert sentinel.opened == 0
    assert [r.path for r in src.records] == [f"{path}::good_x[0]", f"{path}::good_x[1]"]
    assert [(s.path, s.reason.split(" (")[0]) for s in src.skipped] == [
        (f"{path}::x", "raw data stored outside the file")
    ]
    with pytest.raises(SourceError, match=r"::x: raw data stored outside the file"):
        open_source(path, images_key="x")  # named: an error, not a skip


def test_the_reported_passwd_reproduction_exits_1_with_one_line(
    tmp_path: Path, run_cli: Any, tiny_cli_args: list[str]
) -> None:
    n = os.path.getsize("/etc/passwd") // 48
    assert n > 0
    src = _external_storage(tmp_path / "x.h5", Path("/etc/passwd"), n)
    done = run_cli("extract", src, *tiny_cli_args, "--cache-dir", tmp_path / "c", timeout=60)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "external storage in '/etc/passwd'" in lines[0] and "Traceback" not in lines[0]
    assert not list((tmp_path / "c").glob("*.h5"))


def test_external_links_are_not_followed(tmp_path: Path) -> None:
    with FifoSentinel(tmp_path / "other.h5") as sentinel:
        path = tmp_path / "links.h5"
        with h5py.File(path, "w") as f:
            f["ext_x"] = h5py.ExternalLink(str(sentinel.path), "/x")
            f["x"] = np.zeros((2, 4, 4), np.uint8)
            f["y"] = h5py.ExternalLink(str(sentinel.path), "/y")  # its label guess
        src = open_source(path)
        with pytest.raises(SourceError, match=r"links\.h5::ext_x: external link to .*other\.h5"):
            open_source(path, images_key="ext_x")
        with pytest.raises(SourceError, match=r"::y: external link to .* \(not followed"):
            open_source(path, images_key="x", labels_key="y")
    assert sentinel.opened == 0
    assert [r.label for r in src.records] == [None, None]
    assert src.warnings[:2] == [
        f"{path}::ext_x: external link to {sentinel.path}:/x (not followed: a source reads "
        "only its own file) (ignored)",
        f"{path}::y: external link to {sentinel.path}:/y (not followed: a source reads only "
        "its own file) (ignored)",
    ]


def test_a_link_inside_a_group_to_another_file_is_not_followed(tmp_path: Path) -> None:
    with FifoSentinel(tmp_path / "other.h5") as sentinel:
        path = tmp_path / "deep.h5"
        with h5py.File(path, "w") as f:
            f.create_group("g")["ext"] = h5py.ExternalLink(str(sentinel.path), "/x")
            f["x"] = h5py.SoftLink("/g/ext")  # a soft link whose path crosses it
        with pytest.raises(SourceError, match=r"deep\.h5: no image arrays found.*external"):
            open_source(path)
        with pytest.raises(SourceError, match=r"deep\.h5::x: external link"):
            open_source(path, images_key="x")
        with pytest.raises(SourceError, match=r"deep\.h5::g/ext: external link"):
            open_source(path, images_key="g/ext")
    assert sentinel.opened == 0


def _vds(path: Path, source_file: str, source_name: str, shape: tuple[int, ...]) -> None:
    layout = h5py.VirtualLayout(shape=shape, dtype="u1")
    layout[:] = h5py.VirtualSource(source_file, source_name, shape=shape)
    with h5py.File(path, "a") as f:
        f.create_virtual_dataset("v_x", layout)


def test_a_virtual_dataset_mapping_another_file_is_refused(tmp_path: Path) -> None:
    with FifoSentinel(tmp_path / "other.h5") as sentinel:
        path = tmp_path / "vds.h5"
        _vds(path, str(sentinel.path), "x", (2, 4, 4))
        with pytest.raises(SourceError, match=r"vds\.h5::v_x: virtual dataset mapping .*other"):
            open_source(path, images_key="v_x")
        with pytest.raises(SourceError, match="no images found"):
            open_source(path)
    assert sentinel.opened == 0


def test_a_virtual_dataset_of_its_own_file_is_read_unless_its_source_is_outside(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vds.h5"
    data = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    with h5py.File(path, "w") as f:
        f["plain"] = data
    _vds(path, ".", "plain", (2, 4, 4))
    src = open_source(path, images_key="v_x")
    assert [np.asarray(src.loader.load(r))[..., 0].tolist() for r in src.records] == [
        d.tolist() for d in data
    ]
    with FifoSentinel(tmp_path / "fifo") as sentinel:
        inner = tmp_path / "inner.h5"
        with h5py.File(inner, "w") as f:
            f.create_dataset("ext", (2, 4, 4), "u1", external=[(str(sentinel.path), 0, 32)])
        _vds(inner, ".", "ext", (2, 4, 4))
        with pytest.raises(SourceError, match=r"::v_x: raw data stored outside the file"):
            open_source(inner, images_key="v_x")
    assert sentinel.opened == 0


def test_soft_links_that_dangle_or_loop_are_reported_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "soft.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((2, 4, 4), np.uint8)
        f["also_x"] = h5py.SoftLink("/x")  # the same dataset: listed once
        f["gone"] = h5py.SoftLink("/nowhere")
        f["a"] = h5py.SoftLink("/b")
        f["b"] = h5py.SoftLink("/a")
        f["self"] = h5py.SoftLink("self")  # relative, to itself
    src = open_source(path)
    assert [r.path for r in src.records] == [f"{path}::x[0]", f"{path}::x[1]"]
    assert src.warnings == [
        f"{path}::a: soft links go round in a circle (over {MAX_LINK_HOPS}) (ignored)",
        f"{path}::b: soft links go round in a circle (over {MAX_LINK_HOPS}) (ignored)",
        f"{path}::gone: no dataset 'nowhere'; has ['a', 'also_x', 'b', 'gone', 'self', 'x'] "
        "(ignored)",
        f"{path}::self: soft links go round in a circle (over {MAX_LINK_HOPS}) (ignored)",
        f"{path}::x: no labels dataset found",
    ]
    for key, message in [("a", "circle"), ("gone", "no dataset 'nowhere'"), ("self", "circle")]:
        with pytest.raises(SourceError, match=message):
            open_source(path, images_key=key)
    via_link = open_source(path, images_key="also_x")
    assert [r.key for r in via_link.records] == [r.key for r in src.records]


def test_the_loader_checks_the_dataset_again_before_reading(tmp_path: Path) -> None:
    """A file swapped after the scan (same name, now external storage) is refused by the
    loader too, without opening the outside file."""
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 4, 4, 3), np.uint8)
    (record,) = open_source(path).records[:1]
    with FifoSentinel(tmp_path / "fifo") as sentinel:
        path.unlink()
        _external_storage(path, sentinel.path)
        with pytest.raises(DecodeError, match="raw data stored outside the file"):
            ArrayLoader().load(record.ref, draft_size=None)
    assert sentinel.opened == 0


def test_the_sentinel_notices_a_reader_even_inside_hdf5(tmp_path: Path) -> None:
    """The check above can fail: reading the dataset with plain h5py opens the sentinel."""
    with FifoSentinel(tmp_path / "fifo") as sentinel:
        with open(sentinel.path, "rb") as fh:
            assert fh.read() == b""
        path = _external_storage(tmp_path / "x.h5", sentinel.path)
        with h5py.File(path, "r") as f:
            try:
                f["x"][...]
            except OSError:
                pass  # the watcher closed its end: too few bytes
    assert sentinel.opened >= 2  # once by open(), then by HDF5 (which may retry)


def test_a_virtual_dataset_that_does_not_fit_its_source_is_refused(tmp_path: Path) -> None:
    """Found by the generated test: HDF5 reads slices of such a mapping as shifted values."""
    path = tmp_path / "vds.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _vds(path, ".", "images", (2, 4, 4))
    with pytest.raises(SourceError, match=r"mapping 24 values of 'images' onto 32 places"):
        open_source(path, images_key="v_x")
    with h5py.File(path, "a") as f:  # a mapping that leaves half of the dataset unmapped
        layout = h5py.VirtualLayout(shape=(4, 3, 4), dtype="u1")
        layout[0:2] = h5py.VirtualSource(".", "images", shape=(2, 3, 4))
        f.create_virtual_dataset("half_x", layout, fillvalue=0)
    with pytest.raises(SourceError, match=r"half_x\[0:4\]: never written"):
        open_source(path, images_key="half_x")
