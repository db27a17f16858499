"""Weights of timm models: the Hugging Face cache, local safetensors/.pth files, safe loading.

Nothing here touches the network: the hub cache is laid out by the tests in a temporary folder
(``HF_HOME``), as ``huggingface_hub`` writes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from featurestore.backbones import (
    BackboneError,
    WeightsUnavailableError,
    build_model,
    get_backbone,
    resolve_weights,
    weights_available,
)
from featurestore.extractor import resolve

SMALL = "timm:mobilenetv3_small_050.lamb_in1k"  # 1.6M parameters
SIZE = 64


@pytest.fixture()
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home, offline; returns its hub cache folder."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "hf").mkdir()
    return tmp_path / "hf" / "hub"


def _random_state(name: str = SMALL) -> dict[str, torch.Tensor]:
    model = build_model(get_backbone(name), "none")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _rows(weights: Any, name: str = SMALL) -> torch.Tensor:
    ex = resolve(name, weights=weights, input_size=SIZE)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return ex.build("cpu")(images.to(torch.uint8))


def _put_in_hub_cache(cache: Path, repo: str, filename: str, data: bytes) -> Path:
    """Lay a file out as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/<file>
    linking to it, refs/main naming the commit."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    sha = hashlib.sha256(data).hexdigest()
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "blobs" / sha).write_bytes(data)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    link = folder / "snapshots" / commit / filename
    link.symlink_to(os.path.relpath(folder / "blobs" / sha, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return link


def test_local_safetensors_file_loads_and_names_the_rows(tmp_path: Path) -> None:
    sd = _random_state()
    sd["conv_head.bias"] = sd["conv_head.bias"] + 1.0  # these numbers, not the seeded ones
    path = tmp_path / "tuned.safetensors"
    save_file(sd, str(path))
    model = build_model(get_backbone(SMALL), path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert not torch.allclose(_rows(path), _rows("none"))
    ex = resolve(SMALL, weights=path)
    assert ex.weights.identity == f"file:sha256={hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert ex.fingerprint != resolve(SMALL, weights="none").fingerprint


def test_local_pth_state_dict_loads_like_the_safetensors_file(tmp_path: Path) -> None:
    sd = _random_state()
    sd["conv_head.bias"] = sd["conv_head.bias"] - 2.0
    torch.save(sd, tmp_path / "w.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(_rows(tmp_path / "w.pth"), _rows(tmp_path / "w.safetensors"))


def test_a_fine_tuned_head_of_another_class_count_loads(tmp_path: Path) -> None:
    sd = _random_state()
    sd["classifier.weight"] = torch.randn(7, sd["classifier.weight"].shape[1])
    sd["classifier.bias"] = torch.zeros(7)
    save_file(sd, str(tmp_path / "seven.safetensors"))
    model = build_model(get_backbone(SMALL), tmp_path / "seven.safetensors")
    assert model.get_classifier().out_features == 7


def test_a_file_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    sd = _random_state()
    del sd["conv_head.weight"]
    save_file(sd, str(tmp_path / "short.safetensors"))
    with pytest.raises(BackboneError, match=r"does not fit.*conv_head\.weight"):
        build_model(get_backbone(SMALL), tmp_path / "short.safetensors")


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # unpickling without weights_only would create the marker
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"conv_head.weight": Payload()}, path)
    with pytest.raises(BackboneError, match="weights_only"):
        build_model(get_backbone(SMALL), path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_weights_are_refused_with_the_tensor_name(tmp_path: Path, suffix: str) -> None:
    sd = _random_state()
    sd["blocks.1.0.conv_pw.weight"][0, 0, 0, 0] = float("nan")
    sd["conv_head.bias"][3] = float("inf")
    path = tmp_path / f"bad{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(BackboneError, match=r"'blocks\.1\.0\.conv_pw\.weight'.*non-finite"):
        build_model(get_backbone(SMALL), path)


def test_default_weights_offline_name_the_cache_path_and_both_remedies(hf_home: Path) -> None:
    spec = get_backbone("timm:vit_small_patch14_dinov2.lvd142m")
    assert not weights_available(spec)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(spec, "default")
    msg = str(info.value)
    folder = hf_home / "models--timm--vit_small_patch14_dinov2.lvd142m"
    assert f"{folder}/snapshots/<commit of refs/main>/model.safetensors or pytorch_model.bin" in msg
    assert "(offline)" in msg  # no download was tried
    assert "huggingface-cli download timm/vit_small_patch14_dinov2.lvd142m" in msg
    assert "copy the folder" in msg and "--weights FILE" in msg


def test_hf_hub_cache_wins_over_hf_home(
    hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(WeightsUnavailableError, match=str(tmp_path / "elsewhere")):
        resolve_weights(get_backbone("timm:convnext_atto.d2_in1k"), "default")


def test_default_weights_from_the_hub_cache_load_and_are_named_by_their_sha256(
    hf_home: Path,
) -> None:
    spec = get_backbone(SMALL)
    sd = _random_state()
    sd["conv_head.bias"] = sd["conv_head.bias"] + 3.0
    staged = hf_home.parent / "staged.safetensors"
    save_file(sd, str(staged))
    data = staged.read_bytes()
    link = _put_in_hub_cache(
        hf_home, "timm/mobilenetv3_small_050.lamb_in1k", "model.safetensors", data
    )
    assert weights_available(spec)
    resolved = resolve_weights(spec, "default")
    sha = hashlib.sha256(data).hexdigest()
    assert resolved.file == link
    assert resolved.identity == (
        f"hf-hub:timm/mobilenetv3_small_050.lamb_in1k/model.safetensors:sha256={sha}"
    )
    loaded = build_model(spec, resolved).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert resolve(SMALL).fingerprint != resolve(SMALL, weights="none").fingerprint
    # the same bytes given as a file are named by the same sha256
    assert resolve(SMALL, weights=staged).weights.identity == f"file:sha256={sha}"


def test_the_pytorch_bin_file_is_found_when_no_safetensors_is_cached(hf_home: Path) -> None:
    spec = get_backbone(SMALL)
    sd = _random_state()
    path = hf_home.parent / "w.bin"
    torch.save(sd, path)
    link = _put_in_hub_cache(
        hf_home, "timm/mobilenetv3_small_050.lamb_in1k", "pytorch_model.bin", path.read_bytes()
    )
    resolved = resolve_weights(spec, "default")
    assert resolved.file == link and "/pytorch_model.bin:sha256=" in resolved.identity
    loaded = build_model(spec, resolved).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_url_weights_offline_name_the_torch_hub_file(
    hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    spec = get_backbone("xception")
    assert spec.default_weights.startswith("url:https://")
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(spec, "default")
    msg = str(info.value)
    assert str(tmp_path / "th" / "hub" / "checkpoints" / spec.weights_file) in msg
    assert spec.default_weights[len("url:") :] in msg and "--weights FILE" in msg


def test_an_architecture_without_pretrained_weights_says_so(hf_home: Path) -> None:
    spec = get_backbone("timm:botnet50ts_256")
    assert spec.name == "timm:botnet50ts_256" and spec.default_weights == ""
    with pytest.raises(BackboneError, match="no pretrained weights"):
        resolve_weights(spec, "default")
    assert resolve_weights(spec, "none").identity == "random-init:seed=0"


def test_backbones_command_says_which_weights_are_here(
    hf_home: Path, run_cli: Callable[..., Any], cli_env: Callable[..., dict[str, str]]
) -> None:
    _put_in_hub_cache(
        hf_home, "timm/mobilenetv3_small_050.lamb_in1k", "model.safetensors", b"not read"
    )
    env = cli_env(HF_HOME=str(hf_home.parent), HF_HUB_OFFLINE="1")
    done = run_cli("backbones", "timm:mobilenetv3_small_0*", env=env)
    assert done.returncode == 0, done.stderr
    lines = {ln.split()[0]: ln for ln in done.stdout.decode().splitlines()[1:] if ln.strip()}
    assert lines["timm:mobilenetv3_small_050.lamb_in1k"].endswith("available")
    assert lines["timm:mobilenetv3_small_075.lamb_in1k"].endswith("not on this machine")


def test_a_checkpoint_that_timms_filter_unwraps_loads_and_its_nans_are_found(
    tmp_path: Path,
) -> None:
    """An I-JEPA checkpoint keeps the ViT under ``encoder`` (keys ``module.*``) beside training
    state: timm's checkpoint filter unwraps it; a NaN inside is still refused, by the loaded
    model's name for the tensor."""
    name = "timm:vit_small_patch14_dinov2.lvd142m"  # no classifier (num_classes 0)
    spec = get_backbone(name)
    sd = _random_state(name)

    def ijepa(state: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"encoder": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}

    torch.save(ijepa(sd), tmp_path / "ckpt.pth")
    loaded = build_model(spec, tmp_path / "ckpt.pth").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    sd["blocks.3.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(ijepa(sd), tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match=r"'blocks\.3\.attn\.qkv\.weight'.*non-finite"):
        build_model(spec, tmp_path / "bad.pth")


def test_online_default_weights_are_fetched_into_the_hub_cache_safetensors_first(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download path, with huggingface_hub's downloader replaced (no network): the
    safetensors file is asked for first, then timm's .bin, into the cache looked in."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("FEATURESTORE_OFFLINE", raising=False)
    sd = _random_state()
    torch.save(sd, hf_home.parent / "w.bin")
    asked: list[tuple[str, str, str]] = []

    def fake_download(repo: str, filename: str, *, revision: Any, cache_dir: str) -> str:
        asked.append((repo, filename, cache_dir))
        if filename == "model.safetensors":
            raise EntryNotFoundError(f"{repo} has no {filename}")
        data = (hf_home.parent / "w.bin").read_bytes()
        return str(_put_in_hub_cache(Path(cache_dir), repo, filename, data))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    spec = get_backbone(SMALL)
    resolved = resolve_weights(spec, "default")
    repo = "timm/mobilenetv3_small_050.lamb_in1k"
    assert asked == [
        (repo, "model.safetensors", str(hf_home)),
        (repo, "pytorch_model.bin", str(hf_home)),
    ]
    assert resolved.file is not None and resolved.file.name == "pytorch_model.bin"
    assert weights_available(spec)  # found in the cache from now on, without downloading
    loaded = build_model(spec, resolved).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_a_failed_download_names_the_cause_and_the_remedies(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_network(*args: Any, **kwargs: Any) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(get_backbone(SMALL), "default")
    msg = str(info.value)
    assert "ConnectionError: Name or service not known" in msg
    assert "models--timm--mobilenetv3_small_050.lamb_in1k" in msg and "--weights FILE" in msg


def test_a_vits_weights_load_at_another_input_size(tmp_path: Path) -> None:
    """DINOv2's 518 px weights at --input-size 56: timm resamples the position embeddings."""
    name = "timm:vit_small_patch14_dinov2.lvd142m"
    spec = get_backbone(name)
    sd = _random_state(name)
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    save_file(sd, str(tmp_path / "d.safetensors"))
    net = build_model(spec, tmp_path / "d.safetensors", input_size=56)
    assert net.pos_embed.shape == (1, 1 + 4 * 4, 384)
    assert torch.equal(net.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    rows = resolve(name, weights=tmp_path / "d.safetensors", input_size=56).build("cpu")(
        torch.zeros(1, 3, 56, 56, dtype=torch.uint8)
    )
    assert rows.shape == (1, 384)
