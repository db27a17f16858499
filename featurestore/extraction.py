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

from featurestore import runtime
from featurestore.config import cache_root
from featurestore.errors import ExtractError, OptionError
from featurestore.extractor import Extractor, resolve
from featurestore.options import ExtractorOptions
from featurestore.sources import Record, Skipped, SkippedFiles, Source, open_source
from featurestore.store import FeatureStore, StoreCorruptError, StoreError
from featurestore.views import ViewPolicy, ViewTodo, get_policy

log = logging.getLogger(__name__)


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
    views: str | None = None
    views_per_image: int = 1
    n_views_extracted: int = 0
    n_views_reused: int = 0
    view_stores: list[Path] = field(default_factory=list)

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
            "views": self.views,
            "views_per_image": self.views_per_image,
            "views_extracted": self.n_views_extracted,
            "views_reused": self.n_views_reused,
            "views_per_s": round(self.views_per_s, 2),
            "view_stores": [str(p) for p in self.view_stores],
        }


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
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    policy = get_policy(views) if views is not None else None
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
    early = runtime.device_needs_torch(device, options.precision)
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
    store = stores[0]
    t = time.perf_counter()
    unique: dict[str, Record] = {}
    for r in records:
        unique.setdefault(r.key, r)
    todo, wants = _missing(stores, unique)
    view_todo = None if policy is None else ViewTodo(policy, tuple(stores), tuple(wants))
    timings["lookup"] = time.perf_counter() - t
    n_workers = 0 if workers is None else workers
    written = 0
    written_per_store = [0] * len(stores)
    images_written = 0
    finished = False
    try:
        if todo:
            t = time.perf_counter()
            pipeline = _pipeline_module()  # torch is imported here, and only here
            timings["import"] = time.perf_counter() - t
            if dev is None:
                dev = runtime.resolve_device(device)
                warnings[:0] = runtime.precision_warnings(options.precision, dev.type)
            plan = runtime.plan_workers(dev, workers, len(todo))
            n_workers = plan.workers
            log.info(
                "extracting %d of %d images with %s",
                len(todo),
                len(unique),
                extractor.backbone.name,
            )
            stats = pipeline.run_extraction(
                extractor,
                todo,
                src.loader,
                store,
                device=dev,
                batch_size=batch_size,
                plan=plan,
                strict=strict,
                progress=progress,
                source_name=src.name,
                views=view_todo,
            )
            timings.update(stats.timings)
            written = stats.written
            written_per_store = stats.written_per_store
            images_written = stats.images
            skipped.update(_every_path_of(stats.skipped, records, todo))
        finished = True
    finally:
        t = time.perf_counter()
        _compact_all(stores, written_per_store, finished=finished, warnings=warnings)
        timings["compact"] = time.perf_counter() - t
    n_pairs = len(unique) * len(stores)
    wanted = sum(len(w) for w in wants)
    return ExtractResult(
        source=src.name,
        backbone=extractor.backbone.name,
        fingerprint=extractor.fingerprint,
        store=store.path,
        n_images=len(records),
        n_unique=len(unique),
        n_extracted=images_written,
        n_reused=len(unique) - len(todo),
        skipped=list(skipped),
        seconds=time.perf_counter() - start,
        feature_dim=store.feature_dim(),
        device=str(dev) if dev is not None else device,
        precision=options.precision,
        batch_size=batch_size,
        workers=n_workers,
        timings=timings,
        warnings=warnings,
        extractor=extractor,
        views=None if policy is None else policy.name,
        views_per_image=len(stores),
        n_views_extracted=written,
        n_views_reused=n_pairs - wanted,
        view_stores=[s.path for s in stores] if policy is not None else [],
    )


def _missing(
    stores: list[FeatureStore], unique: dict[str, Record]
) -> tuple[list[Record], list[tuple[int, ...]]]:
    """The images with a row missing from one of ``stores`` (view ``i``'s at ``i``) and, for
    each, which views are missing. Refuses to go on if a store is damaged."""
    have = []
    for s in stores:
        s.check()  # refuse to append to a damaged store
        have.append(s.keys())
    todo: list[Record] = []
    wants: list[tuple[int, ...]] = []
    for k, r in unique.items():
        missing = tuple(v for v, keys in enumerate(have) if k not in keys)
        if missing:
            todo.append(r)
            wants.append(missing)
    return todo, wants


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
