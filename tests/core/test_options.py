"""Extractor options: one typed value, checked on creation, the same through JSON and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.errors import BackboneError, FeatureStoreError, OptionError
from featurestore.extractor import ExtractorRecord, resolve
from featurestore.options import (
    DECODES,
    POOLINGS,
    PRECISIONS,
    ExtractorOptions,
    WeightsChoice,
    split_backbones,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [("pooling", "mean"), ("precision", "fp8"), ("decode", "fast"), ("input_size", "224")],
)
def test_a_value_outside_the_declared_ones_is_refused_as_a_value_error(
    field: str, value: str
) -> None:
    with pytest.raises(OptionError, match=field) as info:
        ExtractorOptions("resnet18", **{field: value})
    assert isinstance(info.value, ValueError) and isinstance(info.value, FeatureStoreError)


def test_every_declared_value_is_accepted() -> None:
    for pooling in POOLINGS:
        for precision in PRECISIONS:
            for decode in DECODES:
                ExtractorOptions("resnet18", pooling=pooling, precision=precision, decode=decode)


def test_the_cli_offers_exactly_the_declared_values() -> None:
    import click

    from featurestore.cli import main

    extract = main.commands["extract"]
    choices = {
        p.name: tuple(p.type.choices) for p in extract.params if isinstance(p.type, click.Choice)
    }
    assert choices["pooling"] == POOLINGS
    assert choices["precision"] == PRECISIONS
    assert choices["decode"] == DECODES


@pytest.mark.parametrize(
    ("given", "kind", "path"),
    [
        ("default", "default", None),
        (None, "default", None),
        ("none", "none", None),
        ("NONE", "none", None),
        ("w.pth", "file", Path("w.pth")),
        (Path("default"), "file", Path("default")),
    ],
)
def test_weights_are_parsed_once_into_a_choice(given, kind: str, path: Path | None) -> None:
    choice = WeightsChoice.parse(given)
    assert (choice.kind, choice.path) == (kind, path)
    assert WeightsChoice.parse(choice) is choice


def test_options_round_trip_through_json_and_cli_args() -> None:
    opts = ExtractorOptions(
        "vgg16",
        nodes=("features.30",),
        pooling="flatten",
        weights=WeightsChoice.parse("none"),
        input_size=150,
        precision="bf16",
        decode="full",
    )
    assert ExtractorOptions.from_json(opts.to_json()) == opts
    assert opts.cli_args() == [
        "--backbone", "vgg16", "--node", "features.30", "--pooling", "flatten",
        "--weights", "none", "--input-size", "150", "--precision", "bf16", "--decode", "full",
    ]  # fmt: skip
    assert ExtractorOptions("resnet18").cli_args() == ["--backbone", "resnet18"]


def test_json_from_a_newer_version_is_refused_not_half_read() -> None:
    with pytest.raises(BackboneError, match="unknown extractor option"):
        ExtractorOptions.from_json({"backbone": "resnet18", "colour_space": "lab"})
    with pytest.raises(BackboneError, match="name no backbone"):
        ExtractorOptions.from_json({"pooling": "avg"})


def test_one_extractor_has_one_backbone_and_combos_split_in_column_order() -> None:
    with pytest.raises(BackboneError, match="several backbones"):
        ExtractorOptions("alexnet+vgg16")
    assert split_backbones("alexnet+vgg16") == ["alexnet", "vgg16"]
    assert split_backbones(["a", "b"]) == ["a", "b"]
    with pytest.raises(BackboneError):
        split_backbones("alexnet+")


def test_resolve_takes_options_or_keywords_and_gives_the_same_extractor() -> None:
    by_kw = resolve("resnet18", weights="none", input_size=64, precision="bf16")
    opts = ExtractorOptions.make("resnet18", weights="none", input_size=64, precision="bf16")
    by_value = resolve(opts)
    assert by_kw.fingerprint == by_value.fingerprint
    assert by_value.options is opts
    assert by_value.weights.identity == "random-init:seed=0"
    with pytest.raises(TypeError):
        resolve(opts, precision="fp32")


def test_extractor_record_round_trips_and_reads_the_earlier_shape() -> None:
    ex = resolve("resnet18", weights="none", input_size=64)
    record = ExtractorRecord.of(ex, "/cache/resnet18-x.h5")
    again = ExtractorRecord.from_json(record.to_json())
    assert again == record and again.resolve().fingerprint == ex.fingerprint
    earlier = {  # what sweeps wrote before the record existed: only the options given
        "backbone": "resnet18",
        "fingerprint": ex.fingerprint,
        "nodes": ["fc"],
        "pooling": "none",
        "store": "s.h5",
        "options": {"weights": "none", "input_size": 64},
    }
    assert ExtractorRecord.from_json(earlier).resolve().fingerprint == ex.fingerprint
