"""The frozen network: uint8 image batches in, (B, D) float32 feature rows out.

:class:`FeatureModel` wraps a backbone built by :func:`featurestore.backbones.build_model`:
normalisation, the graph nodes asked for (:func:`featurestore.backbones.nodes.feature_extractor`:
torchvision's or timm's, or a timm model's own pre-logits features), pooling,
BatchNorm folded into the convolutions, the compute precision and channels-last layout. Kept apart
from :mod:`featurestore.extractor` so that resolving an extractor (and its fingerprint) imports no
torch; :meth:`featurestore.extractor.Extractor.build` imports this module.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from featurestore.backbones import BackboneError
from featurestore.backbones.nodes import feature_extractor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _pool(x: torch.Tensor, mode: str, node: str) -> torch.Tensor:
    if x.ndim == 2:
        return x
    if mode == "flatten":
        return x.flatten(1)
    if mode == "none":
        raise BackboneError(
            f"node {node!r} gives a {tuple(x.shape)} tensor; choose --pooling avg, max or flatten"
        )
    dims = tuple(range(2, x.ndim)) if x.ndim == 4 else (1,)  # (B,C,H,W) or (B,tokens,C)
    return x.mean(dims) if mode == "avg" else x.amax(dims)


def _conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module | None:
    """``conv`` with eval-mode BatchNorm ``bn`` folded in, or None when that is not exact."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return None
    if bn.running_mean is None or bn.running_var is None or conv.weight.dtype != torch.float32:
        return None
    if conv.out_channels != bn.num_features:
        return None
    return fuse_conv_bn_eval(conv.eval(), bn.eval())


def _after_bn(bn: nn.Module) -> nn.Module | None:
    """What remains of a BatchNorm module once its normalisation is folded away."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    # timm's BatchNormAct2d: F.batch_norm, then self.drop, then self.act (both identity-free)
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "drop") and hasattr(bn, "act"):
        return nn.Sequential(bn.drop, bn.act)
    return None


def _fold_sequential(module: nn.Module) -> int:
    """Fold Conv2d -> BatchNorm2d pairs that follow each other in nn.Sequential containers."""
    folded = 0
    for child in list(module.modules()):
        # only containers that pass each child's output to the next and nowhere else
        if not isinstance(child, nn.Sequential) or type(child).forward is not nn.Sequential.forward:
            continue
        for a, b in itertools.pairwise(list(child._modules)):
            conv, bn = child._modules[a], child._modules[b]
            fused = _conv_bn(conv, bn) if conv is not None and bn is not None else None
            rest = _after_bn(bn) if fused is not None else None
            if fused is not None and rest is not None:
                child._modules[a], child._modules[b] = fused, rest
                folded += 1
    return folded


def fold_conv_batchnorm(gm: torch.fx.GraphModule) -> int:
    """Fold every eval-mode BatchNorm into the convolution that feeds it; return how many.

    Exact up to float rounding: ``bn(conv(x)) == conv'(x)`` with ``conv'`` carrying the scaled
    weights and a bias. A pair is folded only where nothing else can see the convolution's own
    output: in the traced graph the convolution's only user is the BatchNorm (so a node asked for
    by name is never changed), and inside a module the graph calls as a whole (a leaf such as
    torchvision's ``Conv2dNormActivation``) only in ``nn.Sequential`` containers. Saves one
    memory-bound pass per BatchNorm, and in bf16/fp16 the normalisation is done in float32.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        prev = node.args[0] if node.args else None
        if not (
            isinstance(prev, torch.fx.Node)
            and prev.op == "call_module"
            and calls[prev.target] == 1
            and len(prev.users) == 1
            and len(node.args) == 1
            and not node.kwargs
        ):
            continue
        bn = modules[node.target]
        fused = _conv_bn(modules[prev.target], bn)
        rest = _after_bn(bn) if fused is not None else None
        if fused is None or rest is None:
            continue
        gm.set_submodule(prev.target, fused)
        if isinstance(rest, nn.Identity):
            node.replace_all_uses_with(prev)
            gm.graph.erase_node(node)
        else:
            gm.set_submodule(node.target, rest)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
        gm.delete_all_unused_submodules()
    leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for target in sorted(leaves):
        folded += _fold_sequential(gm.get_submodule(target))
    return folded


def _to_channels_last(module: nn.Module) -> None:
    """Channels-last layout for every 4-d parameter and buffer. ``Module.to(memory_format=)``
    would also try the 5-d ones (a Swin window mask) and fail."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    module._apply(convert)


def _fold(body: nn.Module) -> int:
    """Fold BatchNorm in a traced graph, or (a timm model timm cannot trace, which runs
    eagerly) in its ``nn.Sequential`` containers only."""
    if isinstance(body, torch.fx.GraphModule):
        return fold_conv_batchnorm(body)
    return _fold_sequential(body)


class FeatureModel(nn.Module):
    """uint8 (B, 3, H, W) images -> normalised -> backbone nodes -> pooled (B, D) float32.

    BatchNorm is folded into the convolutions in float32 before the cast to ``dtype``
    (``fold_batchnorm``); the body runs channels-last, the layout oneDNN is fastest with.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        provider: str,
        nodes: tuple[str, ...],
        pooling: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        fold_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        self.body = feature_extractor(model, provider, nodes).eval()
        self.nodes = nodes
        self.pooling = pooling
        self.dtype = dtype
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)
        self.folded = _fold(self.body) if fold_batchnorm else 0
        self.body.to(dtype)
        if channels_last:
            _to_channels_last(self.body)
        self.eval()  # frozen: the wrapper is in eval mode as well as the body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 4:
            # layout first, on the uint8 pixels: 4x less memory to move than after the cast
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            images = images.contiguous(memory_format=fmt)
        # = Normalize(ToDtype(img, scale=True)) in two passes, the layout kept: uint8 - float32
        # computes in float32 (exact for 0..255); the division rounds once into self.dtype,
        # which gives the same bits as dividing in float32 and casting afterwards
        x = torch.sub(images, self.mean)
        if self.dtype == torch.float32:
            x = x.div_(self.std)
        else:
            x = torch.div(x, self.std, out=torch.empty_like(x, dtype=self.dtype))
        out = self.body(x)
        parts = [_pool(out[n], self.pooling, n).flatten(1) for n in self.nodes]
        return torch.cat(parts, dim=1).float()
