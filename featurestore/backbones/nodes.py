"""Graph nodes: the names ``--node`` accepts and the feature extractor that returns them.

torchvision models are traced by torchvision's ``create_feature_extractor``, timm models by
timm's (its tracer knows timm's untraceable layers). A timm model's default node,
:data:`~featurestore.backbones.spec.PRE_LOGITS`, is not a graph node but the model's own
``forward_head(forward_features(x), pre_logits=True)``: exactly the classifier's input for every
timm architecture, however its head is built. It is traced too where timm's tracer can (so
BatchNorm folds into the convolutions), and runs eagerly where it cannot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from featurestore.backbones.spec import PRE_LOGITS, BackboneSpec
from featurestore.errors import BackboneError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["feature_extractor", "node_names"]

log = logging.getLogger(__name__)


def _skeleton(spec: BackboneSpec) -> nn.Module:
    """``spec``'s network without weights, on the meta device when its init allows (a node
    listing of a billion-parameter model then costs no memory)."""
    import torch

    from featurestore.backbones.builder import build_model

    try:
        with torch.device("meta"):
            return build_model(spec, "none")
    except (NotImplementedError, RuntimeError, BackboneError):  # some inits need real storage
        return build_model(spec, "none")


def node_names(spec: BackboneSpec) -> list[str]:
    """The node names of ``spec``'s eval graph that ``--node`` accepts, in graph order (a timm
    model's default node first)."""
    model = _skeleton(spec)
    if spec.provider == "timm":
        from timm.models import get_graph_node_names
    else:
        from torchvision.models.feature_extraction import get_graph_node_names
    try:
        _, names = get_graph_node_names(model)
    except Exception as exc:
        raise BackboneError(
            f"cannot trace {spec.name}'s graph, so only its default node "
            f"{spec.default_node} is available ({type(exc).__name__}: {exc})"
        ) from exc
    return [PRE_LOGITS, *names] if spec.default_node == PRE_LOGITS else list(names)


def _make_pre_logits_module() -> type:
    from torch import nn

    class PreLogits(nn.Module):
        """``model.forward_head(model.forward_features(x), pre_logits=True)``; the named
        identity ``out`` gives the traced graph a node to return."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model
            self.out = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.model.forward_features(x)
            return self.out(self.model.forward_head(features, pre_logits=True))

    class AsDict(nn.Module):
        """An eager module's output as ``{name: tensor}``, as a feature extractor gives it."""

        def __init__(self, module: nn.Module, name: str) -> None:
            super().__init__()
            self.module = module
            self.name = name

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {self.name: self.module(x)}

    return PreLogits, AsDict


def _pre_logits_extractor(model: nn.Module) -> nn.Module:
    from timm.models import create_feature_extractor

    pre_logits, as_dict = _make_pre_logits_module()
    wrapped = pre_logits(model).eval()
    try:
        return create_feature_extractor(wrapped, return_nodes={"out": PRE_LOGITS})
    except Exception as exc:  # noqa: BLE001 - not traceable: run the model's own code eagerly
        log.info("timm cannot trace %s (%s); running it eagerly", type(model).__name__, exc)
        return as_dict(wrapped, PRE_LOGITS).eval()


def feature_extractor(model: nn.Module, provider: str, nodes: tuple[str, ...]) -> nn.Module:
    """A module mapping images to ``{node: tensor}`` for ``nodes`` of ``model``."""
    if PRE_LOGITS in nodes:
        if provider != "timm":
            raise BackboneError(f"{PRE_LOGITS} is a timm model's node; this is a {provider} model")
        if len(nodes) > 1:
            raise BackboneError(
                f"{PRE_LOGITS} (the default node) cannot be combined with other nodes; give "
                "graph nodes only (`featurestore nodes BACKBONE` lists them)"
            )
        return _pre_logits_extractor(model)
    if provider == "timm":
        from timm.models import create_feature_extractor
    else:
        from torchvision.models.feature_extraction import create_feature_extractor
    try:
        return create_feature_extractor(model, return_nodes=list(nodes))
    except ValueError as exc:
        raise BackboneError(
            f"{exc}. List the node names with `featurestore nodes BACKBONE`."
        ) from exc
