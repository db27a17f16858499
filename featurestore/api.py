"""Load feature rows aligned to a source's records: ``X``, ``y``, keys and class names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.config import cache_root
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
    extractors: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def _as_list(backbone: str | Sequence[str]) -> list[str]:
    if isinstance(backbone, str):
        return [b for b in backbone.split("+") if b]
    return list(backbone)


def load_features(
    source: str | Path | Source,
    *,
    backbone: str | Sequence[str] = "efficientnet_lite0",
    split: str | None = None,
    extract_missing: bool = True,
    cache_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Features:
    """Feature rows for ``source``'s records (one split, or all), aligned on image keys.

    ``backbone`` may name several backbones (a list, or ``"alexnet+vgg16"``): their rows are
    concatenated column-wise in that order, aligned on image keys. With ``extract_missing``
    (default) images not yet in the store are extracted first; otherwise they are an error.
    Images that could not be decoded are left out and listed in ``skipped``. ``options`` go to
    :func:`featurestore.extraction.extract` (nodes, pooling, weights, input_size, precision, ...).
    """
    from featurestore.extraction import extract
    from featurestore.extractor import resolve

    src = source if isinstance(source, Source) else open_source(source)
    records: list[Record] = src.select(split)
    names = list(class_names) if class_names is not None else src.class_names
    blocks: list[np.ndarray] = []
    extractors: list[dict[str, Any]] = []
    skipped = SkippedFiles(src.skipped)
    present: np.ndarray | None = None
    root = cache_root(cache_dir)
    resolve_keys = ("nodes", "pooling", "weights", "input_size", "precision", "decode")
    for name in _as_list(backbone):
        if extract_missing:
            result = extract(src, backbone=name, cache_dir=root, split=split, **options)
            skipped.update(result.skipped)
        ex = resolve(name, **{k: v for k, v in options.items() if k in resolve_keys})
        store = FeatureStore.for_spec(root, ex.spec)
        have = store.keys()
        mask = np.array([r.key in have for r in records], dtype=bool)
        if not extract_missing and not mask.all():
            raise KeyError(
                f"{int((~mask).sum())} of {len(records)} images of {src.name} have no {name} "
                f"rows in {store.path}; run `featurestore extract {src.name} --backbone {name}`"
            )
        present = mask if present is None else present & mask
        blocks.append(store)  # type: ignore[arg-type]  # read below once alignment is known
        extractors.append(
            {
                "backbone": name,
                "fingerprint": ex.fingerprint,
                "nodes": list(ex.nodes),
                "pooling": ex.pooling,
                "store": str(store.path),
                "spec": ex.spec,
            }
        )
    assert present is not None
    kept = [r for r, ok in zip(records, present, strict=True) if ok]
    keys = [r.key for r in kept]
    X = np.hstack([store.read(keys) for store in blocks]) if keys else np.empty((0, 0))
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
