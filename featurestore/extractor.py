"""An extractor: backbone + weights + nodes + pooling + preprocessing + precision.

:func:`resolve` turns user options into an :class:`Extractor` whose ``spec`` holds exactly what
changes the numbers (and so keys the store), without building the network. :meth:`Extractor.
build` then builds the frozen network wrapped so that it takes uint8 image batches and returns
(B, D) float32 feature rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featurestore.backbones import (
    BackboneError,
    BackboneSpec,
    build_model,
    get_backbone,
    weights_identity,
)
from featurestore.keys import fingerprint

log = logging.getLogger(__name__)

# Bump when anything in the extraction path changes the numbers for the same spec.
EXTRACTOR_VERSION = 1
POOLINGS = ("avg", "max", "flatten", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
DECODES = ("draft", "full")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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

    def build(self, device: torch.device | str = "cpu", *, channels_last: bool = True) -> nn.Module:
        """The frozen network as a :class:`FeatureModel` on ``device``."""
        model = build_model(self.backbone, self.weights)
        return FeatureModel(
            model,
            provider=self.backbone.provider,
            nodes=self.nodes,
            pooling=self.pooling,
            mean=self.preprocess.mean,
            std=self.preprocess.std,
            dtype=_DTYPES[self.precision],
            channels_last=channels_last,
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
            raise ValueError(f"--input-size {input_size} is below {spec.name}'s minimum "
                             f"{spec.min_size}")
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


def _pool(x: torch.Tensor, mode: str, node: str) -> torch.Tensor:
    if x.ndim == 2:
        return x
    if mode == "flatten":
        return x.flatten(1)
    if mode == "none":
        raise BackboneError(
            f"node {node!r} gives a {tuple(x.shape)} tensor; choose --pooling avg, max or flatten"
        )
    dims = tuple(range(2, x.ndim)) if x.ndim == 4 else (1,)  # (B,C,H,W) or (B,tokens,C)
    return x.mean(dims) if mode == "avg" else x.amax(dims)


def _feature_extractor(model: nn.Module, provider: str, nodes: tuple[str, ...]) -> nn.Module:
    if provider == "timm":
        from timm.models import create_feature_extractor
    else:
        from torchvision.models.feature_extraction import create_feature_extractor
    try:
        return create_feature_extractor(model, return_nodes=list(nodes))
    except ValueError as exc:
        raise BackboneError(
            f"{exc}. List the node names with `featurestore nodes BACKBONE`."
        ) from exc


class FeatureModel(nn.Module):
    """uint8 (B, 3, H, W) images -> normalised -> backbone nodes -> pooled (B, D) float32."""

    def __init__(
        self,
        model: nn.Module,
        *,
        provider: str,
        nodes: tuple[str, ...],
        pooling: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.body = _feature_extractor(model, provider, nodes).eval()
        self.nodes = nodes
        self.pooling = pooling
        self.dtype = dtype
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)
        self.body.to(dtype)
        if channels_last:
            self.body.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std  # = Normalize(ToDtype(img, scale=True))
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.body(x)
        parts = [_pool(out[n], self.pooling, n).flatten(1) for n in self.nodes]
        return torch.cat(parts, dim=1).float()
