"""The feature sets a sweep compares (backbones, concatenations, raw pixels) and its split.

Split rule (:func:`plan_split`): a source with an evaluation split trains on ``train`` and
evaluates on the first of ``val``, ``validation``, ``test`` it has (or the splits named). A
source without splits, or with a training split and nothing to evaluate on when a
``test_fraction`` is given, gets :func:`classifiers.split.stratified_hash_split` on the image
keys (seeded, stratified, stable when images are added). Every feature set of one sweep uses
the same images: those every extractor (and the pixel loader) could decode.

Views (``views=POLICY``): every extractor feature set (not raw pixels) gets a twin, labelled
``<label> views=<policy>`` (:func:`views_label`), trained on every view of every training
image (its training rows are image-major, K per image, grouped by image key for the CV:
:meth:`SweepData.train_groups`) and evaluated on the identity view of each evaluation image;
:class:`ViewRows` keeps every view of the evaluation images for test-time averaging, scored
as the row ``<label> views=<policy> tta`` (:func:`tta_label`). The extraction cost of the
views is recorded per extractor (:class:`ViewCost`).

Labels (:func:`feature_set_labels`): a feature set is called by its backbone(s); when one
sweep holds several variants of a backbone (two nodes, two precisions, ...), each variant's
name carries the options that tell it apart, ``efficientnet_lite0[precision=bf16]``.
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
from featurestore.errors import OptionError
from featurestore.extraction import extract
from featurestore.options import ExtractorOptions, split_backbones
from featurestore.pixels import DEFAULT_SIZE, pixel_rows
from featurestore.sources import Record, Skipped, SkippedFiles, Source, SourceError, open_source
from featurestore.views import ViewPolicy, get_policy

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "EVAL_SPLITS",
    "FeatureSetSpec",
    "SplitPlan",
    "SweepData",
    "ViewCost",
    "ViewRows",
    "build_sweep_data",
    "feature_set_labels",
    "feature_set_specs",
    "plan_split",
    "tta_label",
    "views_label",
]

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "validation", "test")
#: Share of each class held out when the source has no evaluation split of its own.
DEFAULT_TEST_FRACTION = 0.2


@dataclass
class SplitPlan:
    """Which records train and which evaluate, and how that was decided.

    ``test_fraction`` and ``seed`` are set when a hash split made the evaluation side (they
    are ``None`` when the source's own splits were used).
    """

    train_mask: np.ndarray
    test_mask: np.ndarray
    description: str
    test_fraction: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class FeatureSetSpec:
    """What one feature set is made of: extractors in column order, or raw pixels."""

    parts: tuple[ExtractorOptions, ...] = ()
    pixels: int | None = None


def views_label(label: str, policy: str) -> str:
    """The label of ``label``'s feature set trained on every view of ``policy``."""
    return f"{label} views={policy}"


def tta_label(label: str, policy: str) -> str:
    """The label of the row that scores that feature set's heads with test-time averaging."""
    return f"{views_label(label, policy)} tta"


@dataclass
class ViewRows:
    """The views side of a feature set trained on views.

    ``X_test``: (evaluation images, ``n_views``, D), every view of every evaluation image;
    ``plain``: the label of the same features without views; ``tta``: the label of the
    test-time-averaged row.
    """

    policy: str
    n_views: int
    plain: str
    tta: str
    X_test: np.ndarray


@dataclass(frozen=True)
class ViewCost:
    """What extracting one extractor's views cost in this sweep: ``extracted`` (image, view)
    pairs computed in ``seconds``, ``reused`` found in the cache, for ``images`` images."""

    backbone: str
    policy: str
    n_views: int
    images: int
    extracted: int
    reused: int
    seconds: float

    def text(self) -> str:
        rate = f", {self.extracted / self.seconds:.1f} views/s" if self.seconds > 0 else ""
        return (
            f"{self.backbone} {self.policy} views ({self.n_views} per image, {self.images} "
            f"images): {self.extracted} extracted in {self.seconds:.1f} s{rate}, "
            f"{self.reused} reused from the cache"
        )


@dataclass
class SweepData:
    """Everything a sweep fits on and reports about.

    ``train_records`` and ``test_records`` are aligned with every feature set's ``X_train``
    and ``X_test`` rows (a feature set trained on views has ``n_views`` consecutive training
    rows per training record; ``views`` maps its label to its :class:`ViewRows`); ``keys`` and
    ``paths`` list every record the split uses.
    """

    feature_sets: list[FeatureSet]
    plan: SplitPlan
    class_names: list[str]
    keys: list[str]
    paths: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    source: Source | None = None
    train_records: list[Record] = field(default_factory=list)
    test_records: list[Record] = field(default_factory=list)
    specs: dict[str, FeatureSetSpec] = field(default_factory=dict)
    views: dict[str, ViewRows] = field(default_factory=dict)
    view_costs: list[ViewCost] = field(default_factory=list)

    def train_groups(self, name: str) -> list[str]:
        """The image key of each training row of feature set ``name`` (the CV groups)."""
        keys = [r.key for r in self.train_records]
        k = self.views[name].n_views if name in self.views else 1
        return keys if k == 1 else [key for key in keys for _ in range(k)]

    def feature_set(self, name: str) -> FeatureSet:
        """The feature set of a row: its own, or for a test-time-averaged row the feature set
        trained on views that it scores."""
        for label, rows in self.views.items():
            if rows.tta == name:
                name = label
        return next(fs for fs in self.feature_sets if fs.name == name)

    def class_counts(self, side: str) -> list[int]:
        """Images per class (in ``class_names`` order) on the ``"train"`` or ``"test"`` side."""
        records = self.train_records if side == "train" else self.test_records
        index = {c: i for i, c in enumerate(self.class_names)}
        counts = [0] * len(self.class_names)
        for r in records:
            counts[index[r.label]] += 1
        return counts


def _hash_plan(
    src: Source, records: Sequence[Record], base: np.ndarray, fraction: float, seed: int, what: str
) -> SplitPlan:
    """Hash-split the records selected by ``base`` (stratified by label)."""
    chosen = np.flatnonzero(base)
    labels = [records[i].label for i in chosen]
    if any(lab is None for lab in labels):
        raise SourceError(f"{src.name}: every image needs a label for a sweep")
    try:
        is_test = stratified_hash_split(
            [records[i].key for i in chosen], labels, test_fraction=fraction, seed=seed
        )
    except ValueError as exc:
        raise OptionError(f"--test-fraction/--seed: {exc}") from None
    test = np.zeros(len(records), dtype=bool)
    test[chosen[is_test]] = True
    return SplitPlan(
        base & ~test,
        test,
        f"{what}: deterministic stratified hash split of the image keys, test fraction "
        f"{fraction}, seed {seed}",
        test_fraction=fraction,
        seed=seed,
    )


def plan_split(
    src: Source,
    *,
    train_split: str | None = None,
    test_split: str | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> SplitPlan:
    """Decide the train/test records of ``src`` (see the module docstring for the rule).

    ``test_fraction`` (default :data:`DEFAULT_TEST_FRACTION` for a source without splits)
    also splits a source whose only split is its training split; it is refused for a source
    that has an evaluation split of its own, since it would not be used.

    Raises:
        SourceError: an unlabelled image, a named split the source lacks, or no evaluation
            split and no ``test_fraction`` (the message says what would work).
        OptionError: ``test_fraction`` given for a source with an evaluation split, or out of
            (0, 1).
    """
    records = src.records
    splits = src.splits
    if not splits:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        base = np.ones(len(records), dtype=bool)
        return _hash_plan(src, records, base, fraction, seed, "no splits in the source")
    for name, flag in ((train_split, "--train-split"), (test_split, "--test-split")):
        if name is not None and name not in splits:
            raise SourceError(f"{flag} {name!r}: {src.name} has the splits {splits}")
    train = train_split or ("train" if "train" in splits else None)
    if train is None:
        raise SourceError(
            f"{src.name} has the splits {splits} and none is called 'train'; name the "
            "training split with --train-split (and the evaluation split with --test-split)"
        )
    others = [s for s in EVAL_SPLITS if s in splits and s != train]
    test = test_split or (others[0] if others else None)
    split_of = np.array([r.split for r in records], dtype=object)
    if test is None:
        if test_fraction is None:
            raise SourceError(
                f"{src.name} has only the split(s) {splits}: nothing to evaluate on. Add "
                f"--test-fraction {DEFAULT_TEST_FRACTION} to hold out a deterministic, "
                f"stratified {DEFAULT_TEST_FRACTION:.0%} of '{train}' (--seed N draws "
                "another), or sweep a source that also holds an evaluation split (e.g. a "
                "folder with both the *_train.h5 and the *_test.h5 file)"
            )
        return _hash_plan(
            src, records, split_of == train, test_fraction, seed, f"only the split '{train}'"
        )
    if test == train:
        raise SourceError(f"--train-split and --test-split both name '{train}'")
    if test_fraction is not None:
        raise OptionError(
            f"--test-fraction holds out part of a source without an evaluation split, but "
            f"{src.name} evaluates on its split '{test}'; leave --test-fraction out"
        )
    plan = SplitPlan(
        split_of == train,
        split_of == test,
        f"given splits: train on '{train}', evaluate on '{test}'",
    )
    used = plan.train_mask | plan.test_mask
    if any(r.label is None for r, u in zip(records, used, strict=True) if u):
        raise SourceError(f"{src.name}: every image needs a label for a sweep")
    return plan


def feature_set_specs(
    backbones: Sequence[str | ExtractorOptions] = (),
    combos: Sequence[str | Sequence[str | ExtractorOptions]] = (),
    *,
    pixels: bool = True,
    pixel_size: int = DEFAULT_SIZE,
    **extractor_options: Any,
) -> list[FeatureSetSpec]:
    """The sweep's feature sets in order: backbones, combos, then raw pixels (deduplicated).

    A backbone is a name (given ``extractor_options``, shared by every name) or an
    :class:`ExtractorOptions` (used as it is); a combo is ``"a+b"`` or a sequence of those.
    """

    def options(item: str | ExtractorOptions) -> ExtractorOptions:
        if isinstance(item, ExtractorOptions):
            return item
        return ExtractorOptions.make(item, **extractor_options)

    specs = [FeatureSetSpec((options(b),)) for b in backbones]
    for combo in combos:
        items = split_backbones(combo) if isinstance(combo, str) else list(combo)
        specs.append(FeatureSetSpec(_distinct(tuple(options(i) for i in items))))
    if pixels:
        specs.append(FeatureSetSpec(pixels=pixel_size))
    return list(dict.fromkeys(specs))


def _distinct(parts: tuple[ExtractorOptions, ...]) -> tuple[ExtractorOptions, ...]:
    """A combination's parts, refused when one repeats (same backbone, same options)."""
    repeated = [o.backbone for n, o in enumerate(parts) if o in parts[:n]]
    if repeated:
        raise OptionError(
            f"combination {'+'.join(o.backbone for o in parts)!r} repeats "
            f"{', '.join(repeated)} with the same options: its columns would be those features "
            "twice"
        )
    return parts


def _option_values(o: ExtractorOptions) -> dict[str, str]:
    return {
        "nodes": ",".join(o.nodes) or "default",
        "pooling": o.pooling or "default",
        "weights": str(o.weights),
        "input_size": "default" if o.input_size is None else str(o.input_size),
        "precision": o.precision,
        "decode": o.decode,
    }


def feature_set_labels(specs: Sequence[FeatureSetSpec]) -> list[str]:
    """One unique label per spec: ``pixels16``, ``resnet18``, ``alexnet+vgg16``, and for
    variants of one backbone in the same sweep ``name[option=value,...]`` with exactly the
    options in which the variants differ."""
    variants: dict[str, list[ExtractorOptions]] = {}
    for spec in specs:
        for part in spec.parts:
            seen = variants.setdefault(part.backbone, [])
            if part not in seen:
                seen.append(part)
    differing: dict[str, list[str]] = {}
    for backbone, opts in variants.items():
        values = [_option_values(o) for o in opts]
        differing[backbone] = [k for k in values[0] if len({v[k] for v in values}) > 1]

    def part_label(o: ExtractorOptions) -> str:
        keys = differing[o.backbone]
        if not keys:
            return o.backbone
        values = _option_values(o)
        return f"{o.backbone}[{','.join(f'{k}={values[k]}' for k in keys)}]"

    return [
        f"pixels{spec.pixels}" if spec.pixels else "+".join(part_label(p) for p in spec.parts)
        for spec in specs
    ]


def build_sweep_data(
    source: str | Path | Source,
    *,
    backbones: Sequence[str | ExtractorOptions] = (),
    combos: Sequence[str | Sequence[str | ExtractorOptions]] = (),
    pixels: bool = True,
    pixel_size: int = DEFAULT_SIZE,
    train_split: str | None = None,
    test_split: str | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    plan: SplitPlan | None = None,
    views: str | ViewPolicy | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> SweepData:
    """Extract (through the cache) and assemble every requested feature set.

    ``options``: the extractor options shared by every backbone given by name (nodes, pooling,
    weights, input_size, precision, decode) and the run options of extraction (batch_size,
    workers, device). ``plan`` skips :func:`plan_split` (the caller planned it already).
    ``views``: a view policy; every extractor feature set also comes trained on every view
    (see the module docstring).
    """
    policy = None if views is None else get_policy(views)
    src = source if isinstance(source, Source) else open_source(source)
    if plan is None:
        plan = plan_split(
            src,
            train_split=train_split,
            test_split=test_split,
            test_fraction=test_fraction,
            seed=seed,
        )
    extractor_kw = {k: options.pop(k) for k in EXTRACTOR_KEYWORDS if k in options}
    specs = feature_set_specs(
        backbones, combos, pixels=pixels, pixel_size=pixel_size, **extractor_kw
    )
    if not specs:
        raise OptionError("nothing to compare: give at least one backbone, combo or pixels")
    if policy is not None and not any(s.parts for s in specs):
        raise OptionError("views are of a backbone's features: give a backbone or a combo")
    use = plan.train_mask | plan.test_mask
    records = [r for r, u in zip(src.records, use, strict=True) if u]
    train_mask = plan.train_mask[use]
    class_names = sorted({r.label for r in records if r.label is not None})
    sub = src.subset(records)
    skipped = SkippedFiles(src.skipped)
    blocks: dict[ExtractorOptions | int, tuple[np.ndarray, np.ndarray]] = {}
    records_of: dict[ExtractorOptions, dict[str, Any]] = {}
    view_blocks: dict[ExtractorOptions, np.ndarray] = {}
    costs: list[ViewCost] = []
    for opts in dict.fromkeys(p for s in specs for p in s.parts):
        if policy is not None:
            costs.append(_extract_views(sub, opts, policy, cache_dir, progress, options))
        X, ok, feats = rows_for_records(
            sub,
            records,
            backbone=opts,
            views=policy,
            cache_dir=cache_dir,
            class_names=class_names,
            progress=progress,
            **options,
        )
        skipped.update(feats.skipped)
        if policy is not None:
            view_blocks[opts], X = X, X[:, 0]
        blocks[opts] = (X, ok)
        records_of[opts] = feats.extractors[0].to_json()
    for size in {s.pixels for s in specs if s.pixels}:
        X, ok, bad = pixel_rows(records, src.loader, size=size)
        skipped.update(bad)
        blocks[size] = (X, ok)
    ok_all = np.logical_and.reduce([ok for _, ok in blocks.values()])
    y = np.array([class_names.index(r.label) for r in records], dtype=np.int64)
    tr, te = train_mask & ok_all, ~train_mask & ok_all
    if not tr.any() or not te.any():
        side = "training" if not tr.any() else "evaluation"
        raise SourceError(f"{src.name}: no decodable image on the {side} side of the split")
    sets: list[FeatureSet] = []
    view_rows: dict[str, ViewRows] = {}
    labels = feature_set_labels(specs)
    for name, spec in zip(labels, specs, strict=True):
        if spec.pixels:
            X = blocks[spec.pixels][0]
            prov: dict[str, Any] = {
                "pixels": {"size": spec.pixels, "resize": "bilinear squash, /255"}
            }
        else:
            X = np.hstack([blocks[p][0] for p in spec.parts])
            prov = {"extractors": [records_of[p] for p in spec.parts]}
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
        if policy is not None and spec.parts:
            V = np.concatenate([view_blocks[p] for p in spec.parts], axis=2)
            fs, rows = _views_set(name, V, y, tr, te, class_names, policy, prov)
            sets.append(fs)
            view_rows[fs.name] = rows
    return SweepData(
        feature_sets=sets,
        plan=plan,
        class_names=class_names,
        keys=[r.key for r in records],
        paths=[r.path for r in records],
        skipped=list(skipped),
        source=src,
        train_records=[r for r, t in zip(records, tr, strict=True) if t],
        test_records=[r for r, t in zip(records, te, strict=True) if t],
        specs=dict(zip(labels, specs, strict=True)),
        views=view_rows,
        view_costs=costs,
    )


def _extract_views(
    src: Source,
    opts: ExtractorOptions,
    policy: ViewPolicy,
    cache_dir: str | Path | None,
    progress: bool,
    run_options: dict[str, Any],
) -> ViewCost:
    """Extract every missing view of ``src``'s images (view 0: the plain rows) and say what
    that cost."""
    r = extract(
        src, backbone=opts, views=policy, cache_dir=cache_dir, progress=progress, **run_options
    )
    return ViewCost(
        backbone=opts.backbone,
        policy=policy.name,
        n_views=policy.n_views,
        images=r.n_unique,
        extracted=r.n_views_extracted,
        reused=r.n_views_reused,
        seconds=r.seconds if r.n_views_extracted else 0.0,
    )


def _views_set(
    label: str,
    V: np.ndarray,
    y: np.ndarray,
    tr: np.ndarray,
    te: np.ndarray,
    class_names: list[str],
    policy: ViewPolicy,
    provenance: dict[str, Any],
) -> tuple[FeatureSet, ViewRows]:
    """The feature set trained on every view (``V``: records x views x D) and its views."""
    k = policy.n_views
    name = views_label(label, policy.name)
    fs = FeatureSet(
        name=name,
        X_train=V[tr].reshape(-1, V.shape[2]),  # image-major: an image's views are consecutive
        y_train=np.repeat(y[tr], k),
        X_test=V[te][:, 0],  # the identity view
        y_test=y[te],
        class_names=class_names,
        provenance={**provenance, "views": {"policy": policy.name, "n_views": k}},
    )
    rows = ViewRows(policy.name, k, label, tta_label(label, policy.name), V[te])
    return fs, rows
