"""Extract: which images of a source are missing from the store, and the summary of a run.

:func:`extract` resolves the extractor (its fingerprint names the store), scans the source,
looks its keys up in the store and hands only the missing images to the extraction loop in
:mod:`featurestore.pipeline`. Everything up to that hand-over runs without torch, which is
imported only when at least one image needs extracting (or the options need a torch device
checked: ``device`` other than ``cpu``/``auto``, or ``precision="fp16"``): a run whose rows are
all cached never pays for loading torch.

With ``views`` (:mod:`featurestore.views`) each view has its own store (view 0's is the plain
store); the lookup finds, per image, the views missing from their stores, and the pipeline
computes only those (image, view) pairs, decoding each image once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from featurestore import runtime, worklist
from featurestore.config import cache_root
from featurestore.engines import check_engine
from featurestore.errors import ExtractError, OptionError
from featurestore.extractor import Extractor, resolve
from featurestore.options import COMBO_SEPARATOR, ExtractorOptions, split_backbones
from featurestore.sources import ImageLoader, Record, Skipped, SkippedFiles, Source, open_source
from featurestore.store import FeatureStore, StoreCorruptError, StoreError
from featurestore.views import ViewPolicy, ViewTodo, get_policy

log = logging.getLogger(__name__)


def _ray_engine() -> ModuleType:
    """:mod:`featurestore.engines.ray`, imported on first use (Ray itself only when it runs)."""
    from featurestore.engines import ray

    return ray


def _pipeline_module() -> ModuleType:
    """:mod:`featurestore.pipeline`, imported (with torch) on first use."""
    from featurestore import pipeline

    return pipeline


@dataclass
class ExtractResult:
    """What an extraction did; ``to_dict()`` is the CLI's ``--json`` summary."""

    source: str
    backbone: str
    fingerprint: str
    store: Path
    n_images: int
    n_unique: int
    n_extracted: int
    n_reused: int
    skipped: list[Skipped]
    seconds: float
    feature_dim: int | None
    device: str
    precision: str
    batch_size: int
    workers: int
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extractor: Extractor | None = field(default=None, repr=False, compare=False)
    engine: str = "local"
    views: str | None = None
    views_per_image: int = 1
    n_views_extracted: int = 0
    n_views_reused: int = 0
    view_stores: list[Path] = field(default_factory=list)
    #: For a combination (``backbone="a+b"``): each backbone's own result, in column order.
    parts: list[ExtractResult] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.n_extracted / self.seconds if self.seconds > 0 else 0.0

    @property
    def views_per_s(self) -> float:
        return self.n_views_extracted / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "store": str(self.store),
            "images": self.n_images,
            "unique_images": self.n_unique,
            "extracted": self.n_extracted,
            "reused": self.n_reused,
            "skipped": len(self.skipped),
            "skipped_files": [s.to_dict() for s in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "feature_dim": self.feature_dim,
            "device": self.device,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "warnings": self.warnings,
            "engine": self.engine,
            "views": self.views,
            "views_per_image": self.views_per_image,
            "views_extracted": self.n_views_extracted,
            "views_reused": self.n_views_reused,
            "views_per_s": round(self.views_per_s, 2),
            "view_stores": [str(p) for p in self.view_stores],
            **({"parts": [p.to_dict() for p in self.parts]} if self.parts else {}),
        }

    @classmethod
    def combined(cls, parts: list[ExtractResult], *, store: Path, seconds: float) -> ExtractResult:
        """The result of extracting a combination: one row per image is the concatenation of
        ``parts``' rows. ``backbone`` and ``fingerprint`` join the parts' with ``+``,
        ``store`` is the cache root (each part names its own store), ``feature_dim`` is the
        concatenated width, counts of extracted and reused rows add up over the parts."""
        first = parts[0]
        skipped = SkippedFiles(s for p in parts for s in p.skipped)
        dims = [p.feature_dim for p in parts]
        return cls(
            source=first.source,
            backbone=COMBO_SEPARATOR.join(p.backbone for p in parts),
            fingerprint=COMBO_SEPARATOR.join(p.fingerprint for p in parts),
            store=store,
            n_images=first.n_images,
            n_unique=first.n_unique,
            n_extracted=sum(p.n_extracted for p in parts),
            n_reused=sum(p.n_reused for p in parts),
            skipped=list(skipped),
            seconds=seconds,
            feature_dim=None if None in dims else sum(d for d in dims if d is not None),
            device=first.device,
            precision=first.precision,
            batch_size=first.batch_size,
            workers=first.workers,
            warnings=list(dict.fromkeys(w for p in parts for w in p.warnings)),
            engine=first.engine,
            views=first.views,
            views_per_image=first.views_per_image,
            n_views_extracted=sum(p.n_views_extracted for p in parts),
            n_views_reused=sum(p.n_views_reused for p in parts),
            parts=parts,
        )


