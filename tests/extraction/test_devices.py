"""Devices: the extraction runs on ``cpu`` or ``cuda[:N]``; anything else is a clear error before
any work, never a traceback from deep inside torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from featurestore.errors import ExtractError
from featurestore.extraction import extract
from featurestore.runtime import resolve_device


@pytest.mark.parametrize("device", ["meta", "mps", "xpu", "ipu", "lazy"])
def test_device_types_the_extraction_cannot_run_on_are_refused(device: str) -> None:
    with pytest.raises(ExtractError, match="cpu or cuda"):
        resolve_device(device)


def test_a_gpu_torch_does_not_see_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ExtractError, match="sees 1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_cpu_devices_pass(device: str) -> None:
    assert resolve_device(device).type == "cpu"


def test_extract_on_the_meta_device_is_an_extract_error_before_any_work(
    tmp_path: Path, make_images: Any, tiny_backbone: dict
) -> None:
    images = tmp_path / "images"
    make_images(images, 2)
    with pytest.raises(ExtractError, match="--device 'meta'"):
        extract(images, device="meta", cache_dir=tmp_path / "cache", **tiny_backbone)
    assert not (tmp_path / "cache").exists()
