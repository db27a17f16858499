"""Atomic file writes: write a temporary file beside the target, fsync it, rename it into place.

A reader (or a crash) sees the old file or the new one, never half of one. Every file that
featurestore writes goes through :func:`atomic_path` (the store's HDF5 files, saved heads,
reports, predictions, exports).

Files are created with the permissions a plain ``open(path, "w")`` gives (``0o666`` minus the
umask, :func:`default_mode`), not ``mkstemp``'s ``0o600``, so a report or a head written for a
group stays readable by it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "default_mode", "fsync_dir", "write_bytes", "write_text"]


def default_mode() -> int:
    """``0o666`` minus this process's umask: the mode ``open(path, "w")`` creates files with."""
    try:  # Linux: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    """fsync a folder so that a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str],
    *,
    tmp_name: str | None = None,
    fsync: bool = True,
    tmp_synced: bool = False,
) -> Iterator[Path]:
    """Yield a fresh temporary path in ``path``'s folder; on success rename it over ``path``.

    The caller writes the temporary file (create it, or let a library create it). On leaving
    the block without an error the file is fsynced (``fsync``), renamed over ``path`` and the
    folder fsynced; on an error it is removed and ``path`` is untouched. Create the temporary
    file with mode ``0o666`` (the umask applies), as :func:`write_bytes` does, never with
    ``mkstemp``'s private ``0o600``.

    ``tmp_name``: the temporary file's name (default ``.<name>.<random>.tmp``); the store uses
    its own pattern so that it can tell a killed writer's leftovers from a live one's.

    ``tmp_synced``: the caller has fsynced the temporary file itself (the store does, through
    the descriptor it wrote with, before closing it), so only the folder is fsynced, after the
    rename.
    """
    target = Path(path)
    tmp = target.with_name(tmp_name or f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        if fsync and not tmp_synced:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); return the path."""
    target = Path(path)
    with atomic_path(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return target


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return write_bytes(path, text.encode("utf-8"))
