"""What timm says about its models, as a table: ``timm.json``.

For every timm architecture: its pre-logits width (``feature_dim``), parameter count, timm
module (the family), whether it takes ``img_size`` (then it is built for any input size), the
smallest input it runs at, and each pretrained tag's configuration (timm's default tag first):
its eval preprocessing as ``timm.data.resolve_data_config`` gives it and where its weights come
from. :func:`regenerate_table` derives it from the installed timm, building every architecture
on the ``meta`` device (no weights, no memory; ``python -m featurestore.backbones timm``).

Reading the table needs neither torch nor timm (importing timm costs seconds). When the
installed timm is not the table's version, an architecture is described live instead, by the
same :func:`describe_architecture`, when it is asked for.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.atomic import write_text
from featurestore.errors import BackboneError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "TABLE",
    "UNTRAINED",
    "all_names",
    "architecture",
    "describe_architecture",
    "describe_tag",
    "has_model",
    "installed_version",
    "regenerate_table",
    "table",
    "table_status",
]

log = logging.getLogger(__name__)

TABLE = Path(__file__).with_name("timm.json")
#: timm's tag for an architecture without pretrained weights; such a model is ``timm:ARCH``.
UNTRAINED = "untrained"
#: Input sizes tried (on the meta device) for a model's smallest working input.
_PROBE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)


def installed_version() -> str | None:
    """The installed timm's version, read without importing it (None when not installed)."""
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def table() -> dict[str, Any] | None:
    """The table when it was made for the installed timm, else None (describe live)."""
    if not TABLE.is_file():
        return None
    data = json.loads(TABLE.read_text())
    if data.get("timm_version") != installed_version():
        log.warning(
            "timm.json describes timm %s but timm %s is installed: timm models are described "
            "live (slower); regenerate the table with `python -m featurestore.backbones timm`",
            data.get("timm_version"),
            installed_version(),
        )
        return None
    return data


def table_status() -> str:
    """One line: which timm the table describes and how many models it holds."""
    data = table()
    if data is None:
        return f"timm {installed_version()} (no table for it: models are described live)"
    archs = data["architectures"]
    tagged = sum(len(a["tags"]) for a in archs.values() if a["tags"][0][0] != UNTRAINED)
    return f"timm {data['timm_version']}: {tagged} pretrained models of {len(archs)} architectures"


def require_timm() -> None:
    if installed_version() is None:
        raise BackboneError("timm models need timm: `pip install timm`")


@functools.lru_cache(maxsize=4096)
def architecture(arch: str) -> dict[str, Any] | None:
    """The row of ``arch`` (described live when there is no table for this timm), each tag's
    mean and std written out; None when timm has no such architecture."""
    data = table()
    if data is not None:
        row = data["architectures"].get(arch)
        return _expand(arch, row, data["norms"]) if row is not None else None
    require_timm()
    from timm.models import is_model

    if not is_model(arch):
        return None
    return describe_architecture(arch)


def _defaults(arch: str, tag: str) -> dict[str, Any]:
    """What the table leaves out of a tag's entry: the common values."""
    hub_id = "" if tag == UNTRAINED else f"timm/{arch}.{tag}"
    return {"crop_mode": "center", "hf_hub_id": hub_id, "hf_hub_filename": "", "url": ""}


def _expand(arch: str, row: dict[str, Any], norms: list[list[list[float]]]) -> dict[str, Any]:
    """A table row written out: each tag's left-out values and its mean and std."""
    tags = []
    for tag, cfg in row["tags"]:
        mean, std = norms[cfg["norm"]]
        rest = {k: v for k, v in cfg.items() if k != "norm"}
        tags.append((tag, {**_defaults(arch, tag), **rest, "mean": mean, "std": std}))
    return {**row, "tags": tags}


def _names_of(arch: str, tags: list[str]) -> list[str]:
    return [arch] if tags == [UNTRAINED] else [f"{arch}.{t}" for t in tags]


def all_names() -> list[str]:
    """Every model name, ``ARCH.TAG`` (or ``ARCH`` when untrained), without the prefix."""
    data = table()
    if data is not None:
        return [
            n
            for arch, row in data["architectures"].items()
            for n in _names_of(arch, [t for t, _ in row["tags"]])
        ]
    require_timm()
    import timm
    from timm.models import get_pretrained_cfg

    untrained = [
        a for a in timm.list_models() if get_pretrained_cfg(a).tag in (UNTRAINED, "", None)
    ]
    return sorted({*timm.list_models(pretrained=True), *untrained})


def has_model(name: str) -> bool:
    """Whether timm has ``ARCH`` or ``ARCH.TAG`` (read from the table; False without one)."""
    data = table()
    if data is None:
        return False
    arch, _, tag = name.partition(".")
    row = data["architectures"].get(arch)
    return row is not None and (not tag or any(t == tag for t, _ in row["tags"]))


def _pre_logits(model: nn.Module, size: int) -> torch.Tensor:
    import torch

    x = torch.empty(1, 3, size, size, device="meta")
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def _meta_model(arch: str, **kwargs: Any) -> nn.Module:
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(arch, **kwargs).eval()


