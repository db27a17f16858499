"""An extractor: backbone + weights + nodes + pooling + preprocessing + precision.

:func:`resolve` turns :class:`~featurestore.options.ExtractorOptions` into an :class:`Extractor`
whose ``spec`` holds exactly what changes the numbers (and so keys the store), without building
the network and without importing torch (a run whose rows are all cached never loads it).
:meth:`Extractor.build` then builds the frozen network (:class:`featurestore.network.FeatureModel`)
wrapped so that it takes uint8 image batches and returns (B, D) float32 feature rows.

:class:`ExtractorRecord` is how an extractor is described outside a run: in a saved head's
sidecar, in a report, in what :func:`featurestore.api.load_features` returns. One shape, with
``to_json``/``from_json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.backbones import BackboneSpec, ResolvedWeights, build_model, get_backbone
from featurestore.backbones import resolve_weights as _resolve_weights
from featurestore.errors import BackboneError
from featurestore.keys import fingerprint
from featurestore.options import DECODES, POOLINGS, PRECISIONS, ExtractorOptions

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "DECODES",
    "EXTRACTOR_VERSION",
    "POOLINGS",
    "PRECISIONS",
    "Extractor",
    "ExtractorRecord",
    "Preprocess",
    "resolve",
]

# Bump when anything in the extraction path changes the numbers for the same spec.
# 2: BatchNorm folded into the convolution before it (float rounding; 1.2-1.7x faster on CPU).
EXTRACTOR_VERSION = 2


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: decode, resize the shorter side (``crop_mode`` ``squash``: both
    sides), centre-crop, normalise."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    decode: str = "draft"
    crop_mode: str = "center"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "resize": self.resize_size,
            "crop": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "decode": self.decode,
        }
        if self.crop_mode != "center":  # only then: the fingerprints of earlier stores hold
            out["crop_mode"] = self.crop_mode
        return out


@dataclass(frozen=True)
class Extractor:
    """A fully resolved extractor. ``spec`` is what the store's fingerprint hashes."""

    options: ExtractorOptions
    backbone: BackboneSpec
    weights: ResolvedWeights
    nodes: tuple[str, ...]
    pooling: str
    preprocess: Preprocess
    precision: str
    spec: dict[str, Any] = field(hash=False, compare=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.spec)

    @property
    def is_default_node(self) -> bool:
        return self.nodes == (self.backbone.default_node,)

    def build(
        self,
        device: torch.device | str = "cpu",
        *,
        channels_last: bool = True,
        fold_batchnorm: bool = True,
    ) -> nn.Module:
        """The frozen network as a :class:`FeatureModel` on ``device``.

        ``channels_last`` changes only the speed. ``fold_batchnorm=False`` gives the network
        exactly as its library builds it, whose rows differ from the store's by float rounding
        (the store's rows come from the folded network, ``EXTRACTOR_VERSION`` >= 2).
        """
        from featurestore.network import DTYPES, FeatureModel

        model = build_model(self.backbone, self.weights, input_size=self.preprocess.crop_size)
        return FeatureModel(
            model,
            provider=self.backbone.provider,
            nodes=self.nodes,
            pooling=self.pooling,
            mean=self.preprocess.mean,
            std=self.preprocess.std,
            dtype=DTYPES[self.precision],
            channels_last=channels_last,
            fold_batchnorm=fold_batchnorm,
        ).to(device)


def _preprocess(spec: BackboneSpec, options: ExtractorOptions) -> Preprocess:
    crop, resize = spec.crop_size, spec.resize_size
    size = options.input_size
    if size is not None:
        if size < spec.min_size:
            raise BackboneError(
                f"--input-size {size} is below {spec.name}'s minimum {spec.min_size}"
            )
        if spec.fixed_input_size and size != spec.crop_size:
            raise BackboneError(
                f"{spec.name} takes only {spec.crop_size}x{spec.crop_size} input; "
                f"got --input-size {size}"
            )
        resize = round(size * spec.resize_size / spec.crop_size)
        crop = size
    return Preprocess(
        resize_size=resize,
        crop_size=crop,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        interpolation=spec.interpolation,
        decode=options.decode,
        crop_mode=spec.crop_mode,
    )


def resolve(backbone: str | ExtractorOptions, **options: Any) -> Extractor:
    """Resolve options to an :class:`Extractor` (no network is built or downloaded).

    ``backbone``: an :class:`ExtractorOptions`, or a backbone name with the options as keywords
    (``nodes``, ``pooling``, ``weights``, ``input_size``, ``precision``, ``decode``).
    """
    if isinstance(backbone, ExtractorOptions):
        if options:
            raise TypeError("give either ExtractorOptions or keyword options, not both")
        opts = backbone
    else:
        opts = ExtractorOptions.make(backbone, **options)
    spec = get_backbone(opts.backbone)
    node_list = opts.nodes or (spec.default_node,)
    pooling = opts.pooling
    if pooling is None:
        pooling = spec.default_pooling if node_list == (spec.default_node,) else "avg"
    weights = _resolve_weights(spec, opts.weights)
    pre = _preprocess(spec, opts)
    fp_spec = {
        "extractor_version": EXTRACTOR_VERSION,
        "backbone": spec.name,
        "weights": weights.identity,
        "nodes": list(node_list),
        "pooling": pooling,
        "preprocess": pre.to_dict(),
        "precision": opts.precision,
    }
    return Extractor(
        options=opts,
        backbone=spec,
        weights=weights,
        nodes=node_list,
        pooling=pooling,
        preprocess=pre,
        precision=opts.precision,
        spec=fp_spec,
    )


@dataclass(frozen=True)
class ExtractorRecord:
    """An extractor as recorded outside a run: its options, fingerprint and store.

    The JSON shape (``to_json``) is what saved-head sidecars hold in ``extractors`` and what
    reports print; ``from_json`` reads it back (and the same shape written by earlier
    versions, whose ``options`` lacked the backbone).
    """

    options: ExtractorOptions
    fingerprint: str
    nodes: tuple[str, ...] = ()
    pooling: str = ""
    store: str = ""
    spec: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def backbone(self) -> str:
        return self.options.backbone

    @classmethod
    def of(cls, extractor: Extractor, store: str | Path = "") -> ExtractorRecord:
        return cls(
            options=extractor.options,
            fingerprint=extractor.fingerprint,
            nodes=extractor.nodes,
            pooling=extractor.pooling,
            store=str(store),
            spec=extractor.spec,
        )

    def to_json(self) -> dict[str, Any]:
        options = self.options.to_json()
        del options["backbone"]
        return {
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "nodes": list(self.nodes),
            "pooling": self.pooling,
            "store": self.store,
            "options": options,
        }

    @classmethod
    def from_json(cls, data: Any) -> ExtractorRecord:
        if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
            raise BackboneError(
                f"not an extractor record (expected an object with a fingerprint): {data!r}"
            )
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise BackboneError(f"an extractor record's options must be an object, got {options!r}")
        return cls(
            options=ExtractorOptions.from_json({**options, "backbone": data.get("backbone")}),
            fingerprint=data["fingerprint"],
            nodes=tuple(data.get("nodes") or ()),
            pooling=str(data.get("pooling") or ""),
            store=str(data.get("store") or ""),
        )

    def resolve(self) -> Extractor:
        """Resolve the recorded options on this machine (its fingerprint may differ)."""
        return resolve(self.options)
