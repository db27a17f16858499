"""The sweep's split (given splits, hash split, a lone training split) and feature-set labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore.errors import OptionError, SourceError
from featurestore.featuresets import (
    FeatureSetSpec,
    build_sweep_data,
    feature_set_labels,
    feature_set_specs,
    plan_split,
)
from featurestore.options import ExtractorOptions
from featurestore.sources import Record, Source


def _source(splits: list[str | None], n: int = 40) -> Source:
    records = [
        Record(f"{i:064x}", f"img{i}.png", ("a", "b")[i % 2], splits[i % len(splits)], ("x", i))
        for i in range(n)
    ]
    return Source("src", "folder", records)


def test_given_splits_train_on_train_and_evaluate_on_val() -> None:
    plan = plan_split(_source(["train", "val"]))
    assert plan.description == "given splits: train on 'train', evaluate on 'val'"
    assert plan.train_mask.sum() == 20 and plan.test_mask.sum() == 20
    assert plan.test_fraction is None and plan.seed is None


def test_a_lone_training_split_says_what_would_work() -> None:
    with pytest.raises(SourceError) as err:
        plan_split(_source(["train"]))
    message = str(err.value)
    assert "only the split(s) ['train']: nothing to evaluate on" in message
    assert "--test-fraction 0.2" in message and "*_test.h5" in message
    assert "--train-split" not in message and "--test-split" not in message  # cannot help here


def test_test_fraction_splits_a_lone_training_split_deterministically() -> None:
    src = _source(["train"])
    a = plan_split(src, test_fraction=0.3, seed=1)
    b = plan_split(src, test_fraction=0.3, seed=1)
    c = plan_split(src, test_fraction=0.3, seed=2)
    assert np.array_equal(a.test_mask, b.test_mask) and not np.array_equal(a.test_mask, c.test_mask)
    assert not (a.train_mask & a.test_mask).any() and (a.train_mask | a.test_mask).all()
    assert (a.test_fraction, a.seed) == (0.3, 1)
    assert (
        "only the split 'train'" in a.description and "test fraction 0.3, seed 1" in a.description
    )
    labels = np.array([r.label for r in src.records])
    for c_ in ("a", "b"):  # stratified: each class on both sides
        assert a.test_mask[labels == c_].any() and a.train_mask[labels == c_].any()


def test_without_splits_the_fraction_and_seed_are_used_and_stated() -> None:
    src = _source([None])
    default = plan_split(src)
    assert (default.test_fraction, default.seed) == (0.2, 0)
    other = plan_split(src, test_fraction=0.5, seed=9)
    assert other.test_mask.sum() > default.test_mask.sum()
    assert "no splits in the source" in other.description and "seed 9" in other.description
    with pytest.raises(OptionError, match="test_fraction"):
        plan_split(src, test_fraction=1.5)


def test_test_fraction_is_refused_where_the_source_has_an_evaluation_split() -> None:
    with pytest.raises(OptionError, match="evaluates on its split 'val'"):
        plan_split(_source(["train", "val"]), test_fraction=0.2)
    with pytest.raises(SourceError, match="--test-split 'tset'"):
        plan_split(_source(["train", "val"]), test_split="tset")


def test_variants_of_one_backbone_are_named_by_the_options_that_differ() -> None:
    lite = ExtractorOptions.make("efficientnet_lite0")
    bf16 = ExtractorOptions.make("efficientnet_lite0", precision="bf16")
    node = ExtractorOptions.make("efficientnet_lite0", nodes=["blocks.5"])
    r18 = ExtractorOptions.make("resnet18")
    specs = [
        FeatureSetSpec((lite,)),
        FeatureSetSpec((bf16,)),
        FeatureSetSpec((r18,)),
        FeatureSetSpec((bf16, r18)),
        FeatureSetSpec(pixels=32),
    ]
    assert feature_set_labels(specs) == [
        "efficientnet_lite0[precision=fp32]",
        "efficientnet_lite0[precision=bf16]",
        "resnet18",
        "efficientnet_lite0[precision=bf16]+resnet18",
        "pixels32",
    ]
    nodes = feature_set_labels([FeatureSetSpec((lite,)), FeatureSetSpec((node,))])
    assert nodes == ["efficientnet_lite0[nodes=default]", "efficientnet_lite0[nodes=blocks.5]"]
    # names given on the command line share the options: plain names, duplicates dropped
    plain = feature_set_specs(["resnet18", "resnet18"], ["resnet18+alexnet"], pixels=False)
    assert feature_set_labels(plain) == ["resnet18", "resnet18+alexnet"]


def test_a_combination_of_the_same_features_twice_is_refused() -> None:
    with pytest.raises(OptionError, match="'resnet18\\+alexnet\\+resnet18' repeats resnet18"):
        feature_set_specs([], ["resnet18+alexnet+resnet18"])
    lite, bf16 = (
        ExtractorOptions.make("efficientnet_lite0", precision=p) for p in ("fp32", "bf16")
    )
    with pytest.raises(OptionError, match="repeats efficientnet_lite0 with the same options"):
        feature_set_specs([], [[lite, lite]])
    variants = feature_set_specs([], [[lite, bf16]], pixels=False)  # two variants: two parts
    assert [len(spec.parts) for spec in variants] == [2]


def test_a_sweep_over_two_variants_keeps_both(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "imgs" / "train", n=6, seed=1)
    make_images(tmp_path / "imgs" / "val", n=4, seed=2)
    small, large = (
        ExtractorOptions.make("mobilenet_v3_small", weights="none", input_size=s) for s in (32, 40)
    )
    data = build_sweep_data(
        tmp_path / "imgs",
        backbones=[small, large],
        pixels=False,
        cache_dir=tmp_path / "cache",
        workers=0,
    )
    names = [fs.name for fs in data.feature_sets]
    assert names == ["mobilenet_v3_small[input_size=32]", "mobilenet_v3_small[input_size=40]"]
    a, b = data.feature_sets
    assert not np.array_equal(a.X_train, b.X_train)  # two extractions, not one twice
    fingerprints = {fs.provenance["extractors"][0]["fingerprint"] for fs in data.feature_sets}
    assert len(fingerprints) == 2
    assert [r.path for r in data.test_records] == [p for p in data.paths if "/val/" in p]
