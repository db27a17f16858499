"""FeatureModel: uint8 batches in, normalised, the nodes asked for, pooled, float32 rows out."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from featurestore.errors import BackboneError
from featurestore.extractor import resolve
from featurestore.network import FeatureModel, _pool


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_normalisation_inside_the_model_equals_torchvisions_transform() -> None:
    ex = resolve("resnet18", weights="none", input_size=64)
    model = ex.build("cpu", fold_batchnorm=False, channels_last=False)
    x = _images()
    reference = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(ex.preprocess.mean, ex.preprocess.std)]
    )(x)
    with torch.inference_mode():
        ours = model.body((x.float() - model.mean) / model.std)  # what forward feeds the body
        theirs = model.body(reference)
    torch.testing.assert_close(ours["flatten"], theirs["flatten"], rtol=1e-5, atol=1e-5)


def test_rows_are_float32_of_the_declared_width_in_every_precision() -> None:
    for precision in ("fp32", "bf16"):
        ex = resolve("resnet18", weights="none", input_size=64, precision=precision)
        with torch.inference_mode():
            rows = ex.build("cpu")(_images(3))
        assert rows.dtype == torch.float32 and rows.shape == (3, 512)


def test_several_nodes_are_pooled_and_concatenated_in_order() -> None:
    ex = resolve("resnet18", weights="none", input_size=64, nodes=["layer3", "layer4"])
    with torch.inference_mode():
        rows = ex.build("cpu")(_images())
    assert rows.shape == (2, 256 + 512)


@pytest.mark.parametrize(("mode", "width"), [("avg", 8), ("max", 8), ("flatten", 8 * 3 * 3)])
def test_pooling_modes(mode: str, width: int) -> None:
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(2, 8, 3, 3)
    out = _pool(x, mode, "n")
    assert out.shape == (2, width)
    if mode == "avg":
        torch.testing.assert_close(out, x.mean((2, 3)))
    if mode == "max":
        torch.testing.assert_close(out, x.amax((2, 3)))


def test_a_spatial_node_without_pooling_names_the_choices() -> None:
    with pytest.raises(BackboneError, match="choose --pooling avg, max or flatten"):
        _pool(torch.zeros(1, 4, 2, 2), "none", "layer4")


def test_an_unknown_node_says_how_to_list_them() -> None:
    ex = resolve("resnet18", weights="none", input_size=64, nodes=["layer9"])
    with pytest.raises(BackboneError, match="featurestore nodes BACKBONE"):
        ex.build("cpu")


def test_the_model_is_frozen_and_in_eval_mode() -> None:
    model = resolve("resnet18", weights="none", input_size=64).build("cpu")
    assert isinstance(model, FeatureModel)
    assert not model.training and not model.body.training
    assert all(not p.requires_grad for p in model.parameters())
