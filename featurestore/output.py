"""Where a command's output file goes: never over one of its inputs, atomically, one clear error.

:func:`open_output` is how predictions and exports are written. A regular file (new or
existing) is written to a temporary file beside it and renamed into place
(:func:`featurestore.atomic.atomic_path`), so a crash or a full disk leaves the old file or the
new one; an existing special file (``/dev/stdout``, ``/dev/null``, a named pipe) is written in
place, since it cannot be replaced by a rename. An output that is one of the run's inputs (the
source manifest, the saved head, its sidecar, an image) is refused before anything is written,
and any failure to write becomes one :class:`~featurestore.errors.OutputError` naming the file
and the reason.

Text is written as UTF-8 with ``surrogateescape``, so a file name that is not valid UTF-8 comes
out as the bytes it has on disk.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from featurestore.atomic import atomic_path
from featurestore.errors import FeatureStoreError, OutputError

__all__ = ["check_output", "open_output"]


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _is_special(path: Path) -> bool:
    """An existing file that is not a regular file or folder (a device, a pipe, a socket)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def check_output(path: Path | str, *, inputs: Iterable[Path | str] = ()) -> Path:
    """Refuse ``path`` as an output before any work: it is one of ``inputs`` (compared as files:
    another spelling of the path, a symbolic or hard link count too), or a folder. Returns it as
    a :class:`Path`.

    Raises:
        OutputError: as above.
    """
    out = Path(path)
    target = _file_id(out)  # an output that does not exist yet cannot be an input
    for given in inputs if target is not None else ():
        if _file_id(Path(given)) == target:
            raise OutputError(
                f"refusing to write {out}: it is one of this run's inputs ({given}); "
                "choose another --out"
            )
    if out.is_dir():
        raise OutputError(f"cannot write {out}: it is a folder; give a file name with --out")
    return out


@contextlib.contextmanager
def open_output(
    path: Path | str, *, binary: bool = False, inputs: Iterable[Path | str] = ()
) -> Iterator[IO[Any]]:
    """A file object to write ``path`` through; the file appears (atomically) when the block
    ends without an error, and is left as it was otherwise.

    Missing parent folders are created. ``binary``: a bytes stream, else text (UTF-8 with
    ``surrogateescape``, ``newline=""`` as the csv module wants).

    Raises:
        OutputError: ``path`` is one of ``inputs`` or a folder, or writing it failed (a full
            disk, no permission, a parent that is a file).
    """
    out = check_output(path, inputs=inputs)
    text = {} if binary else {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
    mode = "wb" if binary else "w"
    try:
        if _is_special(out):
            with open(out, mode, **text) as fh:
                yield fh
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot write {out}: cannot create its folder {out.parent} ({_reason(exc)})"
            ) from exc
        with atomic_path(out) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, mode, **text) as fh:
                yield fh
    except FeatureStoreError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {_reason(exc)}") from exc
