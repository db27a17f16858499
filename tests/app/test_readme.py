"""The README's examples run as written.

Every fenced ``bash`` or ``python`` block of the README is preceded by a marker:

* ``<!-- example: run -->``: run here, in README order, every command of the block in one
  working folder (beside a ``shared`` link to the real datasets, as a checkout sits beside
  ``../shared``) with one fresh cache; a command must exit 0, or the status its comment names
  (``# exit 1: ...``). The install command of the quick start (``python3 -m venv ...``) is not
  run: this environment is that install (``.ci/run`` makes it the same way).
* ``<!-- example: run-slow -->``: the same, with real weights on the real datasets (minutes on
  two cores); run with ``FEATURESTORE_TEST_README_ALL=1``.
* ``<!-- example: illustrative -->``: placeholder paths (``imgs/``, ``path/to/images``, a
  cluster address); never run.

An unmarked block fails the test, so a new example cannot silently go untested.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, SHARED

README = REPO / "README.md"
MARKER = re.compile(r"<!-- example: (run|run-slow|illustrative) -->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
EXIT = re.compile(r"#\s*exit (\d+)")
INSTALL = "python3 -m venv"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Example:
    line: int
    kind: str
    language: str
    text: str


def examples() -> list[Example]:
    text = README.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) not in ("bash", "python"):
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        line = text.count("\n", 0, m.start()) + 1
        found.append(Example(line, marker.group(1) if marker else "", m.group(1), m.group(2)))
    return found


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    return [c for c in joined.splitlines() if c.strip() and not c.lstrip().startswith("#")]


def expected_status(command: str) -> int:
    m = EXIT.search(command)
    return int(m.group(1)) if m else 0


def test_every_example_is_marked() -> None:
    unmarked = [e.line for e in examples() if not e.kind]
    assert not unmarked, f"README blocks without an example marker at lines {unmarked}"
    kinds = {e.kind for e in examples()}
    assert {"run", "illustrative"} <= kinds


def test_commands_are_split_as_a_shell_would_see_them() -> None:
    block = 'a --x 1 \\\n    --y 2   # exit 1: why\n# a comment\n\nb "c d"\n'
    assert commands(block) == ["a --x 1 --y 2   # exit 1: why", 'b "c d"']
    assert [expected_status(c) for c in commands(block)] == [1, 0]


def _run_block(example: Example, cwd: Path, env: dict[str, str]) -> None:
    if example.language == "python":
        r = subprocess.run(
            [sys.executable, "-c", example.text], cwd=cwd, env=env, capture_output=True
        )
        assert r.returncode == 0, f"README line {example.line}: {r.stderr.decode()[-2000:]}"
        return
    for command in commands(example.text):
        if command.startswith(INSTALL):
            continue
        shell = command.replace(".venv/bin/", f"{shlex.quote(str(BIN))}/")
        r = subprocess.run(
            ["bash", "-o", "pipefail", "-c", shell],
            cwd=cwd,
            env=env,
            capture_output=True,
            timeout=900,
        )
        # `| head` closes the pipe early: the writer then ends quietly with 141 (SIGPIPE)
        status = 0 if r.returncode == 141 and "| head" in command else r.returncode
        assert status == expected_status(command), (
            f"README line {example.line}: `{command}` exited {r.returncode}\n"
            f"{r.stderr.decode()[-2000:]}"
        )


def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    slow = os.environ.get("FEATURESTORE_TEST_README_ALL") == "1"
    chosen = [e for e in examples() if e.kind == "run" or (slow and e.kind == "run-slow")]
    if any("../shared" in e.text for e in chosen) and not SHARED.is_dir():
        pytest.skip(f"the README's real-data examples need {SHARED}")
    work = tmp_path / "checkout"
    work.mkdir()
    if SHARED.is_dir():
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "datasets").symlink_to(SHARED)
    env = {
        **os.environ,
        "FEATURESTORE_CACHE": str(tmp_path / "cache"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for example in chosen:
        _run_block(example, work, env)
