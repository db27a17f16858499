"""Contract over timm's families: the smallest model of each timm module, random weights.

For each: the rows it stores have the declared ``feature_dim``, its eval transform is the one
its pretrained configuration gives (``timm.data.resolve_data_config``), and the tags of an
architecture get distinct fingerprints. A representative subset runs by default; set
``FEATURESTORE_TEST_ALL_BACKBONES=1`` for every family (slow: about a hundred networks).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from featurestore.backbones import (
    BackboneSpec,
    build_model,
    get_backbone,
    list_backbones,
    timm_table,
)
from featurestore.extractor import resolve

ALL = os.environ.get("FEATURESTORE_TEST_ALL_BACKBONES") == "1"
#: Default-suite families: CNNs, ViTs (resizable), hybrids, and the classifier-head shapes that
#: differ (conv head with a hidden layer, distilled/token heads, legacy Cadene heads).
REPRESENTATIVE = (
    "byobnet",
    "convnext",
    "efficientnet",
    "levit",
    "mobilenetv3",
    "resnet",
    "swin_transformer",
    "vision_transformer",
    "xception",
)


def _smallest_per_family() -> dict[str, str]:
    """family -> the timm architecture (at its default tag) with the fewest parameters."""
    if timm_table.table() is None:
        pytest.skip("no table for the installed timm: describing every model would take long")
    best: dict[str, tuple[int, str]] = {}
    for spec in list_backbones("timm:*"):
        arch = spec.timm_name.partition(".")[0]
        score = (spec.num_params, arch)
        if spec.family not in best or score < best[spec.family]:
            best[spec.family] = score
    return {family: "timm:" + arch for family, (_, arch) in sorted(best.items())}


def _families() -> list[str]:
    if ALL:
        return list(_smallest_per_family()) if timm_table.table() is not None else []
    return list(REPRESENTATIVE)


def _small_size(spec: BackboneSpec) -> int:
    if spec.fixed_input_size:
        return spec.crop_size
    return max(spec.min_size, 32)


def test_every_representative_family_exists() -> None:
    families = _smallest_per_family()
    assert set(REPRESENTATIVE) <= set(families)
    assert len(families) > 80  # timm 1.0 has about a hundred model modules


@pytest.mark.parametrize("family", _families())
def test_family_contract(family: str) -> None:
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    spec = get_backbone(_smallest_per_family()[family])
    # the transform is the tag's own configuration
    data = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(spec.timm_name).to_dict())
    assert (spec.crop_size, spec.interpolation, spec.crop_mode) == (
        data["input_size"][-1],
        data["interpolation"],
        data["crop_mode"],
    )
    assert spec.resize_size == math.floor(spec.crop_size / data["crop_pct"])
    assert spec.mean == tuple(data["mean"]) and spec.std == tuple(data["std"])
    # the stored width is the declared one, at a small input where the model takes one
    size = _small_size(spec)
    ex = resolve(spec.name, weights="none", input_size=size)
    model = ex.build("cpu")
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        rows = model(images)
    assert rows.shape == (2, spec.feature_dim)
    assert rows.dtype == torch.float32 and torch.isfinite(rows).all()
    # the rows are what timm itself returns as the pre-logits features, with the same weights
    net = build_model(spec, "none", input_size=size)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = net.forward_head(
            net.forward_features((images / 255 - mean) / std), pre_logits=True
        )
    # float32 rounding (BatchNorm folded, channels-last) grows with the activations, which
    # random weights can blow up (inception_v3 at 96 px: 4e8): the tolerance follows the scale
    scale = float(expected.abs().max())
    torch.testing.assert_close(rows, expected, rtol=1e-3, atol=1e-3 + 1e-5 * scale)


def test_every_timm_model_and_tag_gets_its_own_fingerprint() -> None:
    """Two tags of one architecture (and any two timm names) never share a store."""
    specs = list_backbones("timm:*")
    fps = {resolve(s.name, weights="none").fingerprint: s.name for s in specs}
    assert len(fps) == len(specs) > 1500
    multi = [s for s in specs if s.timm_name.startswith("convnext_tiny.")]
    assert len(multi) >= 5 and len(
        {fp for fp, n in fps.items() if n in {m.name for m in multi}}
    ) == len(multi)