def extract(
    source: str | Path | Source,
    *,
    backbone: str | ExtractorOptions,
    nodes: list[str] | tuple[str, ...] | None = None,
    pooling: str | None = None,
    weights: str | Path = "default",
    input_size: int | None = None,
    precision: str = "fp32",
    decode: str = "draft",
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    strict: bool = False,
    progress: bool = False,
    split: str | None = None,
    images_key: str | None = None,
    labels_key: str | None = None,
    engine: str = "local",
    address: str | None = None,
    views: str | ViewPolicy | None = None,
) -> ExtractResult:
    """Extract features of every image of ``source`` not yet in the store; return a summary.

    ``source``: an image folder, a CSV manifest, an HDF5 file/folder of arrays,
    ``builtin:digits`` or an already opened :class:`Source`. ``backbone``: a backbone name with
    the extractor options as keywords, or an :class:`ExtractorOptions` (then the keywords
    ``nodes`` ... ``decode`` are not given). Images whose rows are already in the store (same
    content key, same extractor fingerprint) are reused, never recomputed. The result carries
    the resolved :class:`~featurestore.extractor.Extractor`, so callers need not resolve again.

    ``views``: a view policy (``"flip"``, ``"crops10"``, ``"random16"``, see
    :mod:`featurestore.views`): extract every view of every image instead, each view into its own
    store (view 0, the plain eval transform, into the plain store). Only the (image, view) pairs
    not cached are computed; the result counts images (``n_extracted``: images with a view
    computed, ``n_reused``: images with every view cached) and views (``n_views_extracted``,
    ``n_views_reused``).

    torch is imported only when an image needs extracting, or up front when the options need a
    torch device checked (``device`` other than ``"cpu"``/``"auto"``, or ``precision="fp16"``).
    When nothing was extracted, the result's ``device`` is ``device`` as given (``"auto"`` is not
    resolved) and its ``workers`` is ``workers`` as given (0 when automatic).

    ``engine="ray"`` runs the decoding and the forward passes on a Ray cluster
    (:mod:`featurestore.engines.ray`; ``address`` as ``ray.init`` takes it, None: a Ray started
    on this machine) with ``workers`` forward actors (default: one per GPU, else one per
    CPU); the cache must be a folder shared by every node at the same path. Same rows, same
    skipped files, one compaction at the end, as the local engine.

    Ctrl-C (KeyboardInterrupt) and, called from the main thread of a program that leaves SIGTERM
    to its default action, SIGTERM (:class:`~featurestore.runtime.Terminated`) stop the run: the
    batches already computed are stored, the worker processes end, the journal is merged, and
    the exception reaches the caller; the next run resumes. The worker processes end with this
    process however it ends, SIGKILL included.

    ``backbone`` may name a combination (``"alexnet+vgg16"``, as :func:`load_features` and
    ``sweep --combo`` take it): each backbone is extracted in turn, with the same options, from
    one scan of the source; the result (:meth:`ExtractResult.combined`) lists each one's in
    ``parts``.
    """
    start = time.perf_counter()
    check_engine(engine, address)
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    policy = get_policy(views) if views is not None else None
    if policy is not None and engine != "local":
        raise OptionError("views are extracted by the local engine only; leave out --engine ray")
    if isinstance(backbone, str) and COMBO_SEPARATOR in backbone:
        src = (
            source
            if isinstance(source, Source)
            else open_source(source, images_key=images_key, labels_key=labels_key)
        )
        chosen = dict(nodes=nodes, pooling=pooling, weights=weights, input_size=input_size)
        chosen.update(precision=precision, decode=decode)
        common = dict(batch_size=batch_size, workers=workers, device=device, cache_dir=cache_dir)
        common.update(strict=strict, progress=progress, split=split, engine=engine)
        common.update(address=address, views=views)
        parts = [
            extract(src, backbone=ExtractorOptions.make(name, **chosen), **common)
            for name in split_backbones(backbone)
        ]
        return ExtractResult.combined(
            parts, store=cache_root(cache_dir), seconds=time.perf_counter() - start
        )
    if isinstance(backbone, ExtractorOptions):
        options = backbone
    else:
        options = ExtractorOptions.make(
            backbone,
            nodes=nodes,
            pooling=pooling,
            weights=weights,
            input_size=input_size,
            precision=precision,
            decode=decode,
        )
    early = engine == "local" and runtime.device_needs_torch(device, options.precision)
    dev = runtime.resolve_device(device) if early else None
    dev_type = dev.type if dev is not None else ("cpu" if device == "cpu" else None)
    warnings = runtime.precision_warnings(options.precision, dev_type)
    extractor = resolve(options)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    src = (
        source
        if isinstance(source, Source)
        else open_source(source, images_key=images_key, labels_key=labels_key)
    )
    timings["scan"] = time.perf_counter() - t
    records = src.select(split)
    skipped = SkippedFiles(src.skipped)
    warnings += src.warnings
    if strict and skipped:
        raise ExtractError(f"{skipped[0].path}: {skipped[0].reason} (--strict)")
    specs = [extractor.spec] if policy is None else policy.specs(extractor.spec)
    stores = [FeatureStore.for_spec(cache_root(cache_dir), spec) for spec in specs]
    t = time.perf_counter()
    for s in stores:
        s.check()  # refuse to append to a damaged store
    n_unique, todo, wants = worklist.missing_per_store(records, [s.key_array() for s in stores])
    timings["lookup"] = time.perf_counter() - t
    work = _Work(
        extractor=extractor,
        todo=todo,
        loader=src.loader,
        stores=stores,
        views=None if policy is None else ViewTodo(policy, tuple(stores), tuple(wants)),
        batch_size=batch_size,
        strict=strict,
        progress=progress,
        source_name=src.name,
    )
    run = _Outcome(workers=0 if workers is None else workers, per_store=[0] * len(stores))
    finished = False
    # SIGTERM stops the run as Ctrl-C does: the finished batches are kept, the workers shut
    # down and the journal merged; then Terminated (a KeyboardInterrupt) reaches the caller.
    with runtime.sigterm_interrupts():
        try:
            if todo and engine == "ray":
                run = _run_on_ray(work, address=address, device=device, actors=workers)
            elif todo:
                run = _run_locally(work, dev, device=device, workers=workers, n_unique=n_unique)
            finished = True
        finally:
            t = time.perf_counter()
            _compact_all(stores, run.per_store, finished=finished, warnings=warnings)
            timings["compact"] = time.perf_counter() - t
    timings.update(run.timings)
    warnings[:0] = run.warnings
    skipped.update(_every_path_of(run.skipped, records, todo))
    wanted = sum(len(w) for w in wants)
    return ExtractResult(
        source=src.name,
        backbone=extractor.backbone.name,
        fingerprint=extractor.fingerprint,
        store=stores[0].path,
        n_images=len(records),
        n_unique=n_unique,
        n_extracted=run.images,
        n_reused=n_unique - len(todo),
        skipped=list(skipped),
        seconds=time.perf_counter() - start,
        feature_dim=stores[0].feature_dim(),
        device=run.device or (str(dev) if dev is not None else device),
        precision=options.precision,
        batch_size=batch_size,
        workers=run.workers,
        timings=timings,
        warnings=warnings,
        extractor=extractor,
        engine=engine,
        views=None if policy is None else policy.name,
        views_per_image=len(stores),
        n_views_extracted=run.written,
        n_views_reused=n_unique * len(stores) - wanted,
        view_stores=[s.path for s in stores] if policy is not None else [],
    )


