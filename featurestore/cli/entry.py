"""The ``featurestore`` console entry point: the command group, then a prompt exit.

When a command returns, its files are closed and its results written; what a normal exit
still does is tear down every module the command imported, which takes torch, scikit-learn,
scipy and matplotlib about a second on a 2-core machine (``benchmarks/RESULTS.md``). So
:func:`run` does what a normal exit does that anyone outside the process can see: it waits
for the threads the interpreter would wait for, runs the ``atexit`` handlers (logging's
flush, temporary folders, multiprocessing's clean-up), flushes any HDF5 file still open,
flushes stdout and stderr, and then ends the process with :func:`os._exit`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from featurestore.cli.group import main

__all__ = ["run"]


def run(args: Sequence[str] | None = None) -> NoReturn:
    """Run ``featurestore ARGS`` (``sys.argv`` by default) and exit with its code."""
    try:
        main(args=None if args is None else list(args), prog_name="featurestore")
    except SystemExit as stop:  # click's standalone mode always ends here
        leave(stop.code)
    leave(0)


def leave(code: object) -> NoReturn:
    """End the process with ``code`` (as :func:`sys.exit` reads it) without tearing down the
    imported modules (module docstring)."""
    status = _status(code)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    _flush_hdf5()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(status)


def _status(code: object) -> int:
    """The exit status :func:`sys.exit` gives for ``code``: ``None`` 0, an integer itself
    (modulo 256), anything else printed to stderr and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(code, file=sys.stderr)
    return 1


def _flush_hdf5() -> None:
    """Write out every HDF5 file still open (a normal exit would close them)."""
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return
    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            h5py.h5f.flush(file_id)
