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

With views (:mod:`featurestore.views`) a worker decodes an image once and renders the missing
views of it; a batch of images becomes ``ceil(rows / batch_size)`` forward passes of exactly
``batch_size`` rows (the last one zero-padded), so ``batch_size`` keeps meaning the network's
batch and a view's row never depends on its neighbours either. Each view's rows go to that
view's store.

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
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from featurestore import provenance
from featurestore.decode import DecodeError
from featurestore.errors import ExtractError
from featurestore.extractor import Extractor, Preprocess
from featurestore.runtime import WorkerPlan, cpu_plan, die_with_parent, worker_signals
from featurestore.sources import ImageLoader, Record, Skipped
from featurestore.store import FeatureStore
from featurestore.views import ViewPolicy, ViewTodo, render_plain, render_views

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


Item = tuple[int, "torch.Tensor | list[torch.Tensor] | None", "str | None"]


class _ImageDataset(Dataset):
    """Decode + eval transform (or views) of one record, in a worker process; errors become
    values.

    An item is (index, pixels or None, error or None). Pixels: a (3, H, W) uint8 tensor (the
    plain eval transform), or with ``views`` a list of them, the views ``wants[index]`` of the
    image decoded once. Each tensor is a crop of :func:`pil_to_tensor`'s view of the resized HWC
    pixels, so batching it channels-last needs no transpose.
    """

    def __init__(
        self,
        records: list[Record],
        loader: ImageLoader,
        pre: Preprocess,
        views: ViewPolicy | None = None,
        wants: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        self.records = records
        self.loader = loader
        self.pre = pre
        self.views = views
        self.wants = wants
        if views is not None and (wants is None or len(wants) != len(records)):
            raise ValueError("views need the wanted view indices of every record")
        self.decode_s = 0.0  # seconds spent in __getitem__ by this process's copy

    def __len__(self) -> int:
        return len(self.records)

    def n_rows(self, idx: Sequence[int]) -> int:
        """How many rows (views) the records ``idx`` give."""
        return len(idx) if self.wants is None else sum(len(self.wants[i]) for i in idx)

    def __getitem__(self, i: int) -> Item:
        pre = self.pre
        t = time.perf_counter()
        try:
            draft = pre.resize_size if pre.decode == "draft" else None
            img = self.loader.load(self.records[i], draft_size=draft)
            if self.views is None or self.wants is None:
                return i, render_plain(img, pre), None
            return i, render_views(img, pre, self.views, self.wants[i]), None
        except DecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad image must never stop the run
            return i, None, f"{type(exc).__name__}: {exc}"
        finally:
            self.decode_s += time.perf_counter() - t


class _Collate:
    """Items -> (indices, (m * batch_size, 3, H, W) uint8 channels-last batch or None, errors).

    The batch holds every view of the items in order (one row per plain item) and is
    zero-padded to a multiple of ``batch_size`` rows, the network's batch (constant shape: a row
    never depends on its batch); in a worker it is allocated in shared memory so it crosses to
    the main process without another copy.
    """

    def __init__(self, batch_size: int, *, shared: bool = True) -> None:
        self.batch_size = batch_size
        self.shared = shared

    def __call__(
        self, items: list[Item]
    ) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        good = [(i, t) for i, t, _ in items if t is not None]
        errors = [(i, e) for i, t, e in items if t is None and e is not None]
        if not good:
            return [], None, errors
        # (H, W, 3) each: the pixels' order in memory
        views = [v.permute(1, 2, 0) for _, t in good for v in (t if isinstance(t, list) else [t])]
        first = views[0]
        shape = (math.ceil(len(views) / self.batch_size) * self.batch_size, *first.shape)
        if self.shared and get_worker_info() is not None:  # as torch's default_collate does
            storage = first._typed_storage()._new_shared(math.prod(shape), device=first.device)
            out = first.new(storage).resize_(shape)
        else:
            out = first.new_empty(shape)
        torch.stack(views, out=out[: len(views)])
        out[len(views) :].zero_()
        return [i for i, _ in good], out.permute(0, 3, 1, 2), errors


def _forward(model: torch.nn.Module, batch: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """The first ``n`` rows of ``model`` on ``batch``, run ``batch_size`` rows at a time (the
    batch is padded to a multiple of it)."""
    chunks = [model(batch[s : s + batch_size]) for s in range(0, n, batch_size)]
    return (chunks[0] if len(chunks) == 1 else torch.cat(chunks))[:n]


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
        self, items: list[Item]
    ) -> tuple[list[int], np.ndarray | None, list[tuple[int, str]], float, float]:
        idx, batch, errors = super().__call__(items)
        decode_s, self.dataset.decode_s = self.dataset.decode_s, 0.0
        t = time.perf_counter()
        rows = None
        if batch is not None:
            n = self.dataset.n_rows(idx)
            with torch.inference_mode():
                rows = _forward(self.model, batch, n, self.batch_size).numpy()
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
    owners = [i for i in idx for _ in range(job.n_views(i))]  # the record of each row
    bad_rows = zip(owners, finite, strict=True)
    bad = list(dict.fromkeys(job.records[i].path for i, ok in bad_rows if not ok))
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

    def __init__(
        self, model: torch.nn.Module, device: torch.device, threads: int | None, batch_size: int
    ) -> None:
        self.model = model
        self.device = device
        self.threads = threads
        self.batch_size = batch_size
        self.busy = 0.0
        self._lock = threading.Lock()

    def init_thread(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # per-thread OpenMP setting as well as global

    def __call__(self, batch: torch.Tensor, n: int) -> np.ndarray:
        t = time.perf_counter()
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            rows = _forward(self.model, x, n, self.batch_size).to("cpu", torch.float32).numpy()
        with self._lock:
            self.busy += time.perf_counter() - t
        return rows


@dataclass
class RunStats:
    """What the extraction loop did: rows written, images skipped (with reasons), seconds.

    ``timings``: ``build``, ``load_wait`` (the main process waited for a batch), ``decode`` and
    ``forward`` (seconds per replica), ``write_wait`` (waiting for the writer).
    ``written_per_store``: rows written to each store (one store; with views, view ``i``'s at
    ``i``); ``images``: images whose rows were written.
    """

    written: int
    skipped: list[Skipped]
    timings: dict[str, float]
    written_per_store: list[int] = field(default_factory=list)
    images: int = 0


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
    views: ViewTodo | None = None,
) -> RunStats:
    """Extract ``records`` (all assumed missing) into ``store`` as ``plan`` says.

    With ``views``, record ``j``'s views ``views.wants[j]`` are extracted instead (each image
    decoded once) into the views' stores (``store`` is ``views.stores[0]``, the plain store).

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
    if views is not None and len(views.wants) != len(records):
        raise ValueError(f"{len(views.wants)} view lists for {len(records)} records")
    job = _Job(
        extractor, records, loader, store, device, batch_size, plan.workers, strict, progress,
        source_name, timings, model, views,
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
    return RunStats(written, skipped, timings, job.written_per_store, job.images_written)


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
    views: ViewTodo | None = None
    written_per_store: list[int] = field(default_factory=list)
    images_written: int = 0

    def __post_init__(self) -> None:
        self.written_per_store = [0] * (1 if self.views is None else len(self.views.stores))

    def dataset(self) -> _ImageDataset:
        v = self.views
        return _ImageDataset(
            self.records,
            self.loader,
            self.extractor.preprocess,
            views=None if v is None else v.policy,
            wants=None if v is None else v.wants,
        )

    def n_views(self, i: int) -> int:
        """How many rows record ``i`` gives (its missing views; 1 without views)."""
        return 1 if self.views is None else len(self.views.wants[i])

    def batches(self) -> list[list[int]]:
        """Record indices grouped into the DataLoader's batches (see :func:`group_records`)."""
        return group_records([self.n_views(i) for i in range(len(self.records))], self.batch_size)

    def progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=len(self.records) if self.views is None else self.views.n_pairs,
            unit="img" if self.views is None else "view",
            disable=not self.progress,
            desc=self.extractor.backbone.name
            + ("" if self.views is None else f" {self.views.policy.name}"),
            dynamic_ncols=True,
        )

    def store_rows(self, idx: list[int], rows: np.ndarray, prov: dict[str, Any]) -> None:
        """Append the rows of records ``idx`` (their views, in order) to their stores."""
        if self.views is None:
            self.store.append([self.records[i].key for i in idx], rows, provenance=prov)
            self.written_per_store[0] += len(idx)
            self.images_written += len(idx)
            return
        pairs = [(self.records[i].key, v) for i in idx for v in self.views.wants[i]]
        view_of = np.array([v for _, v in pairs])
        for v in np.unique(view_of).tolist():
            sel = np.flatnonzero(view_of == v)
            keys = [pairs[j][0] for j in sel]
            self.views.stores[v].append(keys, rows[sel], provenance=prov)
            self.written_per_store[v] += len(sel)
        self.images_written += len(idx)

    def skip(self, skipped: list[Skipped], i: int, reason: str) -> None:
        """Record a bad image; with ``strict`` stop the run (after the caller kept its rows)."""
        skipped.append(Skipped(self.records[i].path, reason))
        if self.strict:
            raise ExtractError(f"{self.records[i].path}: {reason} (--strict)")