@dataclass(frozen=True)
class _Work:
    """What a run computes: ``todo`` (the records with a row missing) into ``stores`` (one, or
    each view's) through the extractor, as the caller asked."""

    extractor: Extractor
    todo: list[Record]
    loader: ImageLoader
    stores: list[FeatureStore]
    views: ViewTodo | None
    batch_size: int
    strict: bool
    progress: bool
    source_name: str


@dataclass
class _Outcome:
    """What an engine did: rows written (in all, and to each store), images with a row
    written, images skipped, where it ran, and its timings and warnings."""

    workers: int
    per_store: list[int]
    written: int = 0
    images: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    device: str | None = None  # None: the device the caller resolved
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _run_on_ray(work: _Work, *, address: str | None, device: str, actors: int | None) -> _Outcome:
    """The work on a Ray cluster (:mod:`featurestore.engines.ray`; no views)."""
    cluster = _ray_engine().run_extraction(
        work.extractor,
        work.todo,
        work.loader,
        work.stores[0],
        address=address,
        device=device,
        batch_size=work.batch_size,
        actors=actors,
        strict=work.strict,
        progress=work.progress,
        source_name=work.source_name,
    )
    return _Outcome(
        workers=cluster.workers,
        per_store=[cluster.written],
        written=cluster.written,
        images=cluster.written,
        skipped=cluster.skipped,
        device=cluster.device,
        timings=cluster.timings,
        warnings=cluster.warnings,
    )


