"""timm models by name: lookup, tags, aliases, listing, the table, the fingerprint (no torch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from featurestore.backbones import (
    ALIASES,
    PRE_LOGITS,
    BackboneError,
    get_backbone,
    list_backbones,
    timm_table,
)
from featurestore.extractor import resolve


def test_an_architecture_without_a_tag_is_its_default_tag() -> None:
    import timm

    default_tag = timm.models.get_pretrained_cfg("convnext_tiny").tag
    bare, tagged = (
        get_backbone("timm:convnext_tiny"),
        get_backbone(f"timm:convnext_tiny.{default_tag}"),
    )
    assert bare == tagged and bare.name == f"timm:convnext_tiny.{default_tag}"
    # one backbone, one store: the two spellings share the fingerprint
    assert (
        resolve("timm:convnext_tiny", weights="none").fingerprint
        == resolve(f"timm:convnext_tiny.{default_tag}", weights="none").fingerprint
    )


def test_two_tags_of_one_architecture_are_two_backbones_with_two_fingerprints() -> None:
    a, b = get_backbone("timm:convnext_tiny.fb_in22k"), get_backbone("timm:convnext_tiny.fb_in1k")
    assert a.timm_name == "convnext_tiny.fb_in22k" and b.timm_name == "convnext_tiny.fb_in1k"
    assert a.feature_dim == b.feature_dim == 768
    fa, fb = resolve(a.name, weights="none"), resolve(b.name, weights="none")
    assert fa.spec["backbone"] != fb.spec["backbone"]
    assert fa.fingerprint != fb.fingerprint


def test_default_node_is_the_pre_logits_features_and_pooling_none() -> None:
    spec = get_backbone("timm:vit_small_patch14_dinov2.lvd142m")
    assert (spec.default_node, spec.default_pooling, spec.feature_dim) == (PRE_LOGITS, "none", 384)
    assert spec.provider == spec.adapter == "timm" and spec.family == "vision_transformer"
    assert spec.default_weights == "hf-hub:timm/vit_small_patch14_dinov2.lvd142m"


@pytest.mark.parametrize(
    ("alias", "target", "dim", "crop"),
    [
        ("xception", "timm:legacy_xception.tf_in1k", 2048, 299),
        ("inception_v3_tf", "timm:inception_v3.tf_in1k", 2048, 299),
    ],
)
def test_seed_models_by_their_own_names(alias: str, target: str, dim: int, crop: int) -> None:
    spec = get_backbone(alias)
    assert ALIASES[alias] == target and spec.name == target
    assert (spec.feature_dim, spec.crop_size) == (dim, crop)
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)  # the TF/Keras [-1, 1] input scaling
    # the alias and the full name are one backbone: the same store
    assert resolve(alias, weights="none").fingerprint == resolve(target, weights="none").fingerprint


def test_unknown_timm_names_get_close_matches_and_tags_are_listed() -> None:
    with pytest.raises(BackboneError, match="timm:convnext_tiny"):
        get_backbone("timm:convnxt_tiny")
    with pytest.raises(BackboneError, match=r"fb_in22k.*fb_in1k|fb_in1k.*fb_in22k"):
        get_backbone("timm:convnext_tiny.no_such_tag")
    # a timm name given without its prefix is pointed at the prefixed one
    with pytest.raises(BackboneError, match="timm:convnext_atto"):
        get_backbone("convnext_atto")


def test_listing_without_a_pattern_is_todays_list() -> None:
    names = {b.name for b in list_backbones()}
    assert not any(n.startswith("timm:") for n in names)
    assert {"resnet50", "efficientnet_lite0", "vit_b_16"} <= names and len(names) == 83


def test_listing_with_a_glob_reaches_timm_models() -> None:
    if timm_table.table() is None:
        pytest.skip("no table for the installed timm: listing all of timm would build each")
    dinov2 = [b.name for b in list_backbones("timm:*dinov2*")]
    assert "timm:vit_small_patch14_dinov2.lvd142m" in dinov2
    assert all(n.startswith("timm:") and "dinov2" in n for n in dinov2)
    both = {b.name for b in list_backbones("*convnext_tiny*")}
    assert "convnext_tiny" in both and "timm:convnext_tiny.fb_in22k" in both
    assert all(not b.name.startswith("timm:") for b in list_backbones("resnet*"))
    everything = list_backbones("timm:*")
    assert len(everything) > 1500  # one per pretrained tag
    assert len({b.name for b in everything}) == len(everything)


def test_preprocessing_is_the_models_own_pretrained_configuration() -> None:
    """Every field of a spec's eval transform is timm's resolve_data_config of the tag."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    for name in (
        "vit_base_patch16_clip_224.openai",  # CLIP mean/std, crop_pct 0.9
        "legacy_xception.tf_in1k",  # 299 px, crop_pct 0.8975
        "convnext_tiny.fb_in22k_ft_in1k_384",  # crop_mode squash
        "vit_small_patch14_dinov2.lvd142m",  # 518 px, crop_pct 1.0
        "resnet50.a1_in1k",  # 224 train / crop_pct 0.95
    ):
        spec = get_backbone("timm:" + name)
        data = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(name).to_dict())
        assert spec.crop_size == data["input_size"][1] == data["input_size"][2], name
        assert spec.resize_size == math.floor(spec.crop_size / data["crop_pct"]), name
        assert spec.interpolation == data["interpolation"], name
        assert spec.crop_mode == data["crop_mode"], name
        assert spec.mean == tuple(data["mean"]) and spec.std == tuple(data["std"]), name
        pre = resolve("timm:" + name, weights="none").preprocess
        assert (pre.crop_size, pre.resize_size, pre.crop_mode) == (
            spec.crop_size,
            spec.resize_size,
            spec.crop_mode,
        )


