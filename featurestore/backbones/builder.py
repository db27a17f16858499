"""One entry point per step, dispatched to the backbone's adapter: resolve the weights, say
whether they are on this machine, build the frozen network.

Each adapter module (:mod:`.torchvision`, :mod:`.lite`, :mod:`.timm`) offers the same four
functions (``resolve_weights``, ``weights_available``, ``default_weights_path``, ``build``);
``BackboneSpec.adapter`` names the one that owns a backbone, and only this module chooses.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from featurestore.backbones import lite, timm, torchvision
from featurestore.backbones.spec import RANDOM_SEED, BackboneSpec
from featurestore.backbones.weights import ResolvedWeights
from featurestore.errors import BackboneError
from featurestore.options import WeightsChoice

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "build_model",
    "default_weights_path",
    "resolve_weights",
    "weights_available",
    "weights_identity",
]

_ADAPTERS: dict[str, ModuleType] = {"torchvision": torchvision, "lite": lite, "timm": timm}


def adapter(spec: BackboneSpec) -> ModuleType:
    """The module that resolves ``spec``'s weights and builds it."""
    try:
        return _ADAPTERS[spec.adapter]
    except KeyError:
        raise BackboneError(f"{spec.name}: unknown adapter {spec.adapter!r}") from None


def resolve_weights(spec: BackboneSpec, weights: str | Path | WeightsChoice) -> ResolvedWeights:
    """Resolve ``weights`` (``default``, ``none`` or a file) for ``spec`` without loading it."""
    return adapter(spec).resolve_weights(spec, WeightsChoice.parse(weights))


def weights_identity(spec: BackboneSpec, weights: str | Path | WeightsChoice) -> str:
    """A string that names the weights' numbers: part of the extractor fingerprint."""
    return resolve_weights(spec, weights).identity


def default_weights_path(spec: BackboneSpec) -> Path | None:
    """The file that holds (or would hold) ``spec``'s default weights on this machine."""
    return adapter(spec).default_weights_path(spec)


def weights_available(spec: BackboneSpec) -> bool:
    """Whether the default weights are on this machine (no network is touched)."""
    return bool(adapter(spec).weights_available(spec))


def build_model(
    spec: BackboneSpec,
    weights: ResolvedWeights | str | Path | WeightsChoice = "default",
    *,
    input_size: int | None = None,
) -> nn.Module:
    """Build ``spec``'s network in eval mode with frozen parameters.

    ``weights``: resolved by :func:`resolve_weights` (what an extractor holds), or a choice
    that is resolved here. ``input_size``: the crop the network will see; a resizable (timm)
    architecture is built for it, the others ignore it.
    """
    import torch

    if not isinstance(weights, ResolvedWeights):
        weights = resolve_weights(spec, weights)
    torch.manual_seed(RANDOM_SEED)  # random init is part of the fingerprint: keep it fixed
    model = adapter(spec).build(spec, weights, input_size)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
