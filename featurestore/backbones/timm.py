"""Any timm model by name: ``timm:ARCH`` or ``timm:ARCH.TAG`` (``timm:convnext_tiny.fb_in22k``).

A model's spec comes from its own pretrained configuration (``timm.data.resolve_data_config``):
the input size, interpolation and mean/std, and the resize size ``floor(crop / crop_pct)``, as
timm's eval transform computes it; ``crop_mode`` ``center`` (resize the shorter side, centre
crop) or ``squash`` (resize both sides). The default node is the input of the classifier,
what ``model.forward_head(model.forward_features(x), pre_logits=True)`` returns
(:data:`~featurestore.backbones.spec.PRE_LOGITS`), and ``feature_dim`` is its width (the model's
``num_features``, or ``head_hidden_size`` for the models whose head has a hidden layer).

These facts come from :mod:`.timm_table` (a table derived from the installed timm, so that
naming a timm model, and so the fingerprint of a cache-hit run, needs neither torch nor timm).

Weights (``--weights default``): timm's own source for the tag, its Hugging Face repository
(found in the hub cache timm uses: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``) or, for a few older
tags, its URL (found in ``$TORCH_HOME/hub/checkpoints``). The identity is the file's sha256.
A missing file is downloaded unless ``HF_HUB_OFFLINE``/``FEATURESTORE_OFFLINE`` is set; then
the error names the path looked for and the two ways to provide the file. The network is built
by timm with the weights handed over as a state dict, so timm's own checkpoint filter (key
remapping, position-embedding resampling for another ``--input-size``) applies.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featurestore.backbones.spec import PRE_LOGITS, TIMM_PREFIX, BackboneSpec
from featurestore.backbones.timm_table import (
    UNTRAINED,
    all_names,
    architecture,
    has_model,
    installed_version,
)
from featurestore.backbones.weights import (
    ResolvedWeights,
    check_finite,
    file_sha256,
    hf_cached_file,
    hf_hub_cache,
    hf_repo_folder,
    load_state_dict,
    offline,
    resolve_common,
    torch_hub_checkpoints,
)
from featurestore.errors import BackboneError, WeightsUnavailableError
from featurestore.options import WeightsChoice

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "build",
    "create",
    "default_weights_path",
    "get_spec",
    "has_model",
    "list_specs",
    "resolve_weights",
    "weights_available",
]

log = logging.getLogger(__name__)

_HF = "hf-hub:"
_URL = "url:"
_HF_DEFAULT_FILE = "pytorch_model.bin"  # timm's default file name, looked for as safetensors first


# ---------------------------------------------------------------------------- specs
def _weights_source(cfg: dict[str, Any]) -> tuple[str, str]:
    """(``hf-hub:REPO`` or ``url:URL`` or "", file name) as timm would load the tag."""
    if cfg.get("hf_hub_id"):
        return _HF + cfg["hf_hub_id"], cfg.get("hf_hub_filename") or _HF_DEFAULT_FILE
    if cfg.get("url"):
        return _URL + cfg["url"], os.path.basename(urlparse(cfg["url"]).path)
    return "", ""


def _spec(arch: str, row: dict[str, Any], tag: str, cfg: dict[str, Any]) -> BackboneSpec:
    height, width = cfg["input_size"]
    if height != width:
        raise BackboneError(
            f"timm:{arch}.{tag} takes {height}x{width} input; featurestore crops square images "
            "only. Choose another tag or model"
        )
    if cfg["crop_mode"] not in ("center", "squash"):
        raise BackboneError(
            f"timm:{arch}.{tag} preprocesses with crop_mode {cfg['crop_mode']!r} (resize the "
            "longer side and pad), which featurestore does not do; choose another tag or model"
        )
    default_weights, weights_file = _weights_source(cfg)
    # an architecture whose only configuration is untrained is named without a tag
    name = arch if [t for t, _ in row["tags"]] == [UNTRAINED] else f"{arch}.{tag}"
    resizable = bool(row["resizable"])
    return BackboneSpec(
        name=TIMM_PREFIX + name,
        family=row["module"],
        provider="timm",
        feature_dim=int(row["feature_dim"]),
        default_node=PRE_LOGITS,
        default_pooling="none",
        crop_size=height,
        resize_size=math.floor(height / cfg["crop_pct"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
        min_size=min(int(row["min_size"]), height),
        fixed_input_size=bool(cfg["fixed_input_size"]) and not resizable,
        default_weights=default_weights,
        weights_file=weights_file,
        num_params=int(row["num_params"]),
        timm_name=name,
        adapter="timm",
        crop_mode=cfg["crop_mode"],
        resizable=resizable,
    )


def _unknown(name: str) -> BackboneError:
    names = all_names()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
    return BackboneError(
        f"unknown timm model {name!r}.{hint} List them with `featurestore backbones "
        f"'timm:*{name.partition('.')[0][:8]}*'`."
    )


def get_spec(name: str) -> BackboneSpec:
    """The spec of timm model ``ARCH`` or ``ARCH.TAG`` (no ``timm:`` prefix); an architecture
    without a tag gets timm's default tag (its first)."""
    arch, _, tag = name.partition(".")
    row = architecture(arch) if arch else None
    if row is None:
        raise _unknown(name)
    tags = dict(row["tags"])
    if not tag:
        tag = row["tags"][0][0]
    if tag not in tags:
        known = ", ".join(t for t, _ in row["tags"])
        raise BackboneError(f"timm:{arch} has no pretrained tag {tag!r}; its tags: {known}")
    return _spec(arch, row, tag, tags[tag])