def test_squash_mode_is_part_of_the_fingerprint_and_centre_mode_adds_nothing() -> None:
    squash = resolve("timm:convnext_tiny.fb_in22k_ft_in1k_384", weights="none")
    centre = resolve("timm:convnext_tiny.fb_in22k", weights="none")
    assert squash.spec["preprocess"]["crop_mode"] == "squash"
    assert "crop_mode" not in centre.spec["preprocess"]  # earlier stores keep their names


@pytest.mark.parametrize(
    "arch", ["convnext_atto", "legacy_xception", "vit_small_patch14_dinov2", "levit_128s"]
)
def test_table_matches_a_fresh_derivation(arch: str) -> None:
    """The committed table holds what the installed timm says (regenerate it when not)."""
    if timm_table.table() is None:
        pytest.skip("no table for the installed timm: everything is derived live")
    fresh = timm_table.describe_architecture(arch)
    stored = timm_table.architecture(arch)
    assert stored is not None
    assert json.loads(json.dumps(fresh)) == json.loads(json.dumps(stored))


_PROBE = """
import json, sys
from featurestore.backbones import get_backbone, list_backbones
from featurestore.extractor import resolve
fps = [resolve(n, weights="none").fingerprint for n in sys.argv[1:]]
dims = [get_backbone(n).feature_dim for n in sys.argv[1:]]
n_listed = len(list_backbones("timm:*dinov2*"))
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"fps": fps, "dims": dims, "listed": n_listed, "heavy": heavy}))
"""


def _run(code: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1][len("PROBE ") :])


def test_naming_timm_models_and_their_fingerprints_import_no_torch(
    cli_env: Callable[..., dict[str, str]],
) -> None:
    if timm_table.table() is None:
        pytest.skip("no table for the installed timm: timm models are described live")
    names = ["timm:convnext_tiny.fb_in22k", "xception", "timm:vit_small_patch14_dinov2"]
    report = _run(_PROBE, *names, env=cli_env())
    assert report["heavy"] == []
    assert report["dims"] == [768, 2048, 384] and report["listed"] >= 8
    assert report["fps"] == [resolve(n, weights="none").fingerprint for n in names]


def test_backbones_command_imports_no_torch_and_points_at_timm(
    cli_env: Callable[..., dict[str, str]],
) -> None:
    code = """
import json, sys
from featurestore.cli import main
sys.argv = ["featurestore", *sys.argv[1:]]
try:
    main(prog_name="featurestore")  # the group itself: the entry point would end the process
except SystemExit:
    pass
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"heavy": heavy}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, "backbones"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "PROBE " + json.dumps({"heavy": []}) in done.stdout
    out = done.stdout
    assert "resnet50" in out and "efficientnet_lite0" in out
    assert "xception" in out and "(= timm:legacy_xception.tf_in1k)" in out
    assert "featurestore backbones 'timm:*'" in out and "pretrained models of" in out


def test_backbones_command_with_a_pattern(run_cli: Callable[..., Any]) -> None:
    done = run_cli("backbones", "timm:*small_patch14_dinov2*")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    row = next(ln for ln in lines if ln.startswith("timm:vit_small_patch14_dinov2.lvd142m "))
    assert row.split()[1] == "384" and "pre-logits" in row
    assert "available" in row or "not on this machine" in row
    done = run_cli("backbones", "timm:*small_patch14_dinov2*", "--json")
    rows = [json.loads(ln) for ln in done.stdout.decode().splitlines()]
    assert {r["name"] for r in rows} >= {"timm:vit_small_patch14_dinov2.lvd142m"}
    assert all(isinstance(r["weights_available"], bool) for r in rows)
    done = run_cli("backbones", "nothing*matches*this")
    assert done.returncode == 0 and b"no backbone matches" in done.stderr


def test_unusable_tags_are_refused_with_the_reason() -> None:
    with pytest.raises(BackboneError, match="1024x768"):
        get_backbone("timm:vit_base_patch16_sapiens2.fb")


def test_table_file_describes_timms_architectures() -> None:
    table = json.loads(Path(timm_table.TABLE).read_text())
    assert len(table["architectures"]) > 1300 and len(table["failed"]) < 10
    if table["timm_version"] != timm_table.installed_version():
        pytest.skip(
            f"the table describes timm {table['timm_version']}, timm "
            f"{timm_table.installed_version()} is installed: python -m featurestore.backbones"
        )
    import timm

    assert set(table["architectures"]) | set(table["failed"]) == set(timm.list_models())
