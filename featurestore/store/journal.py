"""The store's files on disk and who may touch them: journal parts, temporary files, the lock.

Layout under the cache root, for one extractor fingerprint::

    <backbone>-<fingerprint[:16]>.h5          consolidated rows
    <backbone>-<fingerprint[:16]>.parts/      journal: one complete HDF5 file per written batch
    <backbone>-<fingerprint[:16]>.h5.lock     advisory lock (fcntl.flock) for compaction/reads
    <backbone>-<fingerprint[:16]>.h5.gate     lets a waiting compaction go before new readers

A batch is written to a temporary name inside ``.parts/`` (``.tmp-<host>-<pid>-<hex>.h5``),
fsynced and renamed into place, so a part file is either complete or absent. Temporary files
left by a killed writer (those and compaction's ``.<name>.h5.tmp-*``) are never read; the next
compaction deletes them once their writer is gone. Readers that cannot take the lock (a
read-only cache) retry when a file vanishes under them (:meth:`Journal.shared`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from featurestore.atomic import atomic_path
from featurestore.errors import StoreError
from featurestore.store.format import H5_ERRORS, write_rows

log = logging.getLogger(__package__)  # "featurestore.store", as before the package split

T = TypeVar("T")

HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
PART_TMP = re.compile(r"^\.tmp-(?P<host>[A-Za-z0-9_.]*)-(?P<pid>\d+)-[0-9a-f]+\.h5$")
STALE_TMP_SECONDS = 24 * 3600  # temp files of other hosts (shared cache): age limit
RETRIES = 5


class VanishedError(StoreError):
    """A file listed a moment ago is gone (compacted by another process while we read)."""


def store_name(backbone: str, fp: str) -> str:
    """File name of the consolidated store for ``backbone`` with fingerprint ``fp``."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", backbone)
    return f"{safe}-{fp[:16]}.h5"


def part_tmp_name(token: str) -> str:
    """Name of the temporary file a journal part is written to (this host, this process)."""
    return f".tmp-{HOST}-{os.getpid()}-{token}.h5"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def is_stale_part_tmp(path: Path) -> bool:
    """A journal temp file whose writer is gone (same host: its pid; else: older than a day)."""
    m = PART_TMP.match(path.name)
    if m and m["host"] == HOST:
        return not _pid_alive(int(m["pid"]))
    try:
        return time.time() - path.stat().st_mtime > STALE_TMP_SECONDS
    except OSError:
        return False


def write_error(folder: Path, exc: Exception) -> StoreError:
    """The error for a write into cache folder ``folder`` that failed with ``exc``."""
    full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)
    what = "the disk is full" if full else getattr(exc, "strerror", None) or str(exc)
    return StoreError(
        f"cannot write to the cache directory {folder}: {what}. Rows already "
        "written are kept; free space, fix permissions or choose another cache with "
        "--cache-dir / FEATURESTORE_CACHE, then run again to resume"
    )


