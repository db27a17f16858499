"""Where and how an extraction runs: the device, what the precision needs, the worker plan, and
the lifetime of the run's processes (signals, worker processes that die with their parent).

Decided once per run by :func:`featurestore.extraction.extract` and handed to the extraction
loop (:mod:`featurestore.pipeline`), which only follows the plan. Importing this module does not
import torch; the functions that need it import it when called.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from featurestore.errors import ExtractError
from featurestore.provenance import cores

if TYPE_CHECKING:
    import torch

__all__ = [
    "BF16_WARNING",
    "DEVICE_TYPES",
    "EXIT_TERMINATED",
    "MAX_REPLICA_WORKERS",
    "Terminated",
    "WorkerPlan",
    "cpu_plan",
    "cpu_replica_workers",
    "cpu_supports_bf16",
    "default_workers",
    "device_needs_torch",
    "die_with_parent",
    "plan_workers",
    "precision_warnings",
    "resolve_device",
    "set_parent_death_signal",
    "sigterm_interrupts",
    "watch_parent",
    "worker_signals",
]

log = logging.getLogger(__name__)

BF16_WARNING = "this CPU has no native bf16 (AVX512-BF16/AMX): bf16 may be slower"
MAX_REPLICA_WORKERS = 8


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_needs_torch(device: str, precision: str) -> bool:
    """Whether ``device``/``precision`` must be checked with torch before any work: a named
    accelerator, or fp16 (which needs CUDA). ``cpu`` and ``auto`` wait until there is work."""
    return not (device == "cpu" or (device == "auto" and precision != "fp16"))


def precision_warnings(precision: str, device_type: str | None) -> list[str]:
    """Refuse what cannot run (fp16 off CUDA); warn about what runs slowly (bf16 emulated).

    ``device_type`` ``None``: not known yet (``auto`` before there is work); nothing is said.
    """
    if device_type is None:
        return []
    if precision == "fp16" and device_type != "cuda":
        raise ExtractError("--precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if precision == "bf16" and device_type == "cpu" and not cpu_supports_bf16():
        return [BF16_WARNING]
    return []


DEVICE_TYPES = ("cpu", "cuda")  # what the extraction loop runs on


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu`` or ``cuda[:N]`` as given. Anything else
    (another device type, ``cuda`` without a GPU, a GPU index torch does not see) is an
    ExtractError before any work."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ExtractError(f"--device {device!r}: {exc}") from None
    if dev.type not in DEVICE_TYPES:
        raise ExtractError(f"--device {device!r}: featurestore extracts on cpu or cuda[:N]")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ExtractError("--device cuda, but torch sees no CUDA device; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ExtractError(
                f"--device {device!r}: torch sees {count} CUDA device(s), numbered from 0"
            )
    return dev


def default_workers(device: torch.device) -> int:
    """Decode worker processes: as many as the cores on CPU (at most 4), up to 8 on CUDA.

    On CPU the workers share the cores with the forward pass; the OS time-slices them, which
    costs nothing because each forward replica is single-threaded (see :func:`cpu_plan`).
    """
    n = cores()
    if device.type == "cuda":
        return max(1, min(8, n - 1))
    return max(1, min(4, n))


def fork_available() -> bool:
    """Whether worker processes can be forked (the network travels to them by fork)."""
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


def cpu_replica_workers(threads: int | None = None) -> int:
    """Replica worker processes for a CPU extraction with automatic workers (0: none).

    One per thread of ``threads`` (default ``torch.get_num_threads()``, torch's default being the
    core count; a caller that lowered it keeps its limit), each decoding and running its own copy
    of the network single-threaded. Up to :data:`MAX_REPLICA_WORKERS` threads and where ``fork``
    exists (the network travels by fork); beyond that the threaded plan of :func:`cpu_plan`
    serves better. Single-threaded because OpenMP deadlocks in a forked child that uses more
    than one thread once the parent has used it (measured with GNU OpenMP, torch's).
    """
    import torch

    budget = max(1, threads or torch.get_num_threads())
    return budget if budget <= MAX_REPLICA_WORKERS and fork_available() else 0


def cpu_plan(threads: int | None = None) -> tuple[int, int]:
    """(model replicas, intra-op threads each) for a CPU forward pass on ``threads`` threads.

    ``threads`` defaults to ``torch.get_num_threads()`` (torch's default is the core count;
    a caller that lowered it keeps its limit). Data parallelism beats intra-op parallelism on
    small machines: with one thread per replica there are no OpenMP barriers, so a decode
    worker taking a core for a moment stalls only that replica, not every thread of the forward
    pass (measured on 2 cores: 2 replicas x 1 thread give 1.08-1.14x the images/s of 1 model x
    2 threads, and keep that speed with decoding beside them). Past 4, replicas get more threads.
    """
    import torch

    budget = max(1, threads or torch.get_num_threads())
    replicas = min(budget, 4)
    return replicas, max(1, budget // replicas)


@dataclass(frozen=True)
class WorkerPlan:
    """How the extraction loop runs: ``workers`` DataLoader processes; with ``replicas`` each
    of them decodes and runs its own copy of the network (CPU, fork), otherwise they decode and
    the main process runs the network."""

    workers: int
    replicas: bool = False


def plan_workers(device: torch.device, workers: int | None, n_images: int) -> WorkerPlan:
    """The plan for ``n_images`` on ``device``: ``workers`` ``None`` is automatic (replica
    workers on a CPU that can fork, else :func:`default_workers`); a number is taken as given."""
    if workers is None:
        replicas = cpu_replica_workers() if device.type == "cpu" else 0
        n = replicas or default_workers(device)
    else:
        replicas, n = 0, workers
    n = min(n, n_images)
    return WorkerPlan(n, replicas=replicas > 0 and n > 0)


# ---------------------------------------------------------------------------- signals, processes
EXIT_TERMINATED = 128 + signal.SIGTERM  # what shells report for a process ended by SIGTERM
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_INTERVAL_S = 0.5


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during an extraction (see :func:`sigterm_interrupts`).

    A :class:`KeyboardInterrupt`, so everything that stops cleanly on Ctrl-C stops the same way
    on SIGTERM; ``exit_code`` is what the command line exits with (143, as for a process that
    SIGTERM ended)."""

    exit_code = EXIT_TERMINATED

    def __init__(self, message: str = "terminated (SIGTERM)") -> None:
        super().__init__(message)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread, as Ctrl-C raises
    KeyboardInterrupt: the run stops where it is and its cleanup runs (finished batches are
    kept, worker processes are shut down). A second SIGTERM during that cleanup ends the
    process at once (the signal's default action; the journal is crash-safe and the workers
    die with it, :func:`die_with_parent`). Does nothing outside the main thread, or when the
    program already handles or ignores SIGTERM itself; the previous handler is put back on
    exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the second one is not negotiable
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent ends (Linux
    ``prctl(PR_SET_PDEATHSIG)``, inherited by nothing). Returns whether it is armed.

    The parent is the thread that forked this process: with the ``fork`` start method the
    process that runs the extraction, with ``forkserver`` the fork server (which ends when that
    process ends)."""
    libc = _libc()
    if libc is None:
        return False
    try:
        zero = ctypes.c_ulong(0)
        return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), zero, zero, zero) == 0
    except (AttributeError, OSError):  # no prctl in this C library
        return False


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill(pid, 0) is all there is
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def watch_parent(
    parent: int, *, interval: float = WATCH_INTERVAL_S, exit_code: int = 1
) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit``) within ``interval`` seconds
    of process ``parent`` ending, or of this process being re-parented. For every platform,
    and for the cases the parent death signal does not cover (``parent`` is not the direct
    parent, e.g. with a fork server)."""
    ppid = os.getppid()

    def watch() -> None:
        while os.getppid() == ppid and _alive(parent):
            time.sleep(interval)
        os._exit(exit_code)  # nothing of a worker's is worth keeping without its parent

    thread = threading.Thread(target=watch, name="featurestore-parent-watch", daemon=True)
    thread.start()
    return thread


def die_with_parent(parent: int) -> None:
    """In a worker process of the extraction run by process ``parent``: make sure it ends when
    ``parent`` ends, however it ends (SIGKILL included), instead of living on re-parented to
    init with its copy of the network. The kernel's parent death signal (Linux) kills it at
    once; a watchdog thread (:func:`watch_parent`) covers the rest. Ends the process now if
    ``parent`` already ended (it may have, between the fork and this call)."""
    if os.getppid() == parent:
        set_parent_death_signal()
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
    elif not _alive(parent):
        os._exit(1)
    watch_parent(parent)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def worker_signals() -> None:
    """Signal handling of an extraction worker process: Ctrl-C (SIGINT, sent to the whole
    process group by a terminal) is ignored, as the extracting process decides when the run
    stops and shuts its workers down; SIGTERM (the extracting process's shutdown, or a
    ``kill`` of the whole group) ends the worker at once and quietly (exit status 0, so the
    extracting process does not report a crashed worker while it stops)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
