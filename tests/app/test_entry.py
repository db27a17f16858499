"""The console entry point's prompt exit: it skips only the modules' teardown, never output,
exit codes, ``atexit`` handlers, waiting threads or HDF5 data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.cli.entry import _status


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_leave_keeps_output_code_handlers_threads_and_hdf5_data(tmp_path: Path, cli_env) -> None:
    store = tmp_path / "open.h5"
    late = tmp_path / "late.txt"
    result = _python(
        f"""
        import atexit, sys, threading, time
        import h5py, numpy as np
        from featurestore.cli.entry import leave

        f = h5py.File({str(store)!r}, "w")  # left open, as a careless command might
        f["rows"] = np.arange(1000.0)
        atexit.register(lambda: print("atexit handler ran", file=sys.stderr))

        def slow():
            time.sleep(0.5)
            open({str(late)!r}, "w").write("done")

        threading.Thread(target=slow).start()
        sys.stdout.write("x" * 200_000)  # more than a pipe's buffer, not yet flushed
        leave(3)
        """,
        cli_env(),
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "x" * 200_000
    assert "atexit handler ran" in result.stderr
    assert late.read_text() == "done"  # the non-daemon thread was waited for
    with h5py.File(store, "r") as f:
        np.testing.assert_array_equal(f["rows"][:], np.arange(1000.0))


@pytest.mark.parametrize(
    ("code", "status", "printed"),
    [(None, 0, ""), (0, 0, ""), (2, 2, ""), (130, 130, ""), (-1, 255, ""), ("bad", 1, "bad")],
)
def test_exit_status_as_sys_exit_gives_it(code, status, printed, capsys) -> None:
    assert _status(code) == status
    assert capsys.readouterr().err.strip() == printed


def test_command_through_the_entry_point_keeps_its_code_and_output(run_cli, tmp_path) -> None:
    ok = run_cli("heads")
    assert ok.returncode == 0, ok.stderr
    assert b"linear_svm" in ok.stdout and ok.stdout.endswith(b"\n")
    bad = run_cli("ls", "--cache-dir", tmp_path / "missing" / "x", "--bogus")
    assert bad.returncode == 2
    assert b"No such option" in bad.stderr
