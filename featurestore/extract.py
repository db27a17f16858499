"""The extraction loop: missing keys only -> DataLoader workers -> frozen backbone -> store.

Decoding and the eval transform run in DataLoader worker processes, overlapped with the forward
pass; the HDF5 writes run on a writer thread, overlapped too. Every batch is padded to the full
batch size so that a row's numbers never depend on which other images shared its batch (a
resumed run gives the same bits as an uninterrupted one on the same device and precision).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from featurestore.config import cache_root
from featurestore.datasets import ImageLoader, Record, Skipped, Source, open_source
from featurestore.decode import DecodeError
from featurestore.extractor import Extractor, Preprocess, resolve
from featurestore.store import FeatureStore

log = logging.getLogger(__name__)


class ExtractError(RuntimeError):
    """Extraction stopped (``strict`` and a bad file, or an unusable device/precision)."""


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


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractError("--device cuda, but torch sees no CUDA device; use --device cpu")
    return dev


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_workers(device: torch.device) -> int:
    """Decode workers: on CPU one fewer than the cores (at least one), on CUDA up to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores - 1))


class _ImageDataset(Dataset):
    """Decode + eval transform of one record, in a worker process; errors become values."""

    def __init__(self, records: list[Record], loader: ImageLoader, pre: Preprocess) -> None:
        self.records = records
        self.loader = loader
        self.pre = pre
        self.interp = InterpolationMode(pre.interpolation)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        pre = self.pre
        try:
            draft = pre.resize_size if pre.decode == "draft" else None
            img = self.loader.load(self.records[i], draft_size=draft)
            img = F.resize(img, [pre.resize_size], interpolation=self.interp, antialias=True)
            img = F.center_crop(img, [pre.crop_size])
            return i, F.pil_to_tensor(img), None
        except DecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad image must never stop the run
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(
    items: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    idx = [i for i, t, _ in items if t is not None]
    batch = torch.stack([t for _, t, _ in items if t is not None]) if idx else None
    errors = [(i, e) for i, t, e in items if t is None and e is not None]
    return idx, batch, errors


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _provenance(extractor: Extractor, device: torch.device, batch_size: int, workers: int,
                source: str) -> dict[str, Any]:
    import torchvision

    from featurestore import __version__

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "batch_size": batch_size,
        "workers": workers,
        "featurestore": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def run_extraction(
    extractor: Extractor,
    records: list[Record],
    loader: ImageLoader,
    store: FeatureStore,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    strict: bool = False,
    progress: bool = False,
    source_name: str = "",
    timings: dict[str, float] | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[int, list[Skipped]]:
    """Extract ``records`` (all assumed missing) into ``store``. Returns (rows written, skipped).

    Rows are written batch by batch, so an interrupted run keeps every finished batch.
    """
    from tqdm.auto import tqdm

    timings = timings if timings is not None else {}
    for k in ("build", "load_wait", "forward", "write_wait"):
        timings.setdefault(k, 0.0)
    t0 = time.perf_counter()
    if model is None:
        model = extractor.build(device)
    timings["build"] += time.perf_counter() - t0
    prov = _provenance(extractor, device, batch_size, workers, source_name)
    dataset = _ImageDataset(records, loader, extractor.preprocess)
    dl = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
    skipped: list[Skipped] = []
    written = 0
    pending: Future | None = None
    bar = tqdm(total=len(records), unit="img", disable=not progress, desc=extractor.backbone.name,
               dynamic_ncols=True)
    with torch.inference_mode(), ThreadPoolExecutor(max_workers=1) as writer:
        try:
            t = time.perf_counter()
            for idx, batch, errors in dl:
                now = time.perf_counter()
                timings["load_wait"] += now - t
                for i, reason in errors:
                    skipped.append(Skipped(records[i].path, reason))
                    if strict:
                        raise ExtractError(f"{records[i].path}: {reason} (--strict)")
                if batch is not None:
                    n = batch.shape[0]
                    if n < batch_size:  # constant shape: a row never depends on its batch
                        pad = batch.new_zeros((batch_size - n, *batch.shape[1:]))
                        batch = torch.cat([batch, pad])
                    batch = batch.to(device, non_blocking=True)
                    rows = model(batch)[:n].cpu().numpy()
                    t_fwd = time.perf_counter()
                    timings["forward"] += t_fwd - now
                    if pending is not None:
                        pending.result()
                    timings["write_wait"] += time.perf_counter() - t_fwd
                    keys = [records[i].key for i in idx]
                    pending = writer.submit(store.append, keys, np.asarray(rows), provenance=prov)
                    written += n
                bar.update(len(idx) + len(errors))
                t = time.perf_counter()
            if pending is not None:
                t_w = time.perf_counter()
                pending.result()
                timings["write_wait"] += time.perf_counter() - t_w
        finally:
            bar.close()
    return written, skipped


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
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ExtractError("--precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    warnings: list[str] = []
    if precision == "bf16" and dev.type == "cpu" and not cpu_supports_bf16():
        warnings.append("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 may be slower")
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
    src = source if isinstance(source, Source) else open_source(
        source, images_key=images_key, labels_key=labels_key
    )
    timings["scan"] = time.perf_counter() - t
    records = src.select(split)
    skipped = list(src.skipped)
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
    n_workers = default_workers(dev) if workers is None else workers
    written = 0
    finished = False
    try:
        if todo:
            log.info("extracting %d of %d images with %s", len(todo), len(unique), backbone)
            written, bad = run_extraction(
                extractor, todo, src.loader, store, device=dev, batch_size=batch_size,
                workers=min(n_workers, len(todo)), strict=strict, progress=progress,
                source_name=src.name, timings=timings,
            )
            skipped += bad
        finished = True
    finally:
        t = time.perf_counter()
        try:
            store.compact()
        except Exception:
            if finished:
                raise
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
        skipped=skipped,
        seconds=time.perf_counter() - start,
        feature_dim=store.feature_dim(),
        device=str(dev),
        precision=precision,
        batch_size=batch_size,
        workers=n_workers,
        timings=timings,
        warnings=warnings,
    )
