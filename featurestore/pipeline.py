"""The extraction loop: missing keys only -> DataLoader workers -> frozen backbone -> store.

Decoding and the eval transform run in DataLoader worker processes; the HDF5 writes run on a
writer thread. On a CPU (up to 8 threads) each worker is a whole replica: it decodes its batch and
runs its own single-threaded copy of the network, so the cores never wait on one another (no
OpenMP barrier stalls when decoding takes a core, no image crossing processes). On CUDA the
workers decode into pinned memory and the main process keeps two batches in flight. Big tensors
come from the malloc heap during a CPU run (:func:`heap_allocations`), not from fresh page-faulted
mappings. Every batch is padded to the full batch size so that a row's numbers never depend on
which other images shared its batch (a resumed run gives the same bits as an uninterrupted one on
the same device and precision).

This module imports torch; :func:`featurestore.extraction.extract` imports it only when at least one
image needs extracting, so a run whose rows are all cached never loads torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from featurestore import provenance
from featurestore.decode import DecodeError
from featurestore.errors import ExtractError
from featurestore.extractor import Extractor, Preprocess
from featurestore.runtime import WorkerPlan, cpu_plan, die_with_parent, worker_signals
from featurestore.sources import ImageLoader, Record, Skipped
from featurestore.store import FeatureStore

log = logging.getLogger(__name__)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
# where glibc's adaptive thresholds end up in a process that frees big blocks (its maxima)
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


@functools.cache
def _glibc() -> Any:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def heap_allocations(enabled: bool = True) -> Iterator[None]:
    """Serve big tensors from the malloc heap, not from fresh ``mmap`` s (glibc, while inside).

    glibc hands out every block above its mmap threshold (128 KiB, adapting up to 32 MiB) as a
    new mapping and unmaps it on free, so each forward pass page-faults all of its activations in
    again: on a 2-core VM that was 6,000 faults and about half the CPU time per image for
    EfficientNet-Lite0 (fp32, batch 32). Inside this context blocks up to 1 GiB come from the
    heap and stay there for reuse, and threads share the main arena (whose heap has no 64 MiB
    cap); decode workers forked inside inherit it. On exit the defaults are put back and the
    retained memory is returned with ``malloc_trim``. Rows are unaffected: only where memory
    comes from changes. Setting a threshold stops glibc adapting it, so the exit puts back the
    values the adaptive ones reach in a process like this (mmap 32 MiB, trim 64 MiB). A no-op on
    other C libraries.
    """
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(_M_ARENA_MAX, 1)
    try:
        yield
    finally:
        libc.mallopt(_M_ARENA_MAX, 0)  # 0: glibc's default limit again
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


class _ImageDataset(Dataset):
    """Decode + eval transform of one record, in a worker process; errors become values.

    An item is (index, (3, H, W) uint8 tensor or None, error or None). The tensor is
    :func:`pil_to_tensor`'s view of the decoded HWC pixels, so batching it channels-last
    needs no transpose.
    """

    def __init__(self, records: list[Record], loader: ImageLoader, pre: Preprocess) -> None:
        self.records = records
        self.loader = loader
        self.pre = pre
        self.interp = InterpolationMode(pre.interpolation)
        self.decode_s = 0.0  # seconds spent in __getitem__ by this process's copy

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        pre = self.pre
        t = time.perf_counter()
        try:
            draft = pre.resize_size if pre.decode == "draft" else None
            img = self.loader.load(self.records[i], draft_size=draft)
            # centre: the shorter side to resize_size; squash: both sides (timm's crop_mode)
            size = [pre.resize_size] * (2 if pre.crop_mode == "squash" else 1)
            img = F.resize(img, size, interpolation=self.interp, antialias=True)
            img = F.center_crop(img, [pre.crop_size])
            return i, F.pil_to_tensor(img), None
        except DecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad image must never stop the run
            return i, None, f"{type(exc).__name__}: {exc}"
        finally:
            self.decode_s += time.perf_counter() - t


class _Collate:
    """Items -> (indices, (batch_size, 3, H, W) uint8 channels-last batch or None, errors).

    The batch is zero-padded to ``batch_size`` rows (constant shape: a row never depends on its
    batch) and, in a worker, allocated in shared memory so it crosses to the main process
    without another copy.
    """

    def __init__(self, batch_size: int, *, shared: bool = True) -> None:
        self.batch_size = batch_size
        self.shared = shared

    def __call__(
        self, items: list[tuple[int, torch.Tensor | None, str | None]]
    ) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        good = [(i, t) for i, t, _ in items if t is not None]
        errors = [(i, e) for i, t, e in items if t is None and e is not None]
        if not good:
            return [], None, errors
        first = good[0][1].permute(1, 2, 0)  # (H, W, 3): the pixels' order in memory
        shape = (max(self.batch_size, len(good)), *first.shape)
        if self.shared and get_worker_info() is not None:  # as torch's default_collate does
            storage = first._typed_storage()._new_shared(math.prod(shape), device=first.device)
            out = first.new(storage).resize_(shape)
        else:
            out = first.new_empty(shape)
        torch.stack([t.permute(1, 2, 0) for _, t in good], out=out[: len(good)])
        out[len(good) :].zero_()
        return [i for i, _ in good], out.permute(0, 3, 1, 2), errors


class _ReplicaCollate(_Collate):
    """In a worker process: collate, then run this process's copy of the network on the batch.

    Returns (indices, float32 rows or None, errors, seconds decoding, seconds in the forward
    pass). The network came with the fork (its weights shared copy-on-write); the worker runs
    it single-threaded, so a worker is one replica: decoding and its forward pass never wait
    for another process or thread, and the batch never leaves the process.
    """

    def __init__(self, batch_size: int, dataset: _ImageDataset, model: torch.nn.Module) -> None:
        super().__init__(batch_size, shared=False)
        self.dataset = dataset
        self.model = model

    def __call__(  # type: ignore[override]
        self, items: list[tuple[int, torch.Tensor | None, str | None]]
    ) -> tuple[list[int], np.ndarray | None, list[tuple[int, str]], float, float]:
        idx, batch, errors = super().__call__(items)
        decode_s, self.dataset.decode_s = self.dataset.decode_s, 0.0
        t = time.perf_counter()
        rows = None
        if batch is not None:
            with torch.inference_mode():
                rows = self.model(batch)[: len(idx)].numpy()
        return idx, rows, errors, decode_s, time.perf_counter() - t


class _WorkerInit:
    """A DataLoader worker's start: one torch thread, the signals of a worker
    (:func:`~featurestore.runtime.worker_signals`), and an end tied to the extracting process
    ``parent`` (:func:`~featurestore.runtime.die_with_parent`): a worker never outlives it, even
    when it is killed with SIGKILL."""

    def __init__(self, parent: int) -> None:
        self.parent = parent

    def __call__(self, _: int) -> None:
        torch.set_num_threads(1)
        worker_signals()
        die_with_parent(self.parent)


def _stop_workers(batches: Any) -> None:
    """Shut the DataLoader's worker processes down now: torch does it when the iterator is
    collected, which an exception's traceback (a Ctrl-C, a SIGTERM) can delay indefinitely."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _worker_died(exc: RuntimeError) -> ExtractError | None:
    """The error for a DataLoader worker that ended unexpectedly (killed, e.g. out of memory),
    or None when ``exc`` is something else."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, ExtractError) or "DataLoader worker" not in msg:
        return None
    return ExtractError(
        f"a worker process ended unexpectedly ({msg}); if the system ran out of memory, use "
        "fewer --workers or a smaller --batch-size. Rows of finished batches are kept: run "
        "again to resume"
    )


def _nonfinite_error(job: _Job, idx: list[int], rows: np.ndarray, kept: int) -> ExtractError:
    """The error for a batch whose rows hold NaN or infinite values."""
    finite = np.isfinite(rows).all(axis=1)
    bad = [job.records[i].path for i, ok in zip(idx, finite, strict=True) if not ok]
    ext = job.extractor
    hint = "" if ext.precision == "fp32" else ", or use --precision fp32"
    before = f"the {kept} rows stored before it are kept" if kept else "nothing was stored"
    return ExtractError(
        f"the network gives non-finite rows (NaN or infinity) for {len(bad)} of {len(idx)} "
        f"images of a batch, e.g. {bad[0]}; check the weights ({ext.backbone.name}, --weights "
        f"{ext.options.weights}){hint}. Such rows are never stored: nothing of that batch was "
        f"written, {before}"
    )


def _provenance(device: torch.device, batch_size: int, workers: int, source: str) -> dict[str, Any]:
    """What a run that wrote rows records in the store (not part of the fingerprint)."""
    return {  # torch and torchvision are imported: their versions carry the build tag
        "time": provenance.now(),
        "source": source,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "batch_size": batch_size,
        "workers": workers,
        **provenance.package_versions(("featurestore", "torch", "torchvision")),
    }


class _Runner:
    """Runs the model on one batch in a replica thread; records its busy time."""

    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int | None) -> None:
        self.model = model
        self.device = device
        self.threads = threads
        self.busy = 0.0
        self._lock = threading.Lock()

    def init_thread(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # per-thread OpenMP setting as well as global

    def __call__(self, batch: torch.Tensor, n: int) -> np.ndarray:
        t = time.perf_counter()
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            rows = self.model(x)[:n].to("cpu", torch.float32).numpy()
        with self._lock:
            self.busy += time.perf_counter() - t
        return rows


@dataclass
class RunStats:
    """What the extraction loop did: rows written, images skipped (with reasons), seconds.

    ``timings``: ``build``, ``load_wait`` (the main process waited for a batch), ``decode`` and
    ``forward`` (seconds per replica), ``write_wait`` (waiting for the writer).
    """

    written: int
    skipped: list[Skipped]
    timings: dict[str, float]


def run_extraction(
    extractor: Extractor,
    records: list[Record],
    loader: ImageLoader,
    store: FeatureStore,
    *,
    device: torch.device,
    batch_size: int,
    plan: WorkerPlan,
    strict: bool = False,
    progress: bool = False,
    source_name: str = "",
    model: torch.nn.Module | None = None,
    replicas: int | None = None,
    threads: int | None = None,
) -> RunStats:
    """Extract ``records`` (all assumed missing) into ``store`` as ``plan`` says.

    With ``plan.replicas`` (what :func:`featurestore.runtime.plan_workers` picks on a CPU with
    automatic workers) every DataLoader worker is a replica: it decodes its batch and runs its
    own single-threaded copy of the network on it, so the cores work in parallel with no thread
    waiting on another and no image crossing processes; the main process only writes rows.
    Otherwise the workers (or, with ``plan.workers == 0``, the main process) decode and the main
    process runs the forward pass: on CPU in ``replicas`` threads of ``threads`` intra-op
    threads (default :func:`featurestore.runtime.cpu_plan`), on CUDA in two threads that keep
    two batches in flight, copied from pinned memory without blocking. A writer thread appends
    each batch to the store, so an interrupted run keeps every finished batch; each row is
    computed in a zero-padded batch of ``batch_size``, so it never depends on its neighbours.
    On CPU the whole run is inside :func:`heap_allocations`.
    """
    timings = dict.fromkeys(("build", "load_wait", "decode", "forward", "write_wait"), 0.0)
    job = _Job(
        extractor, records, loader, store, device, batch_size, plan.workers, strict, progress,
        source_name, timings, model,
    )  # fmt: skip
    cpu = device.type == "cpu"
    with heap_allocations(cpu):
        if plan.replicas:
            written, skipped = _pipeline_replica_workers(job)
        else:
            if cpu:
                default = cpu_plan()
                replicas, threads = replicas or default[0], threads or default[1]
            else:  # two batches in flight: one thread's launches overlap the other's GPU work
                replicas, threads = 2, None
            written, skipped = _pipeline(job, replicas=replicas, threads=threads)
    return RunStats(written, skipped, timings)


@dataclass
class _Job:
    """What both extraction loops get: see :func:`run_extraction`."""

    extractor: Extractor
    records: list[Record]
    loader: ImageLoader
    store: FeatureStore
    device: torch.device
    batch_size: int
    workers: int
    strict: bool
    progress: bool
    source_name: str
    timings: dict[str, float]
    model: torch.nn.Module | None

    def progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=len(self.records),
            unit="img",
            disable=not self.progress,
            desc=self.extractor.backbone.name,
            dynamic_ncols=True,
        )

    def skip(self, skipped: list[Skipped], i: int, reason: str) -> None:
        """Record a bad image; with ``strict`` stop the run (after the caller kept its rows)."""
        skipped.append(Skipped(self.records[i].path, reason))
        if self.strict:
            raise ExtractError(f"{self.records[i].path}: {reason} (--strict)")


class _BatchWriter:
    """Appends finished batches to the store on one background thread, one batch at a time.

    ``write`` waits for the previous append (time counted as ``write_wait``), so at most one
    batch is waiting in memory; leaving the ``with`` block waits for the last append, also on
    an error, so every batch handed over is kept.
    """

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.prov = _provenance(job.device, job.batch_size, job.workers, job.source_name)
        self.written = 0
        self._pending: Future | None = None
        self._pool = ThreadPoolExecutor(max_workers=1)

    def __enter__(self) -> _BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def wait(self) -> None:
        t = time.perf_counter()
        if self._pending is not None:
            self._pending.result()
        self.job.timings["write_wait"] += time.perf_counter() - t

    def write(self, idx: list[int], rows: np.ndarray) -> None:
        """Hand one batch to the writer thread; ExtractError (nothing handed) when a row is
        not finite: such rows are never stored."""
        self.wait()
        if not np.isfinite(rows).all():
            raise _nonfinite_error(self.job, idx, rows, self.written)
        keys = [self.job.records[i].key for i in idx]
        self._pending = self._pool.submit(self.job.store.append, keys, rows, provenance=self.prov)
        self.written += len(idx)


def _pipeline_replica_workers(job: _Job) -> tuple[int, list[Skipped]]:
    """CPU: ``workers`` processes, each decoding its batches and running its own replica."""
    import multiprocessing

    t0 = time.perf_counter()
    model = job.model if job.model is not None else job.extractor.build(job.device)
    job.timings["build"] += time.perf_counter() - t0
    dataset = _ImageDataset(job.records, job.loader, job.extractor.preprocess)
    dl = DataLoader(
        dataset,
        batch_size=job.batch_size,
        shuffle=False,
        num_workers=job.workers,
        collate_fn=_ReplicaCollate(job.batch_size, dataset, model),
        prefetch_factor=2,
        worker_init_fn=_WorkerInit(os.getpid()),
        multiprocessing_context=multiprocessing.get_context("fork"),  # the model comes along
    )
    skipped: list[Skipped] = []
    batches = iter(dl)
    decode_s = forward_s = 0.0
    bar = job.progress_bar()
    try:
        with _BatchWriter(job) as writer:
            while True:
                t = time.perf_counter()
                item = next(batches, None)
                job.timings["load_wait"] += time.perf_counter() - t
                if item is None:
                    break
                idx, rows, errors, t_decode, t_forward = item
                decode_s += t_decode
                forward_s += t_forward
                if rows is not None:
                    writer.write(idx, rows)  # before a --strict error: keep what was computed
                for i, reason in errors:
                    job.skip(skipped, i, reason)
                bar.update(len(idx) + len(errors))
            writer.wait()
    except RuntimeError as exc:
        died = _worker_died(exc)
        if died is None:
            raise
        raise died from exc
    finally:
        bar.close()
        _stop_workers(batches)
    job.timings["decode"] += decode_s / job.workers
    job.timings["forward"] += forward_s / job.workers
    return writer.written, skipped


def _pipeline(job: _Job, *, replicas: int, threads: int | None) -> tuple[int, list[Skipped]]:
    """Workers (or the main process) decode; the main process runs ``replicas`` forward
    threads of ``threads`` intra-op threads each."""
    dataset = _ImageDataset(job.records, job.loader, job.extractor.preprocess)
    workers = job.workers
    dl = DataLoader(
        dataset,
        batch_size=job.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_Collate(job.batch_size),
        pin_memory=job.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_WorkerInit(os.getpid()) if workers > 0 else None,
    )
    batches = iter(dl)  # workers start decoding now, while the model is being built
    t0 = time.perf_counter()
    try:
        model = job.model if job.model is not None else job.extractor.build(job.device)
    except BaseException:
        _stop_workers(batches)
        raise
    job.timings["build"] += time.perf_counter() - t0
    runner = _Runner(model, job.device, threads)
    skipped: list[Skipped] = []
    inflight: deque[tuple[Future, list[int]]] = deque()
    saved_threads = torch.get_num_threads()
    bar = job.progress_bar()

    def finish_oldest() -> None:
        """Hand the oldest batch to the writer once computed. It leaves ``inflight`` only then
        (or when refused), so a Ctrl-C while waiting for it keeps it (see below)."""
        fut, idx = inflight[0]
        try:
            writer.write(idx, fut.result())
        except ExtractError:
            inflight.popleft()  # refused (rows not finite): never stored
            raise
        inflight.popleft()

    t_run = time.perf_counter()
    try:
        with (
            _BatchWriter(job) as writer,
            ThreadPoolExecutor(max_workers=replicas, initializer=runner.init_thread) as pool,
        ):
            try:
                while True:
                    if len(inflight) >= replicas:
                        finish_oldest()
                    t = time.perf_counter()
                    item = next(batches, None)
                    job.timings["load_wait"] += time.perf_counter() - t
                    if item is None:
                        break
                    idx, batch, errors = item
                    for i, reason in errors:
                        job.skip(skipped, i, reason)
                    if batch is not None:
                        inflight.append((pool.submit(runner, batch, len(idx)), idx))
                    bar.update(len(idx) + len(errors))
            except ExtractError:
                with contextlib.suppress(ExtractError):  # a non-finite batch ends the keeping
                    while inflight:  # keep the batches already computed
                        finish_oldest()
                raise
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: batches not started are dropped;
                # those already running finish anyway (leaving the pool waits for them): kept
                running = [(fut, idx) for fut, idx in inflight if not fut.cancel()]
                inflight.clear()
                with contextlib.suppress(Exception):  # a failed or non-finite one: the rest lost
                    for fut, idx in running:
                        writer.write(idx, fut.result())
                raise
            except BaseException:
                for fut, _ in inflight:
                    fut.cancel()
                raise
            while inflight:
                finish_oldest()
            writer.wait()
    except RuntimeError as exc:
        died = _worker_died(exc)
        if died is None:
            raise
        raise died from exc
    finally:
        bar.close()
        torch.set_num_threads(saved_threads)
        _stop_workers(batches)
    job.timings["forward"] += runner.busy / replicas
    log.debug(
        "extraction loop %.2fs with %d replica(s) x %s thread(s), %d worker(s)",
        time.perf_counter() - t_run,
        replicas,
        threads,
        workers,
    )
    return writer.written, skipped
