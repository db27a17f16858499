"""Extraction on a Ray cluster through Ray Data, into the same content-keyed store.

The driver (the process that calls :func:`featurestore.extraction.extract`) has already found
the records whose keys the store lacks. It hands them to the cluster as blocks of record
references (index, key, the loader's ``ref``; never pixels) and Ray Data runs two stages:

1. **decode** (a pool of CPU decoders that Ray Data grows with the work, up to one per CPU
   that the forward actors leave): each decodes a batch of records with the local pipeline's
   own dataset (:class:`featurestore.pipeline._ImageDataset`: the same decode, draft mode,
   resize and centre crop) and emits uint8 crops, or the reason an image cannot be decoded;
2. **forward** (an actor pool: one actor per GPU, or per CPU share): each actor resolves the
   extractor on its node, checks that the fingerprint is the driver's, builds the network
   once, and for every batch pads the crops to ``batch_size`` with the local pipeline's
   collate (:class:`featurestore.pipeline._Collate`) and runs them as the local pipeline's
   runner does (:class:`featurestore.pipeline._Runner`); every :data:`BATCHES_PER_PART`
   batches it writes one journal part straight into the shared cache
   (:meth:`FeatureStore.append`: a temporary file, fsynced and renamed). Only the
   index and the decode error of each record go back to the driver.

Ray Data streams the two stages with backpressure, restarts actors that die
(``max_restarts=-1``) and retries their batches (``max_task_retries=-1``), decoders as
forward actors. A batch retried after its part was renamed into place is written twice:
compaction keeps one copy (the rows are the same bits).

The store, not Ray, is the record of what is done: at the end the driver reads the store's
keys again, runs the records still missing once more, and fails naming how many are still
missing if any are; the caller then compacts once. A driver that crashes leaves its parts
behind, and the next run extracts only what they do not hold.

Rows equal the local path's bit for bit on the same device type and precision: same decode,
same padding to ``batch_size``, same network build, one intra-op thread per CPU actor as in
the local CPU replicas. Each part's provenance records the engine, host, process and device
type that wrote it.

Ray is imported only when a run uses this engine (``pip install "featurestore[ray]"``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore import errors, provenance, runtime, worklist
from featurestore.engines import RAY_INSTALL_HINT
from featurestore.errors import ExtractError, FeatureStoreError, StoreCorruptError
from featurestore.extractor import Extractor, Preprocess, resolve
from featurestore.options import ExtractorOptions
from featurestore.sources import ImageLoader, Record, Skipped
from featurestore.store import FeatureStore
from featurestore.store.journal import write_error

log = logging.getLogger(__name__)

__all__ = ["ClusterPlan", "RayRun", "plan_cluster", "run_extraction"]

#: Batches per input block (of record references) at most.
MAX_BATCHES_PER_BLOCK = 32
#: Batches per journal part: an actor runs this many padded batches per call and writes their
#: rows as one part (at batch 32, 1280-d: 1.25 MiB), 8x fewer files than a part per batch.
BATCHES_PER_PART = 8
#: Passes over records still missing from the store after a pass (the first included).
PASSES = 2
#: The largest decoded photo a decoder is expected to hold (12 MP, RGB).
DECODE_PHOTO_BYTES = 12_000_000 * 3


@dataclass(frozen=True)
class ClusterPlan:
    """How the stages are laid out: ``actors`` forward actors of ``actor_cpus`` CPUs and
    ``actor_gpus`` GPUs each on ``device``; up to ``decoders`` decoders of ``decode_cpus``
    CPUs each."""

    device: str
    actors: int
    actor_cpus: float
    actor_gpus: float
    decode_cpus: float
    decoders: int
    cluster_cpus: int
    cluster_gpus: int

    @property
    def threads(self) -> int:
        """torch intra-op threads in a CPU actor: its CPU share (at least one)."""
        return max(1, int(self.actor_cpus))


def plan_cluster(resources: dict[str, float], device: str, actors: int | None) -> ClusterPlan:
    """The plan for a cluster with ``resources`` (``ray.cluster_resources()``).

    ``device``: ``auto`` (CUDA when the cluster has GPUs), ``cpu`` or ``cuda``. ``actors``:
    forward actors (default: one per GPU, else one per CPU).

    On GPUs each actor holds a GPU and one CPU; decoders take one CPU each from the rest. On
    CPUs each actor holds one CPU and runs one intra-op thread, as a local CPU replica does, and
    the decoders (up to one per CPU) hold no CPU of their own: they run beside the actors, as a
    local replica decodes beside its forward pass. Were decoding to hold CPUs, a cluster that
    lost a node could end with every CPU held by restarted actors and none left to decode for
    them (seen on a test cluster: the run waited for ever).
    """
    cpus = int(resources.get("CPU", 0))
    gpus = int(resources.get("GPU", 0))
    if device not in ("auto", "cpu", "cuda"):
        raise ExtractError(f"--device {device!r}: the ray engine runs on cpu or cuda")
    if device == "cuda" and not gpus:
        raise ExtractError("--device cuda, but the Ray cluster has no GPU; use --device cpu")
    if cpus < 1:
        raise ExtractError("the Ray cluster has no CPU to decode images on")
    if actors is not None and actors < 1:
        raise ExtractError(f"the ray engine needs at least one actor, got {actors}")
    if gpus > 0 and device != "cpu":
        n = min(actors or gpus, gpus)
        actor_cpus = 1.0 if cpus > n else 0.0
        decoders = max(1, cpus - int(n * actor_cpus))
        return ClusterPlan("cuda", n, actor_cpus, 1.0, 1.0, decoders, cpus, gpus)
    n = actors or cpus
    return ClusterPlan("cpu", n, min(1.0, cpus / n), 0.0, 0.0, cpus, cpus, gpus)


@dataclass
class RayRun:
    """What a run on the cluster did: rows written, skipped images (in the records' order),
    seconds, where it ran (``device`` type, ``workers`` forward actors) and warnings."""

    written: int
    skipped: list[Skipped]
    timings: dict[str, float]
    device: str
    workers: int
    warnings: list[str] = field(default_factory=list)


def _require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ExtractError(
            f"--engine ray needs Ray Data, which is not installed ({exc}): {RAY_INSTALL_HINT}"
        ) from None
    return ray


@contextlib.contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[None]:
    """Connected to the cluster at ``address`` (None: ``$RAY_ADDRESS``, else a Ray started on
    this machine for the run); an already connected driver is left as it is."""
    if ray.is_initialized():
        yield
        return
    with contextlib.redirect_stdout(sys.stderr), _connection(ray, address):
        # Ray's driver prints cluster events (a node lost) to stdout, which belongs to the
        # caller (the command line's --json): while connected they go to stderr.
        yield


def check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """Fail at once, in one line, when ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``)
    does not answer: Ray itself retries a wrong address for minutes. ``auto``, ``local`` and
    None are left to Ray."""
    if address is None or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ExtractError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExtractError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is its head "
            "node running (ray start --head) and the port open?"
        ) from None


@contextlib.contextmanager
def _connection(ray: Any, address: str | None) -> Iterator[None]:
    check_reachable(address)
    # Ray's start-up notices (token authentication, "connecting to ...") only with -v
    level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.ERROR
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": level}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    handlers = _signal_handlers()
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ExtractError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    finally:
        # ray.init installs its own SIGTERM/SIGINT handlers in the driver and leaves them
        # after shutdown; the caller's (Ctrl-C and SIGTERM as KeyboardInterrupt) stay in force
        _restore_signal_handlers(handlers)
    try:
        yield
    finally:
        ray.shutdown()
        _restore_signal_handlers(handlers)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _signal_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in _SIGNALS}


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _blocks(records: Sequence[Record], per_block: int) -> list[Any]:
    """Arrow tables of record references, ``per_block`` records each: ``i`` (position in
    ``records``), ``key`` and ``ref`` (the loader's reference, pickled)."""
    import pyarrow as pa

    out = []
    for start in range(0, len(records), per_block):
        chunk = records[start : start + per_block]
        out.append(
            pa.table(
                {
                    "i": pa.array(np.arange(start, start + len(chunk), dtype=np.int64)),
                    "key": pa.array([r.key for r in chunk], pa.string()),
                    "ref": pa.array([pickle.dumps(r.ref) for r in chunk], pa.binary()),
                }
            )
        )
    return out


def _per_block(n: int, batch_size: int, cpus: int) -> int:
    """Records per input block: whole batches, about eight blocks per CPU, at most
    :data:`MAX_BATCHES_PER_BLOCK` batches (decoding a block is spread over the decoders batch
    by batch)."""
    batches = math.ceil(n / batch_size)
    per = max(1, min(MAX_BATCHES_PER_BLOCK, math.ceil(batches / (8 * max(1, cpus)))))
    return per * batch_size


def decode_batch(
    batch: dict[str, np.ndarray], *, preprocess: Preprocess, loader: ImageLoader
) -> dict[str, np.ndarray]:
    """Decode stage: record references -> (n, crop, crop, 3) uint8 crops and error texts
    (``""`` for a decoded image; its crop is zeros otherwise)."""
    from featurestore.pipeline import _ImageDataset

    records = [
        Record(str(k), "", None, None, pickle.loads(r))
        for k, r in zip(batch["key"], batch["ref"], strict=True)
    ]
    dataset = _ImageDataset(records, loader, preprocess)
    size = preprocess.crop_size
    pixels = np.zeros((len(records), size, size, 3), dtype=np.uint8)
    errors = []
    for j in range(len(records)):
        _, tensor, error = dataset[j]
        if tensor is not None:
            pixels[j] = tensor.permute(1, 2, 0).numpy()  # the decoded HWC pixels
        errors.append(error or "")
    return {"i": batch["i"], "key": batch["key"], "pixels": pixels, "error": np.array(errors)}


def _versions() -> dict[str, str]:
    """The versions that change the numbers, without build tags (the driver reads them from
    the installed metadata, an actor that imported torch gets ``2.14.1+cu130``)."""
    found = provenance.package_versions(("featurestore", "torch", "torchvision"))
    return {k: (v or "").split("+")[0] for k, v in found.items() if k != "python"}


class Decoder:
    """Decode stage: a pool of long-lived decoder processes, each importing torch and opening
    the source's files once (a fresh Ray task worker for each batch would pay both again)."""

    def __init__(self, *, preprocess: Preprocess, loader: ImageLoader) -> None:
        self.preprocess = preprocess
        self.loader = loader

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return decode_batch(batch, preprocess=self.preprocess, loader=self.loader)


class ForwardActor:
    """Forward stage: one actor per GPU or CPU share; builds the network once, runs each call's
    records in zero-padded batches of ``batch_size`` and writes their rows into the shared
    cache as one journal part."""

    def __init__(
        self,
        *,
        options: dict[str, Any],
        fingerprint: str,
        store: str,
        batch_size: int,
        device: str,
        threads: int,
        source_name: str,
        versions: dict[str, str | None],
    ) -> None:
        import torch

        from featurestore import pipeline

        host = socket.gethostname()
        extractor = resolve(ExtractorOptions.from_json(options))
        if extractor.fingerprint != fingerprint:
            raise ExtractError(
                f"node {host}: the extractor resolves to fingerprint "
                f"{extractor.fingerprint[:16]}, the driver's is {fingerprint[:16]} (its weights "
                "file or featurestore differs); install the same versions on every node"
            )
        mine = _versions()
        if mine != versions:
            raise ExtractError(
                f"node {host}: versions {mine} differ from the driver's {versions}; rows "
                "would not match the local path's: install the same versions on every node"
            )
        path = Path(store)
        if not path.parent.is_dir():
            raise ExtractError(
                f"node {host}: the cache directory {path.parent} is not there; mount the "
                "shared cache at the same path on every node"
            )
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._heap = contextlib.ExitStack()  # for the actor's life, as a local CPU run does
        self._heap.enter_context(pipeline.heap_allocations(self.device.type == "cpu"))
        self.runner = pipeline._Runner(extractor.build(self.device), self.device, None, batch_size)
        self.collate = pipeline._Collate(batch_size, shared=False)
        self.store = FeatureStore(path, spec=extractor.spec)
        self.provenance = {
            **pipeline._provenance(self.device, batch_size, 1, source_name),
            "engine": "ray",
            "device_type": self.device.type,
            "host": host,
            "pid": os.getpid(),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        keys, pixels, errors = batch["key"], batch["pixels"], batch["error"]
        done: list[int] = []
        rows: list[np.ndarray] = []
        for start in range(0, len(keys), self.batch_size):  # padded batches, as locally
            items = [
                (j, None, str(errors[j]))
                if errors[j]
                else (j, torch.from_numpy(pixels[j]).permute(2, 0, 1), None)
                for j in range(start, min(start + self.batch_size, len(keys)))
            ]
            idx, x, _ = self.collate(items)
            if x is not None:
                rows.append(self.runner(x, len(idx)))
                done += idx
        if done:  # one journal part for the whole call
            self.store.append(
                [str(keys[j]) for j in done], np.concatenate(rows), provenance=self.provenance
            )
        return {"i": batch["i"], "error": errors}


def decode_memory(batch_size: int, crop: int) -> int:
    """Bytes a decoder asks for: a full-size decoded photo (up to 12 MP of RGB, drafted
    JPEGs far less) plus its batch of crops, twice (the output block is a copy)."""
    return DECODE_PHOTO_BYTES + 2 * batch_size * crop * crop * 3


def _dataset(
    ray: Any,
    records: Sequence[Record],
    *,
    extractor: Extractor,
    loader: ImageLoader,
    store: FeatureStore,
    plan: ClusterPlan,
    batch_size: int,
    source_name: str,
) -> Any:
    """The Ray Data pipeline: record blocks -> decoders -> forward actors."""
    per_block = _per_block(len(records), batch_size, plan.cluster_cpus)
    ds = ray.data.from_arrow(_blocks(records, per_block))
    ds = ds.map_batches(
        Decoder,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"preprocess": extractor.preprocess, "loader": loader},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.decoders),
        num_cpus=plan.decode_cpus,
        memory=decode_memory(batch_size, extractor.preprocess.crop_size),
    )
    return ds.map_batches(
        ForwardActor,
        batch_size=batch_size * BATCHES_PER_PART,
        batch_format="numpy",
        zero_copy_batch=False,  # writable arrays for torch.from_numpy
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.actor_gpus,
        fn_constructor_kwargs={
            "options": extractor.options.to_json(),
            "fingerprint": extractor.fingerprint,
            "store": str(store.path),
            "batch_size": batch_size,
            "device": plan.device,
            "threads": plan.threads,
            "source_name": source_name,
            "versions": _versions(),
        },
    )


