"""A file outside a source that must never be opened: a FIFO watched by another process.

A reader that opens a FIFO blocks until a writer opens it too. The watcher, a small separate
process (a thread would wait on the GIL while h5py holds it inside HDF5's open), tries every
millisecond to open the FIFO for writing without blocking; that succeeds only while a reader
has it open, so each success proves someone opened the sentinel. It then closes its end at
once: the reader sees an empty file and goes on (it never hangs the test).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

_WATCH = r"""
import errno, os, sys, time
fifo, marks = sys.argv[1], sys.argv[2]
open(marks, "wb").close()
while True:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no reader has it open
            raise
        time.sleep(0.001)
        continue
    with open(marks, "ab") as fh:
        fh.write(b".")
    os.close(fd)
"""


class FifoSentinel:
    """``with FifoSentinel(path) as s: ...``, then ``s.opened``: how many times a reader
    opened ``path`` (a FIFO made here) while the block ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = 0
        self._marks = path.with_name(path.name + ".opened")
        self._watcher: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FifoSentinel:
        import os

        os.mkfifo(self.path)
        self._watcher = subprocess.Popen([sys.executable, "-c", _WATCH, self.path, self._marks])
        deadline = time.monotonic() + 30
        while not self._marks.exists():  # the watcher is running
            if self._watcher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the FIFO watcher did not start")
            time.sleep(0.005)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._watcher is not None
        time.sleep(0.01)  # a reader let go just now is counted before the watcher stops
        self._watcher.terminate()
        self._watcher.wait(timeout=10)
        self.opened = self.count()

    def count(self) -> int:
        """How many times a reader has opened the sentinel so far (a reader that opened it has
        been counted by the time its open returned)."""
        return self._marks.stat().st_size
