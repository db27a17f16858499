"""torchvision's classification models: the table, their weights and their builder.

The table (``torchvision.json``, one row per model) is derived from the models themselves by
:func:`describe_torchvision` (``python -m featurestore.backbones`` regenerates it after a
torchvision upgrade); a contract test checks every row against a real forward pass. The default
node is the input of the last classifier layer (:func:`penultimate`).

``--weights default`` is the model's default weights enum, loaded by torchvision from its own
cache (``$TORCH_HOME/hub/checkpoints``): its identity names the enum and the file (whose name
carries a hash prefix), so resolving it needs neither torch nor the file.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featurestore.atomic import write_text
from featurestore.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, family_of
from featurestore.backbones.weights import (
    ResolvedWeights,
    check_finite,
    load_state_dict,
    offline,
    resolve_common,
    torch_hub_checkpoints,
)
from featurestore.errors import BackboneError, WeightsUnavailableError
from featurestore.options import WeightsChoice

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "TABLE",
    "build",
    "default_weights_path",
    "describe_torchvision",
    "penultimate",
    "regenerate_table",
    "resolve_weights",
    "specs",
    "weights_available",
]

TABLE = Path(__file__).with_name("torchvision.json")


@functools.lru_cache(maxsize=1)
def specs() -> dict[str, BackboneSpec]:
    """Every torchvision backbone of the table, by name."""
    out = {}
    for row in json.loads(TABLE.read_text()):
        row = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
        out[row["name"]] = BackboneSpec(**row)
    return out


def default_weights_path(spec: BackboneSpec) -> Path:
    """The file torchvision loads ``spec``'s default weights from (it may not exist)."""
    return torch_hub_checkpoints() / spec.weights_file


def weights_available(spec: BackboneSpec) -> bool:
    """Whether the default weights are on this machine (no network is touched)."""
    return default_weights_path(spec).is_file()


def resolve_weights(spec: BackboneSpec, weights: WeightsChoice) -> ResolvedWeights:
    """``default`` names the weights enum and its file; torchvision finds the file itself."""
    resolved = resolve_common(weights)
    if resolved is not None:
        return resolved
    return ResolvedWeights(weights, f"torchvision:{spec.default_weights}:{spec.weights_file}")


def _missing_weights_error(spec: BackboneSpec, path: Path, cause: Exception | None) -> Exception:
    why = f" ({cause})" if cause else ""
    return WeightsUnavailableError(
        f"{spec.name}: pretrained weights {spec.default_weights} not found at {path}{why}. "
        f"Either download {spec.weights_file} on a machine with internet and copy it to "
        f"{path.parent}/ (or set TORCH_HOME to a folder holding hub/checkpoints/"
        f"{spec.weights_file}), or pass --weights FILE for a local state dict "
        "(--weights none gives random weights)."
    )


def build(spec: BackboneSpec, weights: ResolvedWeights, input_size: int | None = None) -> nn.Module:
    """The torchvision network with ``weights`` (``input_size`` plays no part: a torchvision
    ViT takes only its table's size)."""
    from torchvision.models import get_model, get_model_weights

    # A ViT's position embeddings fix its input size, which its default weights set (518 for
    # vit_h_14's SWAG weights, not the builder's 224): build the same network without them.
    arch: dict[str, Any] = {"image_size": spec.crop_size} if spec.family == "vit" else {}
    if weights.choice.kind == "none":
        return get_model(spec.name, weights=None, **arch)
    if weights.choice.kind == "default":
        enum = get_model_weights(spec.name)
        w = enum[spec.default_weights.split(".", 1)[1]]
        path = default_weights_path(spec)
        if not path.is_file() and offline():
            raise _missing_weights_error(spec, path, None)
        try:
            model = get_model(spec.name, weights=w)
        except OSError as exc:  # URLError is an OSError
            raise _missing_weights_error(spec, path, exc) from exc
        check_finite(model.state_dict(), path)
        return model
    assert weights.file is not None
    sd = load_state_dict(weights.file)
    kwargs: dict[str, Any] = dict(arch)
    fc = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    if fc:
        kwargs["num_classes"] = int(fc[-1].shape[0])
    if spec.name in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = any(k.startswith("Aux") or k.startswith("aux") for k in sd)
        kwargs["init_weights"] = False
    model = get_model(spec.name, weights=None, **kwargs)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"{weights.file} does not fit {spec.name}: {exc}") from exc
    return model


# ---------------------------------------------------------------------------- the table
def penultimate(model: nn.Module) -> tuple[str, int, str]:
    """(node, width, pooling) of the input to the model's last classifier layer.

    Traces the model's graph, walks back from the output to the last ``Linear`` (or 1x1
    ``Conv2d`` for SqueezeNet) and returns the node that feeds it, skipping dropout (identity
    in eval mode).
    """
    import torch
    from torch import nn
    from torchvision.models.feature_extraction import NodePathTracer

    model.eval()
    tracer = NodePathTracer()
    graph = tracer.trace(model)
    modules = dict(model.named_modules())
    node = next(n for n in graph.nodes if n.op == "output").args[0]
    while not (
        node.op == "call_module" and isinstance(modules[node.target], nn.Linear | nn.Conv2d)
    ):
        node = next(a for a in node.args if isinstance(a, torch.fx.Node))
    final = modules[node.target]
    feed = node.args[0]
    while feed.op == "call_module" and isinstance(modules[feed.target], nn.Dropout):
        feed = feed.args[0]
    name = tracer.node_to_qualname[feed]
    if isinstance(final, nn.Linear):
        return name, final.in_features, "none"
    return name, final.in_channels, "avg"


def describe_torchvision(name: str) -> dict[str, Any]:
    """Derive a torchvision model's table row from the model and its weights enum."""
    import torch
    from torchvision.models import get_model, get_model_weights
    from torchvision.transforms import InterpolationMode

    try:
        with torch.device("meta"):
            model = get_model(name, weights=None)
    except (NotImplementedError, RuntimeError):  # some inits need real storage
        model = get_model(name, weights=None)
    node, dim, pooling = penultimate(model)
    w = get_model_weights(name).DEFAULT
    kw = w.transforms.keywords
    crop = int(kw["crop_size"])
    min_size = int(max(w.meta.get("min_size", (1, 1))))
    return {
        "name": name,
        "family": family_of(name),
        "provider": "torchvision",
        "feature_dim": dim,
        "default_node": node,
        "default_pooling": pooling,
        "crop_size": crop,
        "resize_size": int(kw.get("resize_size", 256)),
        "mean": list(kw.get("mean", IMAGENET_MEAN)),
        "std": list(kw.get("std", IMAGENET_STD)),
        "interpolation": kw.get("interpolation", InterpolationMode.BILINEAR).value,
        "min_size": min_size,
        "fixed_input_size": min_size == crop,
        "default_weights": str(w),
        "weights_file": os.path.basename(urlparse(w.url).path),
        "num_params": int(w.meta["num_params"]),
    }


def regenerate_table(path: Path = TABLE) -> list[dict[str, Any]]:
    """Rebuild ``torchvision.json`` from torchvision's installed models."""
    import torchvision
    from torchvision.models import list_models

    rows = [describe_torchvision(n) for n in sorted(list_models(module=torchvision.models))]
    write_text(path, "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    specs.cache_clear()
    return rows
