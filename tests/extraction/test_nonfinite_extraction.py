"""A network that gives rows that are not numbers stops the extraction with a clear error and
stores none of them.

Weights with finite but enormous values (what a broken conversion or a wrong scale gives) make
the activations overflow to infinity and NaN: the weights load (every tensor is finite), the
rows do not. The extraction stops at the first such batch with an ExtractError that names an
image and says to check the weights; every batch before it is kept, nothing of it is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featurestore.cli import main as cli
from featurestore.errors import ExtractError
from featurestore.extraction import extract
from featurestore.extractor import resolve
from featurestore.pipeline import run_extraction
from featurestore.runtime import WorkerPlan
from featurestore.sources import open_source
from featurestore.store import FeatureStore, verify

BATCH = 4


@pytest.fixture(scope="module")
def overflowing_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mobilenet_v3_small's random weights with the first convolution scaled by 1e38: every
    tensor finite, every row not."""
    import torchvision

    state = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    state["features.0.0.weight"] = state["features.0.0.weight"] * 1e38
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    path = tmp_path_factory.mktemp("weights") / "overflowing.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("workers", [0, None], ids=["main-process", "replica-workers"])
def test_weights_that_overflow_stop_the_run_and_store_nothing(
    workers: int | None, overflowing_weights: Path, tmp_path: Path, make_images: Any
) -> None:
    images = tmp_path / "images"
    make_images(images, 8)
    cache = tmp_path / "cache"
    with pytest.raises(ExtractError) as err:
        extract(
            images,
            backbone="mobilenet_v3_small",
            weights=overflowing_weights,
            input_size=32,
            batch_size=BATCH,
            workers=workers,
            device="cpu",
            cache_dir=cache,
        )
    msg = str(err.value)
    assert "non-finite rows" in msg and "check the weights" in msg, msg
    assert str(overflowing_weights) in msg and str(images) in msg, msg
    stored = list(cache.rglob("*.h5")) if cache.exists() else []
    assert not stored, f"rows of a network that gives NaN were stored: {stored}"


def test_the_command_says_so_in_one_line(
    overflowing_weights: Path, tmp_path: Path, make_images: Any
) -> None:
    images = tmp_path / "images"
    make_images(images, 4)
    r = CliRunner().invoke(
        cli,
        [
            "extract", str(images), "-b", "mobilenet_v3_small", "--weights",
            str(overflowing_weights), "--input-size", "32", "--workers", "0", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--json",
        ],
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: the network gives non-finite rows"), r.output
    assert len(r.output.splitlines()) == 1


class _NaNOnWhite(torch.nn.Module):
    """A stand-in network: each row is the image's mean colour, NaN for an all-white image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.float().mean(dim=(2, 3))
        white = (x == 255).flatten(1).all(dim=1)
        rows[white] = float("nan")
        return rows


@pytest.mark.parametrize(
    "plan", [WorkerPlan(0), WorkerPlan(2, replicas=True)], ids=["main-process", "replicas"]
)
def test_batches_before_the_bad_one_are_kept_and_none_of_it(
    plan: WorkerPlan, tmp_path: Path, make_images: Any
) -> None:
    images = tmp_path / "images"
    make_images(images, 12, ("a",))
    src = open_source(images)
    records = src.select(None)
    white = records[6]  # in the second batch
    Image.new("RGB", (24, 20), (255, 255, 255)).save(white.path)
    src = open_source(images)  # keys again: one image changed
    records = src.select(None)
    assert records[6].path == white.path
    extractor = resolve("mobilenet_v3_small", weights="none", input_size=32)
    store = FeatureStore.for_spec(tmp_path / "cache", extractor.spec)
    with pytest.raises(ExtractError, match="non-finite") as err:
        run_extraction(
            extractor,
            records,
            src.loader,
            store,
            device=torch.device("cpu"),
            batch_size=BATCH,
            plan=plan,
            model=_NaNOnWhite(),
        )
    assert "1 of 4 images" in str(err.value) and str(white.path) in str(err.value)
    store.compact()
    assert verify(store.path).ok
    keys, rows = store.read_all()
    assert set(keys) >= {r.key for r in records[:BATCH]}, "a batch before the bad one was lost"
    assert not set(keys) & {r.key for r in records[BATCH : 2 * BATCH]}, "the bad batch was kept"
    assert np.isfinite(rows).all()
