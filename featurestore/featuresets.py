"""Build the feature sets a sweep compares: backbones, concatenations and raw pixels, split.

Split rule: a source with split folders/columns trains on ``train`` and evaluates on the first
of ``val``, ``validation``, ``test`` it has (or the splits named). A source without splits gets
:func:`classifiers.split.stratified_hash_split` on the image keys (seeded, stratified, stable
when images are added). Every feature set of one sweep uses the same images: those every
extractor (and the pixel loader) could decode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.split import stratified_hash_split
from classifiers.sweep import FeatureSet
from featurestore.api import EXTRACTOR_KEYWORDS, rows_for_records
from featurestore.options import ExtractorOptions, split_backbones
from featurestore.pixels import DEFAULT_SIZE, pixel_rows
from featurestore.sources import Skipped, SkippedFiles, Source, SourceError, open_source

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "validation", "test")


@dataclass
class SplitPlan:
    """Which records train and which evaluate, and how that was decided."""

    train_mask: np.ndarray
    test_mask: np.ndarray
    description: str


@dataclass
class SweepData:
    feature_sets: list[FeatureSet]
    plan: SplitPlan
    class_names: list[str]
    keys: list[str]
    paths: list[str]
    skipped: list[Skipped] = field(default_factory=list)


def plan_split(
    src: Source,
    *,
    train_split: str | None = None,
    test_split: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> SplitPlan:
    """Decide the train/test records of ``src`` (see the module docstring for the rule)."""
    splits = src.splits
    labels = [r.label for r in src.records]
    if splits:
        train = train_split or ("train" if "train" in splits else None)
        test = test_split or next((s for s in EVAL_SPLITS if s in splits), None)
        if train is None or test is None or train not in splits or test not in splits:
            raise SourceError(
                f"{src.name} has splits {splits}; name the training and evaluation splits "
                "with --train-split/--test-split"
            )
        split_of = np.array([r.split for r in src.records], dtype=object)
        return SplitPlan(
            split_of == train,
            split_of == test,
            f"given splits: train on '{train}', evaluate on '{test}'",
        )
    if any(lab is None for lab in labels):
        raise SourceError(f"{src.name}: every image needs a label for a sweep")
    is_test = stratified_hash_split(
        [r.key for r in src.records], labels, test_fraction=test_fraction, seed=seed
    )
    return SplitPlan(
        ~is_test,
        is_test,
        f"no splits in the source: deterministic stratified hash split of the image "
        f"keys, test fraction {test_fraction}, seed {seed}",
    )


def build_sweep_data(
    source: str | Path | Source,
    *,
    backbones: Sequence[str] = (),
    combos: Sequence[str] = (),
    pixels: bool = True,
    pixel_size: int = DEFAULT_SIZE,
    train_split: str | None = None,
    test_split: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> SweepData:
    """Extract (through the cache) and assemble every requested feature set."""
    src = source if isinstance(source, Source) else open_source(source)
    plan = plan_split(src, train_split=train_split, test_split=test_split)
    use = plan.train_mask | plan.test_mask
    records = [r for r, u in zip(src.records, use, strict=True) if u]
    train_mask = plan.train_mask[use]
    class_names = sorted({r.label for r in records if r.label is not None})
    sub = src.subset(records)
    blocks: dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
    skipped = SkippedFiles(src.skipped)
    extractor_kw = {k: options.pop(k) for k in EXTRACTOR_KEYWORDS if k in options}
    wanted = list(dict.fromkeys([*backbones, *(p for c in combos for p in split_backbones(c))]))
    for name in wanted:
        X, ok, feats = rows_for_records(
            sub,
            records,
            backbone=ExtractorOptions.make(name, **extractor_kw),
            cache_dir=cache_dir,
            class_names=class_names,
            progress=progress,
            **options,
        )
        skipped.update(feats.skipped)
        blocks[name] = (X, ok, feats.extractors[0].to_json())
    if pixels:
        X, ok, bad = pixel_rows(records, src.loader, size=pixel_size)
        skipped.update(bad)
        blocks[f"pixels{pixel_size}"] = (X, ok, {"pixels": pixel_size})
    if not blocks:
        raise ValueError("nothing to compare: give at least one backbone, combo or pixels")
    ok_all = np.logical_and.reduce([ok for _, ok, _ in blocks.values()])
    y = np.array([class_names.index(r.label) for r in records], dtype=np.int64)
    tr, te = train_mask & ok_all, ~train_mask & ok_all
    sets: list[FeatureSet] = []
    order = [*backbones, *combos] + ([f"pixels{pixel_size}"] if pixels else [])
    for name in dict.fromkeys(order):
        parts = split_backbones(name) if name in combos else [name]
        X = np.hstack([blocks[p][0] for p in parts])
        prov = {"extractors": [blocks[p][2] for p in parts if "pixels" not in blocks[p][2]]}
        if name.startswith("pixels") and name not in combos:
            prov = {"pixels": {"size": pixel_size, "resize": "bilinear squash, /255"}}
        sets.append(
            FeatureSet(
                name=name,
                X_train=X[tr],
                y_train=y[tr],
                X_test=X[te],
                y_test=y[te],
                class_names=class_names,
                provenance=prov,
            )
        )
    return SweepData(
        feature_sets=sets,
        plan=plan,
        class_names=class_names,
        keys=[r.key for r in records],
        paths=[r.path for r in records],
        skipped=list(skipped),
    )
