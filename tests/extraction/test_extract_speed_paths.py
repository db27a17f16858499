"""The fast paths of extraction change speed, never meaning: BatchNorm folding, replicas, layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore.extraction import extract
from featurestore.extractor import resolve
from featurestore.pipeline import cpu_plan
from featurestore.store import FeatureStore


def _rows(ex, x, **kw):
    with torch.inference_mode():
        return ex.build("cpu", **kw)(x)


@pytest.mark.parametrize(
    ("backbone", "weights"),
    [("resnet18", "none"), ("mobilenet_v3_small", "none"), ("efficientnet_lite0", "default")],
)
def test_folded_network_gives_the_same_rows_up_to_rounding(backbone: str, weights: str) -> None:
    ex = resolve(backbone, weights=weights, input_size=64)
    x = torch.randint(
        0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    plain = _rows(ex, x, fold_batchnorm=False)
    folded_model = ex.build("cpu")
    n_bn = sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in ex.build("cpu", fold_batchnorm=False).modules()
    )
    assert folded_model.folded == n_bn > 0
    with torch.inference_mode():
        folded = folded_model(x)
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


@pytest.mark.parametrize("node", ["layer1.0.conv1", "layer1.0.bn1", "layer2.0.downsample.0"])
def test_a_node_asked_for_by_name_is_never_folded_away(node: str) -> None:
    ex = resolve("resnet18", weights="none", nodes=[node], input_size=64)
    x = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    plain, folded = _rows(ex, x, fold_batchnorm=False), _rows(ex, x)
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


def test_layouts_give_the_same_rows() -> None:
    ex = resolve("resnet18", weights="none", input_size=64)
    x = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(
        _rows(ex, x), _rows(ex, x, channels_last=False), rtol=1e-4, atol=1e-4
    )


def test_cpu_plan_keeps_the_callers_thread_limit() -> None:
    assert cpu_plan(1) == (1, 1)
    assert cpu_plan(2) == (2, 1)
    assert cpu_plan(16) == (4, 4)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_plan() == (1, 1)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("batch_size", [4, 5])
def test_replica_workers_threads_and_main_process_give_the_same_bits(
    tmp_path: Path, batch_size: int
) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):  # 11 images: the last batch is padded
        arr = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).save(src / f"{i}.png")
    Image.new("RGB", (1, 1)).save(src / "tiny.png")
    (src / "broken.png").write_bytes(b"not an image")
    kw = {"backbone": "resnet18", "weights": "none", "input_size": 32, "device": "cpu"}
    runs = {
        "replica workers": extract(src, cache_dir=tmp_path / "a", batch_size=batch_size, **kw),
        "decode workers": extract(
            src, cache_dir=tmp_path / "b", batch_size=batch_size, workers=2, **kw
        ),
        "main process": extract(
            src, cache_dir=tmp_path / "c", batch_size=batch_size, workers=0, **kw
        ),
    }
    ref_keys, ref_rows = FeatureStore(runs["main process"].store).read_all()
    assert len(ref_keys) == 12
    for name, r in runs.items():
        assert r.n_extracted == 12 and [s.path for s in r.skipped] == [str(src / "broken.png")]
        keys, rows = FeatureStore(r.store).read_all()
        assert keys == ref_keys and np.array_equal(rows, ref_rows), name
        assert r.timings["forward"] > 0


def test_strict_stops_at_a_bad_image_in_replica_workers(tmp_path: Path) -> None:
    from featurestore.extraction import ExtractError

    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    (tmp_path / "3b.png").write_bytes(b"not an image")
    kw = {"backbone": "resnet18", "weights": "none", "input_size": 32, "device": "cpu"}
    with pytest.raises(ExtractError, match=r"3b\.png"):
        extract(tmp_path, cache_dir=tmp_path / "c", batch_size=2, strict=True, **kw)
