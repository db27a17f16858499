"""Load feature rows aligned to a source's records: ``X``, ``y``, keys and class names.

With ``views`` every view of every image is a row (image-major: an image's K views are K
consecutive rows), each tagged with its image key and view index, so that heads train on every
view and cross-validation groups an image's views by its key.
"""

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
from featurestore.views import ViewPolicy, average_views, get_policy

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Rows aligned with records. ``y`` holds indices into ``class_names`` (-1: no label).

    With views (``views`` names the policy), row ``r`` is view ``view[r]`` of the image
    ``keys[r]``: each image's ``n_views`` rows are consecutive, in view order, and ``y``,
    ``keys``, ``paths`` and ``labels`` repeat per view. Without views ``view`` is all zeros
    (every row is the plain eval transform, which is every policy's view 0).
    """

    X: np.ndarray
    y: np.ndarray
    keys: list[str]
    paths: list[str]
    labels: list[str | None]
    class_names: list[str]
    split: str | None
    extractors: list[ExtractorRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    view: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    views: str | None = None

    def __post_init__(self) -> None:
        if len(self.view) != len(self.keys):
            if len(self.view) or self.views is not None:
                raise ValueError(f"{len(self.view)} view indices for {len(self.keys)} rows")
            self.view = np.zeros(len(self.keys), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_views(self) -> int:
        """Views per image (1 without views)."""
        return 1 if self.views is None else get_policy(self.views).n_views

    def only_view(self, index: int = 0) -> Features:
        """The rows of one view (view 0: the plain rows), one per image."""
        sel = np.flatnonzero(self.view == index)
        return Features(
            X=self.X[sel],
            y=self.y[sel],
            keys=[self.keys[i] for i in sel],
            paths=[self.paths[i] for i in sel],
            labels=[self.labels[i] for i in sel],
            class_names=self.class_names,
            split=self.split,
            extractors=self.extractors,
            skipped=self.skipped,
            view=self.view[sel],
            views=None,
        )

    def average_views(self, scores: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Test-time averaging: per-row ``scores`` (e.g. a head's ``decision_function`` or
        ``predict_proba`` on ``X``) averaged over each image's views; (per-image scores, image
        keys in row order). See :func:`featurestore.views.average_views`."""
        return average_views(scores, self.keys)


def load_features(
    source: str | Path | Source,
    *,
    backbone: str | Sequence[str] | ExtractorOptions = "efficientnet_lite0",
    split: str | None = None,
    views: str | ViewPolicy | None = None,
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

    ``views``: a view policy (``"flip"``, ``"crops10"``, ``"random16"``): every view of every
    image becomes a row (image-major, see :class:`Features`); an image is kept only when every
    view of it has a row.
    """
    policy = get_policy(views) if views is not None else None
    n_views = 1 if policy is None else policy.n_views
    src = source if isinstance(source, Source) else open_source(source)
    records: list[Record] = src.select(split)
    names = list(class_names) if class_names is not None else src.class_names
    extractor_kw = {k: options.pop(k) for k in EXTRACTOR_KEYWORDS if k in options}
    stores: list[list[FeatureStore]] = []  # per backbone, per view
    extractors: list[ExtractorRecord] = []
    skipped = SkippedFiles(src.skipped)
    present = np.ones(len(records), dtype=bool)
    root = cache_root(cache_dir)
    for opts in _options_list(backbone, extractor_kw):
        ex, more = _extractor_for(src, opts, root, split, extract_missing, options, policy)
        skipped.update(more)
        specs = [ex.spec] if policy is None else policy.specs(ex.spec)
        view_stores = [FeatureStore.for_spec(root, spec) for spec in specs]
        mask = np.ones(len(records), dtype=bool)
        for store in view_stores:
            have = store.keys()
            mask &= np.array([r.key in have for r in records], dtype=bool)
        if not extract_missing and not mask.all():
            what = opts.backbone if policy is None else f"{opts.backbone} {policy.name} view"
            args = opts.cli_args() + ([] if policy is None else ["--views", policy.name])
            raise MissingRowsError(
                f"{int((~mask).sum())} of {len(records)} images of {src.name} have no "
                f"{what} rows in {view_stores[0].path.parent}; run `featurestore extract "
                f"{src.name} {' '.join(args)}`"
            )
        present &= mask
        stores.append(view_stores)
        extractors.append(ExtractorRecord.of(ex, view_stores[0].path))
    kept = [r for r, ok in zip(records, present, strict=True) if ok]
    keys = [r.key for r in kept]
    X = np.hstack([_view_rows(s, keys) for s in stores]) if keys else np.empty((0, 0))
    index = {c: i for i, c in enumerate(names)}
    y = np.array(
        [index.get(r.label, -1) if r.label is not None else -1 for r in kept], dtype=np.int64
    )

    def per_view(values: list[Any]) -> list[Any]:
        return values if n_views == 1 else [v for v in values for _ in range(n_views)]

    return Features(
        X=X.astype(np.float32, copy=False),
        y=np.repeat(y, n_views),
        keys=per_view(keys),
        paths=per_view([r.path for r in kept]),
        labels=per_view([r.label for r in kept]),
        class_names=names,
        split=split,
        extractors=extractors,
        skipped=list(skipped),
        view=np.tile(np.arange(n_views, dtype=np.int64), len(kept)),
        views=None if policy is None else policy.name,
    )


def _view_rows(stores: list[FeatureStore], keys: list[str]) -> np.ndarray:
    """Rows of ``keys`` in every view's store, image-major: (len(keys) * len(stores), D)."""
    if len(stores) == 1:
        return stores[0].read(keys)
    per_view = [store.read(keys) for store in stores]
    return np.stack(per_view, axis=1).reshape(len(keys) * len(stores), -1)


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
    policy: ViewPolicy | None = None,
) -> tuple[Extractor, list[Skipped]]:
    """The resolved extractor of ``opts`` (extracting what is missing first, every view with
    ``policy``) and the images that extraction skipped."""
    if not extract_missing:
        return resolve(opts), []
    result = extract(src, backbone=opts, cache_dir=root, split=split, views=policy, **run_options)
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
