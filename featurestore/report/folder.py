"""The report folder, written all-or-nothing.

:func:`check_output` runs before any work: it refuses a folder that cannot be written, or
that holds something other than a previous report (replacing it would delete those files).
:func:`staged` yields a fresh folder beside the target; everything is written there, and only
when all of it is written is the folder swapped in (Linux: one atomic ``renameat2`` exchange;
elsewhere two renames with a roll-back). Until then the previous report stays intact, and if
writing fails it stays as it was and the partial folder is removed.

Folders are created with ``0o777`` minus the umask, files (through :mod:`featurestore.atomic`)
with ``0o666`` minus the umask: what ``mkdir`` and ``open(path, "w")`` give.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from featurestore.atomic import fsync_dir
from featurestore.errors import OutputError

__all__ = ["MARKER", "check_output", "staged", "swap_in"]

log = logging.getLogger(__name__)

#: A folder holding this file is a previous report, which a new one may replace.
MARKER = "leaderboard.json"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_output(out: Path) -> None:
    """Raise :class:`OutputError` unless a report can be written to ``out``.

    ``out`` may be missing (it is created), an empty folder, or a previous report (a folder
    with ``leaderboard.json``, replaced as a whole). Its parent folder is created if needed and
    must let this process create and rename folders: a probe folder with a file in it is made
    there and removed.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder for the report")
    if out.is_dir() and not (out / MARKER).is_file():
        try:
            foreign = next(iter(out.iterdir()), None)
        except OSError as exc:
            raise OutputError(f"cannot read the report folder {out}: {_why(exc)}") from None
        if foreign is not None:
            raise OutputError(
                f"--out {out} holds files that are not a featurestore report (no {MARKER}, "
                f"e.g. {foreign.name}); the report replaces its folder as a whole, so give a "
                "new or empty folder"
            )
    parent = out.parent
    probe = parent / f".{out.name}.{secrets.token_hex(4)}.probe"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        (probe / "probe").write_bytes(b"")
    except OSError as exc:
        raise OutputError(
            f"cannot write the report to {out}: {_why(exc)} ({parent}); choose a writable "
            "--out folder"
        ) from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where
    the system or the file system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(new: Path, out: Path) -> None:
    """Put the folder ``new`` at ``out``, removing what was there (see the module docstring)."""
    out = Path(out).absolute()
    parent = out.parent
    if not out.exists():
        os.rename(new, out)
    elif _exchange(new, out):
        _remove(new)  # ``new`` now holds the previous report
    else:
        previous = parent / f".{out.name}.{secrets.token_hex(4)}.previous"
        os.rename(out, previous)
        try:
            os.rename(new, out)
        except OSError:
            os.rename(previous, out)
            raise
        _remove(previous)
    fsync_dir(parent)


def _remove(previous: Path) -> None:
    shutil.rmtree(previous, ignore_errors=True)
    if previous.exists():
        log.warning("could not remove the previous report, left at %s", previous)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; on success swap it in as ``out``, on any error
    remove it and leave ``out`` as it was. Errors of the file system become
    :class:`OutputError` naming the report folder."""
    out = Path(out).absolute()
    parent = out.parent
    tmp = parent / f".{out.name}.{secrets.token_hex(4)}.partial"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write the report to {out}: {_why(exc)}") from None
    try:
        yield tmp
        swap_in(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(
            f"writing the report to {out} failed ({_why(exc)}); the previous report there, "
            "if any, is unchanged"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("report written to %s", out)