def list_specs(pattern: str) -> list[BackboneSpec]:
    """Every usable timm model whose ``timm:`` name matches the glob ``pattern``."""
    out = []
    for name in all_names():
        if not fnmatch.fnmatchcase(TIMM_PREFIX + name, pattern):
            continue
        try:
            out.append(get_spec(name))
        except BackboneError as exc:  # non-square input, border crop: not usable here
            log.debug("%s", exc)
    return out


# ---------------------------------------------------------------------------- weights
def _hf_files(filename: str) -> list[str]:
    """The files timm tries for a repository, safetensors first (as timm's hub loader)."""
    if filename.endswith(".safetensors"):
        return [filename]
    safe = {
        "pytorch_model.bin": "model.safetensors",
        "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
    }.get(filename)
    if safe is None and filename.endswith(".bin"):
        safe = filename[: -len(".bin")] + ".safetensors"
    return [safe, filename] if safe else [filename]


def _hf_repo(spec: BackboneSpec) -> tuple[str, str | None]:
    repo, _, revision = spec.default_weights[len(_HF) :].partition("@")
    return repo, revision or None


def default_weights_path(spec: BackboneSpec) -> Path | None:
    """The cached file holding ``spec``'s pretrained weights, or None (no network)."""
    if spec.default_weights.startswith(_HF):
        repo, revision = _hf_repo(spec)
        for filename in _hf_files(spec.weights_file):
            found = hf_cached_file(repo, filename, revision)
            if found is not None:
                return found
        return None
    if spec.default_weights.startswith(_URL):
        path = torch_hub_checkpoints() / spec.weights_file
        return path if path.is_file() else None
    return None


def weights_available(spec: BackboneSpec) -> bool:
    return default_weights_path(spec) is not None


def _looked_for(spec: BackboneSpec) -> str:
    if spec.default_weights.startswith(_HF):
        repo, revision = _hf_repo(spec)
        files = " or ".join(_hf_files(spec.weights_file))
        return f"{hf_repo_folder(repo)}/snapshots/<commit of refs/{revision or 'main'}>/{files}"
    return str(torch_hub_checkpoints() / spec.weights_file)


def _unavailable(spec: BackboneSpec, cause: Exception | None) -> WeightsUnavailableError:
    why = f" ({type(cause).__name__}: {cause})" if cause else " (offline)"
    if spec.default_weights.startswith(_HF):
        repo, _ = _hf_repo(spec)
        fetch = (
            f"run once on a machine with internet (timm downloads {repo} into its Hugging Face "
            f"cache; `huggingface-cli download {repo}` does the same) and copy the folder "
            f"{hf_repo_folder(repo).name} into {hf_repo_folder(repo).parent}/ here (or point "
            "HF_HUB_CACHE / HF_HOME at a cache holding it)"
        )
    else:
        url = spec.default_weights[len(_URL) :]
        fetch = (
            f"download {url} on a machine with internet and copy it to "
            f"{torch_hub_checkpoints()}/ (or set TORCH_HOME to a folder holding "
            f"hub/checkpoints/{spec.weights_file})"
        )
    return WeightsUnavailableError(
        f"{spec.name}: pretrained weights not in the cache{why}: looked for "
        f"{_looked_for(spec)}. Either {fetch}, or pass --weights FILE for a local "
        ".safetensors or .pth state dict (--weights none gives random weights)."
    )


