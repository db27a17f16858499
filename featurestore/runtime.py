"""Where and how an extraction runs: the device, what the precision needs, the worker plan.

Decided once per run by :func:`featurestore.extraction.extract` and handed to the extraction
loop (:mod:`featurestore.pipeline`), which only follows the plan. Importing this module does not
import torch; the functions that need it import it when called.
"""

from __future__ import annotations

import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import ExtractError
from featurestore.provenance import cores

if TYPE_CHECKING:
    import torch

__all__ = [
    "BF16_WARNING",
    "MAX_REPLICA_WORKERS",
    "WorkerPlan",
    "cpu_plan",
    "cpu_replica_workers",
    "cpu_supports_bf16",
    "default_workers",
    "device_needs_torch",
    "plan_workers",
    "precision_warnings",
    "resolve_device",
]

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


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ExtractError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractError("--device cuda, but torch sees no CUDA device; use --device cpu")
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
