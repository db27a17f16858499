"""Load feature rows aligned to a source's records: ``X``, ``y``, keys and class names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.config import cache_root
from featurestore.errors import MissingRowsError
from featurestore.extraction import extract
from featurestore.extractor import Extractor, ExtractorRecord, resolve
from featurestore.options import ExtractorOptions, split_backbones
from featurestore.sources import Record, Skipped, SkippedFiles, Source, open_source
from featurestore.store import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Rows aligned with records. ``y`` holds indices into ``class_names`` (-1: no label)."""

    X: np.ndarray
    y: np.ndarray
    keys: list[str]
    paths: list[str]
    labels: list[str | None]
    class_names: list[str]
    split: str | None
    extractors: list[ExtractorRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def load_features(
    source: str | Path | Source,
    *,
    backbone: str | Sequence[str] | ExtractorOptions = "efficientnet_lite0",
    split: str | None = None,
    extract_missing: bool = True,
    cache_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Features:
    """Feature rows for ``source``'s records (one split, or all), aligned on image keys.

    ``backbone`` may name several backbones (a list, or ``"alexnet+vgg16"``): their rows are
    concatenated column-wise in that order, aligned on image keys; or it is one
    :class:`ExtractorOptions`. With ``extract_missing`` (default) images not yet in the store
    are extracted first; otherwise they are an error. Images that could not be decoded are left
    out and listed in ``skipped``. ``options`` are the extractor options (nodes, pooling,
    weights, input_size, precision, decode), the same for every backbone, and, with
    ``extract_missing``, the run options of :func:`featurestore.extraction.extract`
    (batch_size, workers, device, progress, ...).
    """
    src = source if isinstance(source, Source) else open_source(source)
    records: list[Record] = src.select(split)
    names = list(class_names) if class_names is not None else src.class_names
    extractor_kw = {k: options.pop(k) for k in EXTRACTOR_KEYWORDS if k in options}
    stores: list[FeatureStore] = []
    extractors: list[ExtractorRecord] = []
    skipped = SkippedFiles(src.skipped)
    present = np.ones(len(records), dtype=bool)
    root = cache_root(cache_dir)
    for opts in _options_list(backbone, extractor_kw):
        ex, more = _extractor_for(src, opts, root, split, extract_missing, options)
        skipped.update(more)
        store = FeatureStore.for_spec(root, ex.spec)
        have = store.keys()
        mask = np.array([r.key in have for r in records], dtype=bool)
        if not extract_missing and not mask.all():
            raise MissingRowsError(
                f"{int((~mask).sum())} of {len(records)} images of {src.name} have no "
                f"{opts.backbone} rows in {store.path}; run `featurestore extract {src.name} "
                f"{' '.join(opts.cli_args())}`"
            )
        present &= mask
        stores.append(store)
        extractors.append(ExtractorRecord.of(ex, store.path))
    kept = [r for r, ok in zip(records, present, strict=True) if ok]
    keys = [r.key for r in kept]
    X = np.hstack([store.read(keys) for store in stores]) if keys else np.empty((0, 0))
    index = {c: i for i, c in enumerate(names)}
    y = np.array(
        [index.get(r.label, -1) if r.label is not None else -1 for r in kept], dtype=np.int64
    )
    return Features(
        X=X.astype(np.float32, copy=False),
        y=y,
        keys=keys,
        paths=[r.path for r in kept],
        labels=[r.label for r in kept],
        class_names=names,
        split=split,
        extractors=extractors,
        skipped=list(skipped),
    )


EXTRACTOR_KEYWORDS = ("nodes", "pooling", "weights", "input_size", "precision", "decode")


def _options_list(
    backbone: str | Sequence[str] | ExtractorOptions, extractor_kw: dict[str, Any]
) -> list[ExtractorOptions]:
    if isinstance(backbone, ExtractorOptions):
        if extractor_kw:
            raise TypeError("give either ExtractorOptions or extractor keywords, not both")
        return [backbone]
    return [ExtractorOptions.make(name, **extractor_kw) for name in split_backbones(backbone)]


def _extractor_for(
    src: Source,
    opts: ExtractorOptions,
    root: Path,
    split: str | None,
    extract_missing: bool,
    run_options: dict[str, Any],
) -> tuple[Extractor, list[Skipped]]:
    """The resolved extractor of ``opts`` (extracting what is missing first) and the images
    that extraction skipped."""
    if not extract_missing:
        return resolve(opts), []
    result = extract(src, backbone=opts, cache_dir=root, split=split, **run_options)
    assert result.extractor is not None
    return result.extractor, result.skipped


def rows_for_records(
    src: Source, records: Sequence[Record], **kwargs: Any
) -> tuple[np.ndarray, np.ndarray, Features]:
    """(X, ok, features): one row per record (zeros where ``ok`` is False: undecodable).

    ``kwargs`` go to :func:`load_features`, which runs on ``src``.
    """
    feats = load_features(src, **kwargs)
    have = {k: i for i, k in enumerate(feats.keys)}
    ok = np.array([r.key in have for r in records], dtype=bool)
    X = np.zeros((len(records), feats.X.shape[1]), dtype=np.float32)
    X[ok] = feats.X[[have[r.key] for r, o in zip(records, ok, strict=True) if o]]
    return X, ok, feats
