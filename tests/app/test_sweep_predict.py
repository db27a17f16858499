"""Sweeps over cached features, saved heads and predict, end to end through the CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

from featurestore.featuresets import build_sweep_data, plan_split
from featurestore.sources import open_source

CLI = [sys.executable, "-m", "featurestore.cli"]
TINY = ["--weights", "none", "--input-size", "32", "--workers", "0"]


def make_split_folder(root: Path, n_train: int = 10, n_val: int = 6) -> Path:
    """Two classes that differ in colour, so any sensible head separates them."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls, base in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(np.array(base) + rng.normal(0, 30, (20, 20, 3)), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.png")
    return root


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True)


def sweep_rows(src: Path, out: Path, cache: str, *args: str, cv: int = 3) -> list[dict]:
    """`featurestore sweep` (tiny backbones) into ``out``; the leaderboard's rows."""
    common = ["--cv", str(cv), "--out", str(out), "--cache-dir", cache, *TINY]
    r = run("sweep", str(src), *args, *common)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "leaderboard.json").read_text())["rows"]


def accuracy(preds: list[dict[str, str]]) -> float:
    """Share of predict's CSV rows whose predicted label is the true one."""
    return sum(row["predicted"] == row["label"] for row in preds) / len(preds)


def predict_val(src: Path, head: Path, cache: str) -> list[dict[str, str]]:
    """`featurestore predict` on the val split; the CSV's rows."""
    out = head.parent / "pred.csv"
    p = run(
        "predict",
        str(src),
        "--split",
        "val",
        "--head",
        str(head),
        "--out",
        str(out),
        "--cache-dir",
        cache,
    )
    assert p.returncode == 0, p.stderr
    with open(out) as fh:
        return list(csv.DictReader(fh))


def test_sweep_combo_every_head_then_predict_reproduces_accuracy(tmp_path: Path) -> None:
    src = make_split_folder(tmp_path / "imgs")
    out = tmp_path / "report"
    cache = str(tmp_path / "cache")
    rows = sweep_rows(
        src,
        out,
        cache,
        "-b",
        "resnet18",
        "-b",
        "mobilenet_v3_small",
        "--combo",
        "resnet18+mobilenet_v3_small",
        "--no-grid",
    )
    from classifiers.heads import HEADS

    combo = {row["head"] for row in rows if row["feature_set"] == "resnet18+mobilenet_v3_small"}
    assert combo == set(HEADS)  # the combination ran through every head
    assert {row["feature_set"] for row in rows} == {
        "resnet18",
        "mobilenet_v3_small",
        "resnet18+mobilenet_v3_small",
        "pixels32",
    }
    widths = {row["feature_set"]: row["n_features"] for row in rows}
    assert widths["resnet18+mobilenet_v3_small"] == 512 + 1024
    assert all(row["n_train"] == 20 and row["n_test"] == 12 for row in rows)
    for name in (
        "leaderboard.md",
        "leaderboard.csv",
        "confusion_best.png",
        "roc.png",
        "leaderboard.png",
        "best_head.joblib",
        "best_head.joblib.json",
    ):
        assert (out / name).stat().st_size > 0
    best = rows[0]
    preds = predict_val(src, out / "best_head.joblib", cache)
    assert len(preds) == 12 and accuracy(preds) == pytest.approx(best["accuracy"], abs=0)
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in preds)


def test_saved_svm_head_predicts_with_calibrated_probabilities(tmp_path: Path) -> None:
    """An SVM has no predict_proba: the saved head calibrates its scores; labels stay its own."""
    src = make_split_folder(tmp_path / "imgs")
    out, cache = tmp_path / "report", str(tmp_path / "cache")
    (row,) = sweep_rows(src, out, cache, "-b", "resnet18", "--heads", "linear_svm", "--no-pixels")
    assert row["head"] == "linear_svm"
    preds = predict_val(src, out / "best_head.joblib", cache)
    assert accuracy(preds) == pytest.approx(row["accuracy"], abs=0)
    probs = [float(p["probability"]) for p in preds]  # empty before: ValueError here
    assert all(0.0 < q < 1.0 for q in probs)


def test_predict_refuses_tampered_head_and_foreign_extractor(tmp_path: Path) -> None:
    src = make_split_folder(tmp_path / "imgs", n_train=6, n_val=2)
    out = tmp_path / "report"
    cache = str(tmp_path / "cache")
    sweep_rows(
        src, out, cache, "-b", "resnet18", "--heads", "logreg", "--no-pixels", "--no-grid", cv=2
    )
    head = out / "best_head.joblib"
    side = out / "best_head.joblib.json"
    meta = json.loads(side.read_text())
    meta["metadata"]["extractors"][0]["fingerprint"] = "0" * 64
    side.write_text(json.dumps(meta))
    p = run("predict", str(src), "--head", str(head), "--cache-dir", cache)
    assert p.returncode == 1 and "fingerprint" in p.stderr
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))
    p = run("predict", str(src), "--head", str(head), "--cache-dir", cache)
    assert p.returncode == 1 and "sha256" in p.stderr


def test_split_plan_without_splits_is_deterministic_and_stratified(tmp_path: Path) -> None:
    src = make_split_folder(tmp_path / "imgs")
    flat = open_source(src / "train")
    a = plan_split(flat)
    b = plan_split(open_source(src / "train"))
    assert np.array_equal(a.test_mask, b.test_mask) and a.test_mask.any()
    labels = np.array([r.label for r in flat.records])
    for c in ("red", "blue"):
        assert a.test_mask[labels == c].any() and a.train_mask[labels == c].any()


@pytest.mark.skipif(not (SHARED / "catvnoncat").is_dir(), reason="../shared/datasets absent")
def test_catvnoncat_pretrained_features_beat_raw_pixels(tmp_path: Path) -> None:
    from classifiers.sweep import run_sweep

    data = build_sweep_data(
        SHARED / "catvnoncat", backbones=["efficientnet_lite0"], cache_dir=tmp_path / "c"
    )
    assert [fs.name for fs in data.feature_sets] == ["efficientnet_lite0", "pixels32"]
    assert data.feature_sets[0].X_train.shape == (209, 1280)
    assert data.feature_sets[0].X_test.shape == (50, 1280)
    results = run_sweep(data.feature_sets, heads=["logreg"], cv=3)
    acc = {r.feature_set: r.accuracy for r in results}
    assert acc["efficientnet_lite0"] >= 0.90
    assert acc["efficientnet_lite0"] - acc["pixels32"] >= 0.15
