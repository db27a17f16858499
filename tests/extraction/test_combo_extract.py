"""`extract` takes a combination (``a+b``) as `sweep --combo` and `load_features` do: each part
is extracted into its own store, from one scan of the source, with the same options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featurestore.api import load_features
from featurestore.cli import main as cli
from featurestore.extraction import extract
from featurestore.store import FeatureStore

OPTS = {"weights": "none", "input_size": 32, "workers": 0}
COMBO = "mobilenet_v3_small+resnet18"


@pytest.fixture
def images(tmp_path: Path, make_images) -> Path:
    make_images(tmp_path / "imgs", n=6)
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"no image")
    return tmp_path / "imgs"


def test_extract_a_combination_extracts_each_part(images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = extract(images, backbone=COMBO, cache_dir=cache, **OPTS)
    assert [p.backbone for p in result.parts] == ["mobilenet_v3_small", "resnet18"]
    assert result.backbone == COMBO and result.feature_dim == 1024 + 512
    assert result.n_extracted == 12 and [p.n_extracted for p in result.parts] == [6, 6]
    assert [s.path for s in result.skipped] == [str(images / "cat" / "broken.png")]
    for part in result.parts:  # each part's rows are those of a plain extract of that backbone
        alone = extract(images, backbone=part.backbone, cache_dir=tmp_path / part.backbone, **OPTS)
        ka, ra = FeatureStore(part.store).read_all()
        kb, rb = FeatureStore(alone.store).read_all()
        assert ka == kb and np.array_equal(ra, rb)
    feats = load_features(images, backbone=COMBO, cache_dir=cache, **OPTS)
    assert feats.X.shape == (6, 1024 + 512)
    again = extract(images, backbone=COMBO, cache_dir=cache, **OPTS)
    assert again.n_extracted == 0 and again.n_reused == 12


def test_the_command_extracts_a_combination(images: Path, tmp_path: Path) -> None:
    argv = ["extract", str(images), "-b", COMBO, "--weights", "none", "--input-size", "32"]
    argv += ["--workers", "0", "--cache-dir", str(tmp_path / "cache")]
    done = CliRunner().invoke(cli, [*argv, "--json"])
    assert done.exit_code == 3, done.output  # the broken file: listed once, exit 3
    summary = json.loads(done.stdout)
    assert [p["backbone"] for p in summary["parts"]] == COMBO.split("+")
    assert summary["skipped"] == 1 and summary["feature_dim"] == 1536
    human = CliRunner().invoke(cli, argv)
    assert human.exit_code == 3
    assert "extracted  0 (mobilenet_v3_small 0, resnet18 0)" in human.stdout
    assert human.stdout.count("broken.png") == 1
    assert human.stdout.count(".h5") == 2  # one store per part