def _run_locally(
    work: _Work, dev: Any, *, device: str, workers: int | None, n_unique: int
) -> _Outcome:
    """The work on this machine (:mod:`featurestore.pipeline`, which imports torch)."""
    t = time.perf_counter()
    pipeline = _pipeline_module()  # torch is imported here, and only here
    timings = {"import": time.perf_counter() - t}
    warnings: list[str] = []
    if dev is None:
        dev = runtime.resolve_device(device)
        warnings = runtime.precision_warnings(work.extractor.options.precision, dev.type)
    plan = runtime.plan_workers(dev, workers, len(work.todo))
    log.info(
        "extracting %d of %d images with %s",
        len(work.todo),
        n_unique,
        work.extractor.backbone.name,
    )
    stats = pipeline.run_extraction(
        work.extractor,
        work.todo,
        work.loader,
        work.stores[0],
        device=dev,
        batch_size=work.batch_size,
        plan=plan,
        strict=work.strict,
        progress=work.progress,
        source_name=work.source_name,
        views=work.views,
    )
    return _Outcome(
        workers=plan.workers,
        per_store=stats.written_per_store,
        written=stats.written,
        images=stats.images,
        skipped=stats.skipped,
        device=str(dev),
        timings={**timings, **stats.timings},
        warnings=warnings,
    )


def _every_path_of(bad: list[Skipped], records: list[Record], todo: list[Record]) -> list[Skipped]:
    """A bad image is decoded once per content key: list every path holding those bytes."""
    paths_of: dict[str, list[Record]] = {}
    for r in records:
        paths_of.setdefault(r.key, []).append(r)
    key_of = {r.path: r.key for r in todo}
    return [
        Skipped(r.path, s.reason) for s in bad for r in paths_of.get(key_of.get(s.path, ""), [s])
    ]


def _compact_all(
    stores: list[FeatureStore], written: list[int], *, finished: bool, warnings: list[str]
) -> None:
    """:func:`_compact` every store of the run (each view's); the first error is raised once
    every store had its turn."""
    error: BaseException | None = None
    for store, n in zip(stores, written, strict=True):
        try:
            _compact(store, finished=finished, written=n, warnings=warnings)
        except Exception as exc:  # noqa: BLE001 - raised below, after the other stores
            error = error or exc
    if error is not None:
        raise error


def _compact(store: FeatureStore, *, finished: bool, written: int, warnings: list[str]) -> None:
    """Merge the run's journal into the store; what a failure means depends on the run."""
    try:
        store.compact()
    except Exception as exc:
        unwritable = isinstance(exc, StoreError) and not isinstance(exc, StoreCorruptError)
        if finished and written == 0 and unwritable:
            # Nothing new: every row is in the store or its journal, which readers merge.
            # A read-only (shared) cache cannot be compacted; that can wait for a writer.
            warnings.append(
                f"the journal of {store.path.name} was not merged into it ({exc}); its "
                "rows are read from the journal until a run that can write merges it"
            )
            log.warning("%s", warnings[-1])
        elif finished:
            raise
        else:
            log.exception("compaction of %s failed; the journal is kept", store.path)