class Journal:
    """The files of the store at ``path`` (a ``.h5`` file), its journal parts and its lock."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if self.path.suffix != ".h5":
            raise StoreError(f"a store path ends in .h5, got {self.path}")
        self.parts_dir = self.path.with_name(self.path.stem + ".parts")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.gate_path = self.path.with_name(self.path.name + ".gate")
        self._depth: dict[int, int] = {}  # shared-lock nesting per thread (see locked)

    # ------------------------------------------------------------------ files
    def layout_problem(self) -> str | None:
        """What stands where the store's folders belong, if anything: the cache directory (or
        the nearest of its ancestors that exists) is not a folder, or something else than a
        folder sits at the journal's place. None when the layout is sound (or yet to be made)."""
        folder = self.path.parent
        while not os.path.lexists(folder) and folder != folder.parent:
            folder = folder.parent
        if os.path.lexists(folder) and not folder.is_dir():
            where = "" if folder == self.path.parent else f" ({folder} is not a folder)"
            return (
                f"the cache directory {self.path.parent} cannot hold stores{where}: a file is "
                "where a folder belongs; choose another with --cache-dir / FEATURESTORE_CACHE"
            )
        if os.path.lexists(self.parts_dir) and not self.parts_dir.is_dir():
            return (
                f"{self.parts_dir} is not a folder, but the journal of {self.path.name} belongs "
                "there (featurestore never writes a file of that name): remove it"
            )
        return None

    def part_paths(self) -> list[Path]:
        """The journal parts, oldest first."""
        if not self.parts_dir.is_dir():
            return []
        return sorted(self.parts_dir.glob("part-*.h5"))

    def sources(self) -> list[Path]:
        """Every file holding rows: the consolidated file (if any), then the parts in order."""
        return ([self.path] if self.path.exists() else []) + self.part_paths()

    def main_temps(self) -> list[Path]:
        return sorted(self.path.parent.glob(f".{self.path.name}.tmp-*"))

    def part_temps(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(self.parts_dir.glob(".tmp-*"))

    def compaction_tmp_name(self) -> str:
        """Name of the temporary file a compaction writes the new consolidated file to."""
        return f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"

    def remove_stale_temps(self) -> int:
        """Delete temp files of killed writers. Call only under the exclusive lock."""
        # A consolidated temp file is only ever written under the exclusive lock we hold, so
        # any that exists belongs to a dead compaction; a part temp file is checked per writer.
        stale = self.main_temps() + [t for t in self.part_temps() if is_stale_part_tmp(t)]
        removed = 0
        for tmp in stale:
            try:
                tmp.unlink()
            except OSError:  # gone already, or a read-only cache: nothing to do
                continue
            removed += 1
            log.info("removed %s, left by an interrupted writer", tmp)
        return removed

    def append(
        self, keys: np.ndarray, rows: np.ndarray, attrs: Callable[[], dict[str, Any]]
    ) -> Path:
        """Write ``keys``/``rows`` (checked by the caller) as a new journal part with the
        attributes ``attrs()``: a temporary file, fsynced and renamed. Returns its path."""
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.path.parent, exc) from exc
        token = uuid.uuid4().hex[:12]
        final = self.parts_dir / f"part-{time.time_ns():020d}-{os.getpid()}-{token}.h5"
        try:
            with atomic_path(final, tmp_name=part_tmp_name(token), tmp_synced=True) as tmp:
                write_rows(tmp, keys, rows, attrs())
        except H5_ERRORS as exc:  # h5py reports a failed write as any of these
            raise write_error(self.path.parent, exc) from exc
        return final

    # ------------------------------------------------------------------ locking
    def _lock_fd(self, path: Path, *, exclusive: bool) -> int | None:
        """A descriptor to flock ``path`` with; None when a reader cannot open or create it."""
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exclusive:
                raise StoreError(
                    f"cannot write to the cache directory {self.path.parent} ({exc.strerror}); "
                    "make it writable or choose another with --cache-dir / FEATURESTORE_CACHE"
                ) from exc
        try:  # a read-only cache: flock works on a read-only descriptor too
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None

    def _flock(self, path: Path, mode: int, fds: list[int], *, exclusive: bool) -> int | None:
        """Lock ``path`` (``mode``) and add the descriptor to ``fds``; None: a reader that
        cannot open it. Removing a store deletes its lock files while holding them: a process
        that was waiting on a deleted file finds the path gone or new once it has the lock, and
        locks the file the path names now."""
        while True:
            fd = self._lock_fd(path, exclusive=exclusive)
            if fd is None:
                return None
            fds.append(fd)
            fcntl.flock(fd, mode)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            held = os.fstat(fd)
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return fd
            fds.remove(fd)
            os.close(fd)

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """The store's lock: shared for readers, exclusive for compaction.

        Compaction has priority: it takes the gate file exclusively before the lock, and a
        reader passes the gate (shared, for an instant) before taking the lock, so a stream of
        overlapping readers (sweeps) cannot starve a compaction. A reader that cannot open or
        create the files (read-only cache) goes without; readers retry when a file vanishes
        under them (see :meth:`shared`). Shared locking is re-entrant per thread: a read
        inside a read takes no second lock (it would queue behind a waiting compaction that
        itself waits for the outer read).
        """
        me = threading.get_ident()
        depth = self._depth.get(me, 0)
        if depth and not exclusive:
            self._depth[me] = depth + 1
            try:
                yield
            finally:
                self._depth[me] = depth
            return
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        fds: list[int] = []
        try:
            gate = self._flock(self.gate_path, mode, fds, exclusive=exclusive)
            self._flock(self.lock_path, mode, fds, exclusive=exclusive)
            if gate is not None and not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)  # readers only pass through the gate
            self._depth[me] = depth + 1
            yield
        finally:
            self._depth[me] = depth
            for fd in fds:
                os.close(fd)  # closing releases the flock

    def shared(self, fn: Callable[[], T]) -> T:
        """``fn()`` under the shared lock: one consistent snapshot of the store's files.

        Every read goes through here. Without the lock (a read-only cache) a compaction can
        delete a file between listing and opening it: ``fn`` then raises
        :class:`VanishedError` and runs again, up to RETRIES times in all (pausing 10 ms, 20 ms,
        ...); the last VanishedError is raised.
        """
        for attempt in range(RETRIES):
            try:
                with self.locked(exclusive=False):
                    return fn()
            except VanishedError:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")