def _min_size(arch: str, model: nn.Module, native: int, resizable: bool, fixed: bool) -> int:
    """The smallest of :data:`_PROBE_SIZES` (or ``native``) a meta forward pass runs at."""
    if fixed and not resizable:
        return native
    for size in sorted({s for s in _PROBE_SIZES if s < native}):
        try:
            probe = _meta_model(arch, img_size=size) if resizable else model
            _pre_logits(probe, size)
            return size
        except Exception:  # noqa: BLE001 - any failure means "too small", try the next size
            continue
    return native


def describe_tag(cfg: Any) -> dict[str, Any]:
    """A pretrained configuration's facts: its eval preprocessing (from
    ``timm.data.resolve_data_config``) and where its weights come from."""
    from timm.data import resolve_data_config

    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    return {
        "input_size": [int(v) for v in data["input_size"][1:]],
        "crop_pct": float(data["crop_pct"]),
        "crop_mode": str(data.get("crop_mode") or "center"),
        "interpolation": str(data["interpolation"]),
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "fixed_input_size": bool(cfg.fixed_input_size),
        "hf_hub_id": cfg.hf_hub_id or "",
        "hf_hub_filename": cfg.hf_hub_filename or "",
        "url": "" if cfg.hf_hub_id else (cfg.url or ""),
    }


def describe_architecture(arch: str) -> dict[str, Any]:
    """Derive an architecture's row: built on the meta device (no weights, no memory), its
    pre-logits width, parameter count, whether it takes ``img_size``, its smallest input, and
    each pretrained tag's configuration (timm's default tag first)."""
    import timm.models._registry as registry
    from timm.models import get_pretrained_cfg

    default = registry._model_default_cfgs.get(arch)
    tag_names = list(default.tags) if default is not None else [UNTRAINED]
    # an architecture registered with one untagged configuration is named without a tag too
    tags = [
        (t or UNTRAINED, describe_tag(get_pretrained_cfg(f"{arch}.{t}" if t else arch)))
        for t in tag_names
    ]
    model = _meta_model(arch)
    native = tags[0][1]["input_size"][0]
    out = _pre_logits(model, native)
    if out.ndim != 2:
        raise BackboneError(f"{arch}: forward_head(pre_logits=True) gives {tuple(out.shape)}")
    resizable = "img_size" in inspect.signature(type(model).__init__).parameters
    return {
        "module": registry._model_to_module.get(arch, "timm"),
        "feature_dim": int(out.shape[1]),
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "resizable": resizable,
        "min_size": _min_size(arch, model, native, resizable, tags[0][1]["fixed_input_size"]),
        "tags": tags,
    }


def _compact(arch: str, row: dict[str, Any], norms: list[list[list[float]]]) -> dict[str, Any]:
    """The inverse of :func:`_expand`: mean/std as an index into ``norms``, common values out."""
    tags = []
    for tag, cfg in row["tags"]:
        norm = [cfg["mean"], cfg["std"]]
        if norm not in norms:
            norms.append(norm)
        common = _defaults(arch, tag)
        rest = {
            k: v
            for k, v in cfg.items()
            if k not in ("mean", "std") and (k not in common or common[k] != v)
        }
        tags.append([tag, {**rest, "norm": norms.index(norm)}])
    return {**row, "tags": tags}


def regenerate_table(path: Path = TABLE, archs: list[str] | None = None) -> dict[str, Any]:
    """Rebuild ``timm.json`` from the installed timm (every architecture: about 25 minutes on
    two idle CPU cores), or describe ``archs`` again in a table made for the installed timm.
    An architecture that cannot be described is left out and listed under ``failed``."""
    import timm
    import torch

    rows: dict[str, Any] = {}
    failed: dict[str, str] = {}
    names = sorted(timm.list_models())
    if archs is not None and path.is_file():
        old = json.loads(path.read_text())
        if old.get("timm_version") == timm.__version__:
            rows = {a: _expand(a, r, old["norms"]) for a, r in old["architectures"].items()}
            failed = {a: why for a, why in old["failed"].items() if a not in archs}
            names = list(archs)
    start = time.monotonic()
    for i, arch in enumerate(names):
        try:
            rows[arch] = describe_architecture(arch)
            failed.pop(arch, None)
        except Exception as exc:  # noqa: BLE001 - one architecture must not stop the table
            failed[arch] = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("%s: %s", arch, failed[arch])
        if (i + 1) % 50 == 0:
            log.info("%d/%d architectures (%.0f s)", i + 1, len(names), time.monotonic() - start)
    norms: list[list[list[float]]] = []
    rows = {a: _compact(a, rows[a], norms) for a in sorted(rows)}
    data = {
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "norms": norms,
        "failed": failed,
        "architectures": rows,
    }
    lines = [f"  {json.dumps(a)}: {json.dumps(r)}" for a, r in rows.items()]
    head = {k: v for k, v in data.items() if k != "architectures"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "architectures": {\n'
    write_text(path, text + ",\n".join(lines) + "\n }\n}\n")
    table.cache_clear()
    architecture.cache_clear()
    return data