def _quiet_ray_data(ray: Any) -> None:
    """One progress bar (the driver's): Ray Data's own bars and start-up lines off."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data logs a failure with its traceback; featurestore reports it in one line (its
    # own log files keep the traceback). ``-v`` shows what Ray Data says.
    verbose = log.isEnabledFor(logging.INFO)
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.CRITICAL)
    ctx.issue_detectors_config.detectors = []  # its findings go to stderr as warnings


def _pass(
    ray: Any,
    records: Sequence[Record],
    errors: dict[int, str],
    *,
    strict: bool,
    bar: Any,
    **stage: Any,
) -> set[int]:
    """Run ``records`` through the cluster once; record each decode error by position. Returns
    the positions that Ray Data reported done."""
    done: set[int] = set()
    batches = _dataset(ray, records, **stage).iter_batches(batch_size=None, batch_format="numpy")
    outputs = iter(batches)
    while True:
        try:
            out = next(outputs, None)
        except ray.exceptions.RayError as exc:
            raise _as_user_error(exc) from None
        if out is None:
            return done
        done.update(out["i"].tolist())
        for i, reason in zip(out["i"].tolist(), out["error"].tolist(), strict=True):
            if reason:
                errors[i] = reason
                if strict:
                    raise ExtractError(f"{records[i].path}: {reason} (--strict)")
        bar.update(len(out["i"]))


_REMOTE_ERROR = re.compile(r"featurestore\.errors\.(\w+): (.+)$", re.MULTILINE)


def _as_user_error(exc: BaseException) -> FeatureStoreError:
    """A Ray failure as one of featurestore's errors: the :class:`FeatureStoreError` raised on
    a node (an actor's checks, a full cache) as itself, anything else as an ExtractError with
    the first line of Ray's message."""
    seen: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in seen and len(seen) < 16:
        if isinstance(node, FeatureStoreError):
            return node
        seen.append(node)
        cause = getattr(node, "cause", None)
        node = cause if isinstance(cause, BaseException) else node.__cause__ or node.__context__
    found = _REMOTE_ERROR.findall(str(exc))
    if found:
        name, message = found[-1]
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, FeatureStoreError):
            return ExtractError(message) if cls is StoreCorruptError else cls(message)
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return ExtractError(f"the Ray cluster failed: {first.strip()}; rows written are kept")


