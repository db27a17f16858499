"""Contract tests over the backbone registry (random weights, small inputs, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from featurestore.backbones import (
    BackboneError,
    WeightsUnavailableError,
    build_model,
    describe_torchvision,
    get_backbone,
    list_backbones,
)
from featurestore.extractor import resolve

ALL = os.environ.get("FEATURESTORE_TEST_ALL_BACKBONES") == "1"


def _smallest_per_family() -> list[str]:
    """One model per family: the one with the fewest parameters."""
    best: dict[str, tuple] = {}
    for b in list_backbones():
        score = (b.num_params, b.name)
        if b.family not in best or score < best[b.family]:
            best[b.family] = score
    return sorted(v[1] for v in best.values())


CONTRACT = [b.name for b in list_backbones()] if ALL else _smallest_per_family()


def _forward(name: str, size: int | None = None) -> torch.Tensor:
    spec = get_backbone(name)
    size = size or (spec.crop_size if spec.fixed_input_size else max(64, spec.min_size))
    ex = resolve(name, weights="none", input_size=size)
    model = ex.build("cpu")
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        return model(images)


def test_registry_covers_torchvision_and_lite() -> None:
    import torchvision
    from torchvision.models import list_models

    names = {b.name for b in list_backbones()}
    assert set(list_models(module=torchvision.models)) <= names
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= names
    families = {b.family for b in list_backbones()}
    assert {"resnet", "vgg", "alexnet", "inception_v3", "densenet", "vit"} <= families


@pytest.mark.parametrize(
    ("name", "dim", "node"),
    [
        ("resnet18", 512, "flatten"),
        ("resnet34", 512, "flatten"),
        ("resnet50", 2048, "flatten"),
        ("resnet152", 2048, "flatten"),
        ("inception_v3", 2048, "flatten"),
        ("alexnet", 4096, "classifier.5"),  # after the second FC layer's ReLU
        ("vgg16", 4096, "classifier.4"),
        ("densenet121", 1024, "flatten"),
        ("efficientnet_lite0", 1280, "global_pool.flatten"),
    ],
)
def test_declared_penultimate_layers(name: str, dim: int, node: str) -> None:
    spec = get_backbone(name)
    assert (spec.feature_dim, spec.default_node) == (dim, node)


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_output_width_equals_feature_dim(name: str) -> None:
    out = _forward(name)
    assert out.shape == (2, get_backbone(name).feature_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "squeezenet1_1", "mobilenet_v3_small"])
def test_table_matches_a_fresh_derivation(name: str) -> None:
    row = describe_torchvision(name)
    spec = get_backbone(name)
    assert (row["feature_dim"], row["default_node"], row["default_pooling"]) == (
        spec.feature_dim,
        spec.default_node,
        spec.default_pooling,
    )


def test_seed_example_vgg16_last_pool_flattened_at_150_gives_8192() -> None:
    ex = resolve("vgg16", weights="none", nodes=["features.30"], pooling="flatten", input_size=150)
    model = ex.build("cpu")
    with torch.inference_mode():
        out = model(torch.randint(0, 256, (1, 3, 150, 150), dtype=torch.uint8))
    assert out.shape == (1, 8192)


def test_several_nodes_in_one_pass_concatenate() -> None:
    ex = resolve(
        "resnet18", weights="none", nodes=["layer3", "layer4"], pooling="avg", input_size=64
    )
    with torch.inference_mode():
        out = ex.build("cpu")(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (2, 256 + 512)


def test_max_pooling_differs_from_avg() -> None:
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    outs = {}
    for mode in ("avg", "max"):
        ex = resolve("resnet18", weights="none", nodes=["layer4"], pooling=mode, input_size=64)
        with torch.inference_mode():
            outs[mode] = ex.build("cpu")(images)
    assert outs["avg"].shape == outs["max"].shape == (2, 512)
    assert (outs["max"] >= outs["avg"] - 1e-5).all()
    assert not torch.allclose(outs["max"], outs["avg"])


def test_unknown_node_says_how_to_list_nodes() -> None:
    ex = resolve("resnet18", weights="none", nodes=["no_such_node"])
    with pytest.raises(BackboneError, match="featurestore nodes"):
        ex.build("cpu")


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(BackboneError, match="resnet50"):
        get_backbone("resnet5O")


def test_missing_pretrained_weights_name_the_file_and_both_remedies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FEATURESTORE_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        build_model(get_backbone("resnet18"), "default")
    msg = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights FILE" in msg and "copy it to" in msg


def test_local_weights_file_loads_with_weights_only_and_changes_fingerprint(
    tmp_path: Path,
) -> None:
    spec = get_backbone("resnet18")
    model = build_model(spec, "none")
    sd = model.state_dict()
    sd["fc.bias"] = sd["fc.bias"] + 1.0
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    loaded = build_model(spec, path)
    assert torch.equal(loaded.state_dict()["fc.bias"], sd["fc.bias"])
    fp_file = resolve("resnet18", weights=path).fingerprint
    assert fp_file != resolve("resnet18", weights="none").fingerprint
    assert fp_file != resolve("resnet18", weights="default").fingerprint


def test_weights_file_that_is_not_a_plain_state_dict_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # would run code if unpickled without weights_only
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(BackboneError, match="weights_only"):
        build_model(get_backbone("resnet18"), path)


def test_fixed_input_models_refuse_other_sizes() -> None:
    with pytest.raises(ValueError, match="224"):
        resolve("vit_b_16", weights="none", input_size=160)


def test_vit_without_its_weights_keeps_the_weights_input_size() -> None:
    """vit_h_14's default (SWAG) weights run at 518 px while its builder defaults to 224: the
    network built with ``--weights none`` (or a file) must take the table's input size too."""
    import dataclasses

    from featurestore.backbones import build_model

    spec = dataclasses.replace(get_backbone("vit_b_16"), crop_size=384)  # cheap stand-in
    model = build_model(spec, "none")
    assert model.image_size == 384
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 384, 384)).shape == (1, 1000)