def group_records(n_views: Sequence[int], batch_size: int, max_passes: int = 8) -> list[list[int]]:
    """Consecutive record indices grouped into batches of at most ``batch_size * m`` rows, where
    record ``i`` gives ``n_views[i]`` rows (its views).

    ``m`` (forward passes per batch) is the smallest in 1..``max_passes`` whose row count is a
    multiple of the most views any record gives, so full batches need no padding (crops10 with
    batch size 32: 16 images, 160 rows, 5 passes), else the fewest that fit that record. Without
    views (one row each) this is plain batching by ``batch_size``. Grouping decides only which
    images share a decode worker's batch, never a row's numbers (every pass is padded to
    ``batch_size``).
    """
    k = max(n_views, default=1)
    m = next((m for m in range(1, max_passes + 1) if batch_size * m % k == 0), None)
    capacity = batch_size * (m if m is not None else math.ceil(k / batch_size))
    groups: list[list[int]] = []
    rows = capacity
    for i, n in enumerate(n_views):
        if rows + n > capacity:
            groups.append([])
            rows = 0
        groups[-1].append(i)
        rows += n
    return groups


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
        self._pending = self._pool.submit(self.job.store_rows, idx, rows, self.prov)
        self.written += len(rows)


def _pipeline_replica_workers(job: _Job) -> tuple[int, list[Skipped]]:
    """CPU: ``workers`` processes, each decoding its batches and running its own replica."""
    import multiprocessing

    t0 = time.perf_counter()
    model = job.model if job.model is not None else job.extractor.build(job.device)
    job.timings["build"] += time.perf_counter() - t0
    dataset = job.dataset()
    dl = DataLoader(
        dataset,
        batch_sampler=job.batches(),
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
                bar.update(
                    sum(job.n_views(i) for i in idx) + sum(job.n_views(i) for i, _ in errors)
                )
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
    dataset = job.dataset()
    workers = job.workers
    dl = DataLoader(
        dataset,
        batch_sampler=job.batches(),
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
    runner = _Runner(model, job.device, threads, job.batch_size)
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
                        n = dataset.n_rows(idx)
                        inflight.append((pool.submit(runner, batch, n), idx))
                    bar.update(
                        sum(job.n_views(i) for i in idx) + sum(job.n_views(i) for i, _ in errors)
                    )
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
