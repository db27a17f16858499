"""Extract: which images of a source are missing from the store, and the summary of a run.

:func:`extract` resolves the extractor (its fingerprint names the store), scans the source,
looks its keys up in the store and hands only the missing images to the extraction loop in
:mod:`featurestore.pipeline`. Everything up to that hand-over runs without torch, which is
imported only when at least one image needs extracting (or the options need a torch device
checked: ``device`` other than ``cpu``/``auto``, or ``precision="fp16"``): a run whose rows are
all cached never pays for loading torch.
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
from featurestore.options import COMBO_SEPARATOR, ExtractorOptions, split_backbones
from featurestore.sources import Record, Skipped, SkippedFiles, Source, open_source
from featurestore.store import FeatureStore, StoreCorruptError, StoreError

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
    #: For a combination (``backbone="a+b"``): each backbone's own result, in column order.
    parts: list[ExtractResult] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.n_extracted / self.seconds if self.seconds > 0 else 0.0

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
) -> ExtractResult:
    """Extract features of every image of ``source`` not yet in the store; return a summary.

    ``source``: an image folder, a CSV manifest, an HDF5 file/folder of arrays,
    ``builtin:digits`` or an already opened :class:`Source`. ``backbone``: a backbone name with
    the extractor options as keywords, or an :class:`ExtractorOptions` (then the keywords
    ``nodes`` ... ``decode`` are not given). Images whose rows are already in the store (same
    content key, same extractor fingerprint) are reused, never recomputed. The result carries
    the resolved :class:`~featurestore.extractor.Extractor`, so callers need not resolve again.

    torch is imported only when an image needs extracting, or up front when the options need a
    torch device checked (``device`` other than ``"cpu"``/``"auto"``, or ``precision="fp16"``).
    When nothing was extracted, the result's ``device`` is ``device`` as given (``"auto"`` is not
    resolved) and its ``workers`` is ``workers`` as given (0 when automatic).

    ``backbone`` may name a combination (``"alexnet+vgg16"``, as :func:`load_features` and
    ``sweep --combo`` take it): each backbone is extracted in turn, with the same options, from
    one scan of the source; the result (:meth:`ExtractResult.combined`) lists each one's in
    ``parts``.
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(backbone, str) and COMBO_SEPARATOR in backbone:
        src = (
            source
            if isinstance(source, Source)
            else open_source(source, images_key=images_key, labels_key=labels_key)
        )
        chosen = dict(nodes=nodes, pooling=pooling, weights=weights, input_size=input_size)
        chosen.update(precision=precision, decode=decode)
        run = dict(batch_size=batch_size, workers=workers, device=device, cache_dir=cache_dir)
        run.update(strict=strict, progress=progress, split=split)
        parts = [
            extract(src, backbone=ExtractorOptions.make(name, **chosen), **run)
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
    store = FeatureStore.for_spec(cache_root(cache_dir), extractor.spec)
    t = time.perf_counter()
    store.check()  # refuse to append to a damaged store
    have = store.keys()
    unique: dict[str, Record] = {}
    for r in records:
        unique.setdefault(r.key, r)
    todo = [r for k, r in unique.items() if k not in have]
    timings["lookup"] = time.perf_counter() - t
    n_workers = 0 if workers is None else workers
    written = 0
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
            )
            timings.update(stats.timings)
            written = stats.written
            skipped.update(_every_path_of(stats.skipped, records, todo))
        finished = True
    finally:
        t = time.perf_counter()
        _compact(store, finished=finished, written=written, warnings=warnings)
        timings["compact"] = time.perf_counter() - t
    return ExtractResult(
        source=src.name,
        backbone=extractor.backbone.name,
        fingerprint=extractor.fingerprint,
        store=store.path,
        n_images=len(records),
        n_unique=len(unique),
        n_extracted=written,
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
