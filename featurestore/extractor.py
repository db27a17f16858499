"""An extractor: backbone + weights + nodes + pooling + preprocessing + precision.

:func:`resolve` turns user options into an :class:`Extractor` whose ``spec`` holds exactly what
changes the numbers (and so keys the store), without building the network and without importing
torch (a run whose rows are all cached never loads it). :meth:`Extractor.build` then builds the
frozen network (:class:`featurestore.network.FeatureModel`) wrapped so that it takes uint8 image
batches and returns (B, D) float32 feature rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.backbones import BackboneSpec, build_model, get_backbone, weights_identity
from featurestore.keys import fingerprint

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# Bump when anything in the extraction path changes the numbers for the same spec.
# 2: BatchNorm folded into the convolution before it (float rounding; 1.2-1.7x faster on CPU).
EXTRACTOR_VERSION = 2
POOLINGS = ("avg", "max", "flatten", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
DECODES = ("draft", "full")


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: decode, resize the shorter side, centre-crop, normalise."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    decode: str = "draft"

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize_size,
            "crop": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "decode": self.decode,
        }


@dataclass(frozen=True)
class Extractor:
    """A fully resolved extractor. ``spec`` is what the store's fingerprint hashes."""

    backbone: BackboneSpec
    weights: str
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

        model = build_model(self.backbone, self.weights)
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


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def resolve(
    backbone: str,
    *,
    nodes: list[str] | tuple[str, ...] | None = None,
    pooling: str | None = None,
    weights: str | Path = "default",
    input_size: int | None = None,
    precision: str = "fp32",
    decode: str = "draft",
) -> Extractor:
    """Resolve user options to an :class:`Extractor` (no network is built or downloaded)."""
    spec = get_backbone(backbone)
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("decode", decode, DECODES)
    node_list = tuple(nodes) if nodes else (spec.default_node,)
    if pooling is None:
        pooling = spec.default_pooling if node_list == (spec.default_node,) else "avg"
    _check_choice("pooling", pooling, POOLINGS)
    crop, resize = spec.crop_size, spec.resize_size
    if input_size is not None:
        if input_size < spec.min_size:
            raise ValueError(
                f"--input-size {input_size} is below {spec.name}'s minimum {spec.min_size}"
            )
        if spec.fixed_input_size and input_size != spec.crop_size:
            raise ValueError(
                f"{spec.name} takes only {spec.crop_size}x{spec.crop_size} input; "
                f"got --input-size {input_size}"
            )
        resize = round(input_size * spec.resize_size / spec.crop_size)
        crop = input_size
    weights_str = str(weights)
    if weights_str.lower() == "none":
        weights_str = "none"
    pre = Preprocess(
        resize_size=resize,
        crop_size=crop,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        interpolation=spec.interpolation,
        decode=decode,
    )
    fp_spec = {
        "extractor_version": EXTRACTOR_VERSION,
        "backbone": spec.name,
        "weights": weights_identity(spec, weights_str),
        "nodes": list(node_list),
        "pooling": pooling,
        "preprocess": pre.to_dict(),
        "precision": precision,
    }
    return Extractor(
        backbone=spec,
        weights=weights_str,
        nodes=node_list,
        pooling=pooling,
        preprocess=pre,
        precision=precision,
        spec=fp_spec,
    )


# The network side moved to featurestore.network (it imports torch); these names still resolve
# here, importing it on first use.
_MOVED = {
    "FeatureModel": "FeatureModel",
    "fold_conv_batchnorm": "fold_conv_batchnorm",
    "_DTYPES": "DTYPES",
    "_pool": "_pool",
    "_feature_extractor": "_feature_extractor",
    "_conv_bn": "_conv_bn",
    "_after_bn": "_after_bn",
    "_fold_sequential": "_fold_sequential",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from featurestore import network

        return getattr(network, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
