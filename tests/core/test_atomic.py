"""The one atomic-write helper: old or new file, never half of one; normal permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featurestore import atomic


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_an_error_while_writing_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "head.joblib"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.joblib"]


def test_the_store_can_name_its_own_temporary(tmp_path: Path) -> None:
    target = tmp_path / "s.h5"
    with atomic.atomic_path(target, tmp_name=".tmp-host-1-ab.h5") as tmp:
        assert tmp == tmp_path / ".tmp-host-1-ab.h5"
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_files_get_the_mode_open_would_give_not_0600(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic.write_text(tmp_path / f"r{umask}.csv", "a,b\n")
        assert atomic.default_mode() == 0o666 & ~umask
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
