"""Text for a terminal: file names and reasons printed so that they cannot drive it.

A file name may hold any byte but ``/`` and NUL: an escape sequence (``\\x1b[2J`` clears the
screen, others set the window title or rewrite what was printed before), a carriage return, a
right-to-left override that shows ``gpj.exe`` as ``exe.jpg``, or bytes that are not UTF-8.
:func:`shown` writes every such character as a visible escape (``\\x1b``, ``\\r``, ``\\u202e``,
an undecodable byte as ``\\xff``) and a backslash as ``\\\\``, so what is printed is unambiguous
and inert. Every path and reason the command line prints goes through it.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["TerminalText", "data_stdout", "shown"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: object) -> str:
    """``text`` (a path, a reason, any object's ``str``) with every character that is not
    printable, and the backslash, written as a visible escape."""
    s = str(text)
    if s.isprintable() and "\\" not in s:
        return s  # the common case, in one pass
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape(ch) for ch in s)


class TerminalText:
    """A text stream that escapes what is written to it line by line (see :func:`shown`),
    keeping the line breaks: data such as a CSV, shown on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        lines = text.split("\n")
        self.stream.write("\n".join(shown(line.removesuffix("\r")) for line in lines))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def data_stdout() -> Iterator[Any]:
    """stdout for data (a CSV): on a terminal, escaped line by line (:class:`TerminalText`);
    to a pipe or file, UTF-8 that writes a file name's undecodable bytes back as they were."""
    if sys.stdout.isatty():
        yield TerminalText(sys.stdout)
        sys.stdout.flush()
        return
    sys.stdout.flush()
    stream = io.TextIOWrapper(
        sys.stdout.buffer, encoding="utf-8", errors="surrogateescape", newline=""
    )
    try:
        yield stream
        stream.flush()
    finally:
        stream.detach()  # sys.stdout keeps its buffer