def _still_missing(
    store: FeatureStore, records: Sequence[Record], errors: dict[int, str]
) -> np.ndarray:
    """Positions of ``records`` whose keys the store lacks and that were not skipped."""
    lacking = ~worklist.held(records, store.key_array())
    if errors:
        lacking[list(errors)] = False
    return np.flatnonzero(lacking)


def run_extraction(
    extractor: Extractor,
    records: list[Record],
    loader: ImageLoader,
    store: FeatureStore,
    *,
    address: str | None,
    device: str,
    batch_size: int,
    actors: int | None,
    strict: bool = False,
    progress: bool = False,
    source_name: str = "",
) -> RayRun:
    """Extract ``records`` (all missing from ``store``) on the Ray cluster at ``address``.

    ``address``: a cluster address (``ray://`` or ``HOST:PORT``), ``auto``, or None
    (``$RAY_ADDRESS``, else a Ray started on this machine for the run). The store's folder
    must be the same shared folder on every node. Does not compact: the caller does, once.
    """
    from tqdm.auto import tqdm

    ray = _require_ray()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with _connected(ray, address):
        timings["connect"] = time.perf_counter() - t
        plan = plan_cluster(ray.cluster_resources(), device, actors)
        try:  # the nodes check that they see it; on this machine it may not exist yet
            store.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(store.path.parent, exc) from exc
        warnings = runtime.precision_warnings(extractor.precision, plan.device)
        log.info("ray engine: %s", plan)
        _quiet_ray_data(ray)
        errors: dict[int, str] = {}
        todo = np.arange(len(records))
        stage = {
            "extractor": extractor,
            "loader": loader,
            "store": store,
            "plan": plan,
            "batch_size": batch_size,
            "source_name": source_name,
        }
        t = time.perf_counter()
        bar = tqdm(
            total=len(records),
            unit="img",
            disable=not progress,
            desc=extractor.backbone.name,
            dynamic_ncols=True,
        )
        try:
            for attempt in range(PASSES):
                batch = [records[i] for i in todo]
                found: dict[int, str] = {}
                done = _pass(ray, batch, found, strict=strict, bar=bar, **stage)
                reported = {int(todo[i]) for i in done}
                errors.update({int(todo[i]): reason for i, reason in found.items()})
                todo = _still_missing(store, records, errors)
                if not len(todo):
                    break
                log.warning(
                    "pass %d: %d image(s) handed to the cluster are not in the store (%d of "
                    "them reported done by Ray Data, e.g. %s); running them again",
                    attempt + 1,
                    len(todo),
                    len(reported.intersection(todo.tolist())),
                    records[int(todo[0])].path,
                )
                bar.total += len(todo)
                bar.refresh()
        finally:
            bar.close()
        timings["run"] = time.perf_counter() - t
    if len(todo):
        raise ExtractError(
            f"{len(todo)} image(s) were run on the cluster {PASSES} times but their rows are "
            f"not in {store.path.name} (e.g. {records[int(todo[0])].path}); the rows written "
            "are kept: run again to resume"
        )
    skipped = [Skipped(records[i].path, errors[i]) for i in sorted(errors)]
    return RayRun(
        written=len(records) - len(errors),
        skipped=skipped,
        timings=timings,
        device=plan.device,
        workers=plan.actors,
        warnings=warnings,
    )
