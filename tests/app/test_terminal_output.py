"""File names and reasons reach the terminal escaped: an escape sequence, a carriage return, a
right-to-left override or a byte that is not UTF-8 in a file name is printed visibly, never
acted on (extract's skipped list, errors, ls)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from featurestore.cli import main as cli
from featurestore.cli.terminal import TerminalText, shown

CONTROL = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u202e", "\u2066", "\ufeff"]


@pytest.mark.parametrize(
    ("raw", "visible"),
    [
        ("plain/name.jpg", "plain/name.jpg"),
        ("été/日本.png", "été/日本.png"),  # printable text stays as it is
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("title\x1b]0;x\x07", "title\\x1b]0;x\\x07"),
        ("line\nbreak\r\t", "line\\nbreak\\r\\t"),
        ("gpj.\u202eexe", "gpj.\\u202eexe"),
        (os.fsdecode(b"latin1-\xe9.png"), "latin1-\\xe9.png"),
        ("back\\slash", "back\\\\slash"),  # escaped too, so the output is unambiguous
    ],
)
def test_shown_escapes_what_could_drive_a_terminal(raw: str, visible: str) -> None:
    assert shown(raw) == visible


def test_no_control_character_survives() -> None:
    text = shown("".join(CONTROL))
    assert text.isprintable() and text.isascii()


def test_terminal_text_escapes_each_line_and_keeps_the_breaks() -> None:
    class Sink:
        def __init__(self) -> None:
            self.text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    sink = Sink()
    TerminalText(sink).write("a,b\x1b[1m\r\nc,d\r\n")  # type: ignore[arg-type]
    assert sink.text == "a,b\\x1b[1m\nc,d\n"


def test_extract_lists_a_skipped_file_escaped(tmp_path: Path, make_images, tiny_cli_args) -> None:
    make_images(tmp_path / "imgs", n=4)
    (tmp_path / "imgs" / "cat" / "x\x1b[2J\r.png").write_bytes(b"broken")
    argv = ["extract", str(tmp_path / "imgs"), *tiny_cli_args, "--workers", "0"]
    done = CliRunner().invoke(cli, [*argv, "--cache-dir", str(tmp_path / "c")])
    assert done.exit_code == 3, done.output
    assert "\x1b" not in done.output and "\r" not in done.stdout  # (stderr: progress bar)
    assert "x\\x1b[2J\\r.png: " in done.stdout


def test_an_error_naming_a_file_is_escaped(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["extract", str(tmp_path / "no\x1b[31mpe"), "-b", "resnet18"])
    assert done.exit_code == 1
    assert "\x1b" not in done.stderr and "no\\x1b[31mpe" in done.stderr
    assert done.stderr.count("\n") == 1


def test_ls_prints_the_cache_root_escaped(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["ls", "--cache-dir", str(tmp_path / "c\x1b[31m")])
    assert done.exit_code == 0
    assert "\x1b" not in done.stdout and "c\\x1b[31m" in done.stdout
