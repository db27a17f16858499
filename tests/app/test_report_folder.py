"""The report folder: checked before any work, written all or nothing, normal permissions."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification

from classifiers.sweep import FeatureSet, run_sweep
from featurestore.errors import OutputError
from featurestore.report import folder, writer
from featurestore.report.folder import check_output, staged
from featurestore.report.writer import write_report


@pytest.fixture(scope="module")
def results():
    X, y = make_classification(n_samples=90, n_features=6, random_state=0)
    test = np.arange(90) % 3 == 0
    fs = FeatureSet("set", X[~test], y[~test], X[test], y[test], class_names=["a", "b"])
    return run_sweep([fs], heads=["gaussian_nb", "logreg"], cv=3, use_grid=False)


def _write(results, out: Path, title: str = "t") -> dict[str, Path]:
    return write_report(results, out, title=title, provenance={})


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_new_report_replaces_the_previous_one_whole(results, tmp_path: Path) -> None:
    out = tmp_path / "report"
    _write(results, out)
    (out / "stale.png").write_bytes(b"from an older run")
    before = (out / "leaderboard.json").read_bytes()
    paths = _write(results, out, title="second run")
    assert not (out / "stale.png").exists()  # nothing of the old run mixes into the new one
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    # the new run's files, not the old ones (the title differs: the "created" time has a
    # resolution of one second, and two runs can fall in the same second)
    assert (out / "leaderboard.json").read_bytes() != before
    assert b"second run" in (out / "leaderboard.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no leftovers beside it


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_failed_write_leaves_the_previous_report_intact(
    results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    out = tmp_path / "report"
    _write(results, out)
    before = _tree(out)
    if not exchange:
        monkeypatch.setattr(folder, "_exchange", lambda a, b: False)
    calls = []
    real = writer.save_png

    def full_disk(fig, path):
        calls.append(path.name)
        if len(calls) == 2:  # the second plot finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(fig, path)

    monkeypatch.setattr(writer, "save_png", full_disk)
    with pytest.raises(OutputError, match=r"No space left on device.*previous report"):
        _write(results, out)
    assert len(calls) == 2
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_without_an_atomic_exchange_the_swap_still_replaces(
    results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    _write(results, out)
    (out / "stale.txt").write_text("old")
    monkeypatch.setattr(folder, "_exchange", lambda a, b: False)
    _write(results, out)
    assert not (out / "stale.txt").exists() and (out / "leaderboard.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_the_exchange_swaps_two_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not folder._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not offered here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_a_folder_that_is_not_a_report_is_refused_untouched(results, tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match=r"not a featurestore report.*holiday\.jpg"):
        _write(results, out)
    assert _tree(out) == {"holiday.jpg": b"precious"}
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output(file_out)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output(empty)  # an empty folder is fine
    check_output(tmp_path / "new" / "deeper")  # so is a new one (its parents are made)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_reports_and_heads_have_normal_permissions(results, tmp_path: Path, umask: int) -> None:
    from featurestore.report.writer import HeadToSave

    old = os.umask(umask)
    try:
        paths = write_report(
            results,
            tmp_path / "report",
            title="t",
            provenance={},
            head=HeadToSave(results[0].estimator, {"feature_set": "set"}),
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o777 & ~umask
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert {"head", "sidecar"} <= set(paths)


def test_an_error_inside_the_staged_block_removes_the_partial_folder(tmp_path: Path) -> None:
    out = tmp_path / "report"
    with pytest.raises(RuntimeError, match="bug"), staged(out) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("bug")
    assert list(tmp_path.iterdir()) == []
