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

from featurestore.config import cache_root
from featurestore.errors import ExtractError
from featurestore.extractor import resolve
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
        }


_BF16_WARNING = "this CPU has no native bf16 (AVX512-BF16/AMX): bf16 may be slower"


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def extract(
    source: str | Path | Source,
    *,
    backbone: str,
    nodes: list[str] | None = None,
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
    ``builtin:digits`` or an already opened :class:`Source`. Images whose rows are already in the
    store (same content key, same extractor fingerprint) are reused, never recomputed.

    torch is imported only when an image needs extracting, or up front when the options need a
    torch device checked (``device`` other than ``"cpu"``/``"auto"``, or ``precision="fp16"``).
    When nothing was extracted, the result's ``device`` is ``device`` as given (``"auto"`` is not
    resolved) and its ``workers`` is ``workers`` as given (0 when automatic).
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = None  # the torch.device, once resolved
    if device == "cpu" or (device == "auto" and precision != "fp16"):
        dev_type = "cpu" if device == "cpu" else None  # None: decided when there is work
    else:
        dev = _pipeline_module().resolve_device(device)
        dev_type = dev.type
    if precision == "fp16" and dev_type != "cuda":
        raise ExtractError("--precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    warnings: list[str] = []
    if precision == "bf16" and dev_type == "cpu" and not cpu_supports_bf16():
        warnings.append(_BF16_WARNING)
    extractor = resolve(
        backbone,
        nodes=nodes,
        pooling=pooling,
        weights=weights,
        input_size=input_size,
        precision=precision,
        decode=decode,
    )
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
    root = cache_root(cache_dir)
    store = FeatureStore.for_spec(root, extractor.spec)
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
                dev = pipeline.resolve_device(device)
                if precision == "bf16" and dev.type == "cpu" and not cpu_supports_bf16():
                    warnings.insert(0, _BF16_WARNING)
            replica_workers = (
                pipeline.cpu_replica_workers() if workers is None and dev.type == "cpu" else 0
            )
            n_workers = replica_workers or (
                pipeline.default_workers(dev) if workers is None else workers
            )
            log.info("extracting %d of %d images with %s", len(todo), len(unique), backbone)
            written, bad = pipeline.run_extraction(
                extractor,
                todo,
                src.loader,
                store,
                device=dev,
                batch_size=batch_size,
                workers=min(n_workers, len(todo)),
                strict=strict,
                progress=progress,
                source_name=src.name,
                timings=timings,
                replica_workers=replica_workers > 0,
            )
            # A bad image is decoded once per content key: list every path holding those bytes.
            paths_of: dict[str, list[Any]] = {}
            for r in records:
                paths_of.setdefault(r.key, []).append(r)
            key_of = {r.path: r.key for r in todo}
            skipped.update(
                Skipped(r.path, s.reason)
                for s in bad
                for r in paths_of.get(key_of.get(s.path, ""), [s])
            )
        finished = True
    finally:
        t = time.perf_counter()
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
        timings["compact"] = time.perf_counter() - t
    return ExtractResult(
        source=src.name,
        backbone=backbone,
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
        precision=precision,
        batch_size=batch_size,
        workers=n_workers,
        timings=timings,
        warnings=warnings,
    )
