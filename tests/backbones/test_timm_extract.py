"""timm models end to end: ``featurestore extract`` / ``nodes``, the seeds' models, DINOv2 and
CLIP widths, ``--node``, and the eval transform against timm's own (random weights)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from featurestore.backbones import PRE_LOGITS, BackboneError, build_model, get_backbone
from featurestore.extractor import resolve
from featurestore.pipeline import _ImageDataset
from featurestore.sources import open_source

VIT = "timm:vit_tiny_patch16_224.augreg_in21k"  # 5.7M parameters, built for the input asked


def _forward(name: str, size: int, **options: Any) -> torch.Tensor:
    ex = resolve(name, weights="none", input_size=size, **options)
    images = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return ex.build("cpu")(images.to(torch.uint8))


def test_extract_cli_writes_rows_of_the_declared_width_then_extracts_nothing(
    tmp_path: Path, make_images: Callable[..., list[Path]], run_cli: Callable[..., Any]
) -> None:
    images, cache = tmp_path / "images", tmp_path / "cache"
    make_images(images, n=6)
    args = ["extract", images, "--backbone", VIT, "--weights", "none", "--input-size", "32"]
    args += ["--cache-dir", cache, "--json"]
    first = run_cli(*args, timeout=300)
    assert first.returncode == 0, first.stderr.decode()
    summary = json.loads(first.stdout.decode().splitlines()[0])
    assert summary["extracted"] == 6 and summary["feature_dim"] == 192
    (store,) = cache.glob("timm_vit_tiny_patch16_224.augreg_in21k-*.h5")
    with h5py.File(store, "r") as f:
        assert f["features"].shape == (6, get_backbone(VIT).feature_dim) == (6, 192)
        assert np.isfinite(f["features"][:]).all()
        spec = json.loads(f.attrs["spec"])
    assert spec["backbone"] == VIT and spec["nodes"] == [PRE_LOGITS]
    assert spec["preprocess"]["crop"] == 32
    second = run_cli(*args, timeout=300)
    assert second.returncode == 0, second.stderr.decode()
    again = json.loads(second.stdout.decode().splitlines()[0])
    assert (again["extracted"], again["reused"]) == (0, 6)


@pytest.mark.parametrize(
    ("name", "size", "dim"),
    [
        ("xception", 96, 2048),  # Keras's Xception
        ("inception_v3_tf", 96, 2048),  # Google's TF Inception-v3
        ("timm:vit_small_patch14_dinov2.lvd142m", 56, 384),  # DINOv2 ViT-S/14
        ("timm:vit_base_patch16_clip_224.openai", 32, 768),  # CLIP image tower, pre-projection
    ],
)
def test_widths_of_the_models_people_pick(name: str, size: int, dim: int) -> None:
    assert get_backbone(name).feature_dim == dim
    rows = _forward(name, size)
    assert rows.shape == (2, dim) and torch.isfinite(rows).all()


def test_clip_rows_are_the_input_of_the_projection_not_its_output() -> None:
    """timm's CLIP image tower ends in the 768 -> 512 projection (its "classifier"): the rows
    are what the projection takes, and projecting them gives the tower's output."""
    spec = get_backbone("timm:vit_base_patch16_clip_224.openai")
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    images = images.to(torch.uint8)
    ex = resolve(spec.name, weights="none", input_size=32)
    with torch.inference_mode():
        rows = ex.build("cpu", channels_last=False)(images)
        net = build_model(spec, "none", input_size=32)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        tower = net((images / 255 - mean) / std)
        projection = net.get_classifier()
        assert (projection.in_features, projection.out_features) == (768, 512)
        assert rows.shape == (2, 768) and tower.shape == (2, 512)
        torch.testing.assert_close(projection(rows), tower, rtol=1e-4, atol=1e-4)


def test_graph_nodes_of_a_timm_model_can_be_chosen(run_cli: Callable[..., Any]) -> None:
    done = run_cli("nodes", VIT, "--filter", "blocks.11", timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    names = done.stdout.decode().split()
    assert "blocks.11.mlp.fc2" in names
    everything = run_cli("nodes", VIT, timeout=300).stdout.decode().splitlines()
    assert everything[0] == f"{PRE_LOGITS}   <- default"
    # a graph node, pooled over its tokens, and two nodes concatenated in one pass
    assert _forward(VIT, 32, nodes=["blocks.11.mlp.fc2"], pooling="avg").shape == (2, 192)
    both = _forward(VIT, 32, nodes=["blocks.5", "blocks.11"], pooling="max")
    assert both.shape == (2, 384)
    cnn = _forward("timm:convnext_atto.d2_in1k", 64, nodes=["stages.2"], pooling="avg")
    assert cnn.shape == (2, 160)


def test_the_default_node_cannot_be_mixed_with_graph_nodes() -> None:
    ex = resolve(VIT, weights="none", input_size=32, nodes=[PRE_LOGITS, "blocks.11"])
    with pytest.raises(BackboneError, match="cannot be combined"):
        ex.build("cpu")


def test_unknown_node_says_how_to_list_them() -> None:
    ex = resolve(VIT, weights="none", input_size=32, nodes=["no_such_node"])
    with pytest.raises(BackboneError, match="featurestore nodes"):
        ex.build("cpu")


def test_fixed_size_models_refuse_other_sizes_and_resizable_ones_take_them() -> None:
    levit = get_backbone("timm:levit_128s.fb_dist_in1k")
    if levit.fixed_input_size:
        with pytest.raises(BackboneError, match=str(levit.crop_size)):
            resolve(levit.name, weights="none", input_size=160)
    vit = get_backbone(VIT)
    assert vit.resizable and not vit.fixed_input_size
    assert resolve(VIT, weights="none", input_size=48).preprocess.crop_size == 48


def _timm_eval_transform(name: str) -> Any:
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    data = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(name).to_dict())
    return create_transform(**data, is_training=False)


@pytest.mark.parametrize(
    "name",
    [
        "vit_base_patch16_clip_224.openai",  # centre crop, crop_pct 0.9, CLIP mean/std
        "convnext_tiny.fb_in22k_ft_in1k_384",  # squash: both sides resized, then the crop
        "legacy_xception.tf_in1k",  # 299 px, mean/std 0.5
    ],
)
def test_our_pixels_are_timms_eval_transform(name: str, tmp_path: Path) -> None:
    """Decode + resize + crop in the pipeline, normalisation in the network: the network's
    input equals what timm's own eval transform gives for the same image."""
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    for i, (w, h) in enumerate([(500, 331), (240, 410)]):  # landscape and portrait
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "a" / f"{i}.png")
    ex = resolve("timm:" + name, weights="none")
    src = open_source(tmp_path)
    records = src.select(None)
    dataset = _ImageDataset(records, src.loader, ex.preprocess)
    transform = _timm_eval_transform(name)
    mean = torch.tensor(ex.preprocess.mean).view(3, 1, 1) * 255
    std = torch.tensor(ex.preprocess.std).view(3, 1, 1) * 255
    for i, record in enumerate(records):
        ours = (dataset[i][1].float() - mean) / std  # what FeatureModel feeds the body
        theirs = transform(Image.open(record.path).convert("RGB"))
        assert ours.shape == theirs.shape == (3, ex.preprocess.crop_size, ex.preprocess.crop_size)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
