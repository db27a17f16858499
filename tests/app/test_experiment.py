"""run_experiment: a sweep end to end in the library, returning a value (the CLI only prints)."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.errors import OptionError
from featurestore.experiment import Anchor, parse_anchor, run_experiment
from featurestore.headfile import load_head_card

TINY = {"weights": "none", "input_size": 32}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, make_images) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    make_images(root / "train", n=16, seed=3)
    make_images(root / "val", n=8, seed=4)
    return root


def test_a_sweep_runs_end_to_end_and_returns_its_results(folder: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out = run_experiment(
        folder,
        out_dir=tmp_path / "report",
        backbones=["mobilenet_v3_small"],
        heads=["logreg", "gaussian_nb"],
        cv=2,
        use_grid=False,
        anchors=[Anchor("published", 0.5)],
        cache_dir=tmp_path / "cache",
        progress=lines.append,
        **TINY,
    )
    assert {(r.feature_set, r.head) for r in out.results} == {
        (fs, h) for fs in ("mobilenet_v3_small", "pixels32") for h in ("logreg", "gaussian_nb")
    }
    assert out.best is out.results[0]
    assert {"markdown", "csv", "json", "head"} <= set(out.paths)
    assert all(p.is_file() for p in out.paths.values())
    assert any("Published anchor published: 0.5000" in n for n in out.notes)
    assert out.notes[0].startswith("Split: given splits: train on 'train', evaluate on 'val'")
    assert len(lines) == 2 * len(out.results)
    _, card = load_head_card(out.paths["head"])
    assert (card.feature_set, card.head) == (out.best.feature_set, out.best.head)
    assert card.class_names == ["cat", "dog"]


def test_anchors_parse_from_the_command_line_form() -> None:
    assert parse_anchor("ResNet-18 frozen=0.9477") == Anchor("ResNet-18 frozen", 0.9477)
    assert parse_anchor("a=b=0.5") == Anchor("a=b", 0.5)
    for bad in ("x=high", "0.5", "=0.5"):
        with pytest.raises(OptionError, match="NAME=ACCURACY"):
            parse_anchor(bad)