def _download(spec: BackboneSpec) -> Path:
    """Fetch the default weights into the cache timm uses (only when not offline): from the
    Hugging Face repository the safetensors file first, as timm does, else its URL."""
    if spec.default_weights.startswith(_HF):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        repo, revision = _hf_repo(spec)
        *first, last = _hf_files(spec.weights_file)
        cache = str(hf_hub_cache())
        for filename in first:
            log.info("downloading %s/%s into %s", repo, filename, cache)
            try:
                return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache))
            except EntryNotFoundError:
                log.info("%s has no %s; trying %s", repo, filename, last)
        log.info("downloading %s/%s into %s", repo, last, cache)
        return Path(hf_hub_download(repo, last, revision=revision, cache_dir=cache))
    import torch.hub

    url = spec.default_weights[len(_URL) :]
    dest = torch_hub_checkpoints() / spec.weights_file
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, dest)
    torch.hub.download_url_to_file(url, str(dest), progress=True)
    return dest


def resolve_weights(spec: BackboneSpec, weights: WeightsChoice) -> ResolvedWeights:
    """``default``: the tag's pretrained file from the cache (downloaded once when allowed),
    named by its sha256; ``none`` and a file as for every backbone."""
    resolved = resolve_common(weights)
    if resolved is not None:
        return resolved
    if not spec.default_weights:
        raise BackboneError(
            f"{spec.name} has no pretrained weights in timm {installed_version()}: pass "
            "--weights FILE for a local state dict, or --weights none for random weights"
        )
    path = default_weights_path(spec)
    if path is None:
        if offline():
            raise _unavailable(spec, None)
        try:
            path = _download(spec)
        except Exception as exc:  # no network, no such file, HTTP errors: all end here
            raise _unavailable(spec, exc) from exc
    source = spec.default_weights.split("@", 1)[0]
    if source.startswith(_URL):
        source = _URL + spec.weights_file
    return ResolvedWeights(weights, f"{source}/{path.name}:sha256={file_sha256(path)}", path)


# ---------------------------------------------------------------------------- building
def create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with timm's failures as :class:`BackboneError`."""
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as exc:
        shown = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
        raise BackboneError(f"timm cannot build {name} with {shown}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _classes_in(sd: dict[str, torch.Tensor], classifier: Any) -> int | None:
    """The number of classes of a state dict's classifier (0 when it has none)."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    if not names:
        return None
    weight = sd.get(f"{names[0]}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else 0


def build(spec: BackboneSpec, weights: ResolvedWeights, input_size: int | None = None) -> nn.Module:
    """The timm network for ``spec`` with ``weights``, built for ``input_size`` when the
    architecture takes an ``img_size`` (its position embeddings then fit that size)."""
    kwargs: dict[str, Any] = {}
    if spec.resizable:
        kwargs["img_size"] = input_size or spec.crop_size
    if weights.file is None:
        return create(spec.timm_name, **kwargs)
    sd = load_state_dict(weights.file)
    overlay: dict[str, Any] = {"state_dict": sd}
    if weights.choice.kind == "file":
        # a fine-tuned head may have any number of classes: build the classifier to fit, so
        # that every tensor still has to fit (timm loads strictly when the counts agree)
        from timm.models import get_pretrained_cfg

        n = _classes_in(sd, get_pretrained_cfg(spec.timm_name).classifier)
        if n is not None:
            kwargs["num_classes"] = overlay["num_classes"] = n
    try:
        model = create(spec.timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except BackboneError as exc:
        why = _one_line(exc.__cause__ or exc)
        raise BackboneError(f"{weights.file} does not fit {spec.name}: {why}") from exc
    check_finite(model.state_dict(), weights.file)  # what timm's checkpoint filter loaded
    return model
