"""Sweeps over cached features, saved heads and predict, end to end through the CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
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


def sweep_rows(
    src: Path, out: Path, cache: str, *args: str, cv: int = 3, stderr: list[str] | None = None
) -> list[dict]:
    """`featurestore sweep` (tiny backbones) into ``out``; the leaderboard's rows (and the
    progress lines on stderr appended to ``stderr``)."""
    common = ["--cv", str(cv), "--out", str(out), "--cache-dir", cache, *TINY]
    r = run("sweep", str(src), *args, *common)
    assert r.returncode == 0, r.stderr
    if stderr is not None:
        stderr += r.stderr.splitlines()
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
    progress: list[str] = []
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
        stderr=progress,
    )
    from classifiers.heads import HEADS

    # every head on every feature set says when it starts and when it is done, with its time
    # and the sweep's overall progress (counted in the order the fits end: they run side by
    # side)
    sets = ["resnet18", "mobilenet_v3_small", "resnet18+mobilenet_v3_small", "pixels16"]
    n = len(sets) * len(HEADS)
    counts = []
    for i, (fs, head) in enumerate(((f, h) for f in sets for h in HEADS), 1):
        label = f"[{i:>2}/{n}] {fs} / {head}: "
        assert f"{label}fitting 1 setting(s) x 3-fold CV" in progress
        done = [line for line in progress if line.startswith(f"{label}done in ")]
        assert len(done) == 1, label
        found = re.search(rf"elapsed, (\d+)/{n} done\)$", done[0])
        assert found, done[0]
        counts.append(int(found.group(1)))
    assert sorted(counts) == list(range(1, n + 1))

    combo = {row["head"] for row in rows if row["feature_set"] == "resnet18+mobilenet_v3_small"}
    assert combo == set(HEADS)  # the combination ran through every head
    assert {row["feature_set"] for row in rows} == {
        "resnet18",
        "mobilenet_v3_small",
        "resnet18+mobilenet_v3_small",
        "pixels16",
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
    # the report's per-image predictions are the saved head's: same labels, same probability
    with open(out / "predictions.csv", newline="") as fh:
        report = {row["path"]: row for row in csv.DictReader(fh)}
    assert set(report) == {row["path"] for row in preds}
    for row in preds:
        mine = report[row["path"]]
        assert (mine["predicted"], mine["label"]) == (row["predicted"], row["label"])
        assert float(mine["probability"]) == pytest.approx(float(row["probability"]), abs=1e-6)


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
    # loaded with joblib alone, the sweep's saved head predicts class names, not indices
    plain = joblib.load(out / "best_head.joblib")
    names = json.loads((out / "best_head.joblib.json").read_text())["metadata"]["class_names"]
    assert [str(c) for c in plain.classes_] == names and set(names) == {"red", "blue"}


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
    assert [fs.name for fs in data.feature_sets] == ["efficientnet_lite0", "pixels16"]
    assert data.feature_sets[0].X_train.shape == (209, 1280)
    assert data.feature_sets[0].X_test.shape == (50, 1280)
    results = run_sweep(data.feature_sets, heads=["logreg"], cv=3)
    acc = {r.feature_set: r.accuracy for r in results}
    assert acc["efficientnet_lite0"] >= 0.90
    assert acc["efficientnet_lite0"] - acc["pixels16"] >= 0.15


# ----------------------------------------------------------------------------- report folder
SMALL = ["-b", "resnet18", "--no-pixels", "--heads", "logreg", "--no-grid", "--cv", "2", *TINY]
# Root ignores chmod; dropping the two DAC capabilities makes it obey permissions.
DROP_DAC = [
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
]


def _error_line(stderr: bytes, *, alone: bool = True) -> str:
    """The one ``error:`` line (no traceback); ``alone``: nothing else was printed."""
    lines = stderr.decode().strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr.decode()
    assert not alone or len(lines) == 1, lines
    return errors[0]


def test_an_unwritable_report_folder_fails_before_any_extraction_or_fit(
    tmp_path: Path, run_cli
) -> None:
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("as root a read-only folder needs setpriv (root ignores chmod)")
    src = make_split_folder(tmp_path / "imgs", n_train=4, n_val=2)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cache = tmp_path / "cache"
    try:
        r = run_cli(
            "sweep",
            src,
            *SMALL,
            "--out",
            locked / "report",
            "--cache-dir",
            cache,
            prefix=DROP_DAC if os.geteuid() == 0 else (),
        )
    finally:
        locked.chmod(0o755)
    assert r.returncode == 1
    line = _error_line(r.stderr)
    assert "cannot write the report" in line and "Permission denied" in line
    assert not cache.exists()  # nothing was extracted, nothing fitted
    assert list(locked.iterdir()) == []


def test_a_folder_that_is_not_a_report_is_refused_before_any_work(tmp_path: Path, run_cli) -> None:
    src = make_split_folder(tmp_path / "imgs", n_train=4, n_val=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    r = run_cli("sweep", src, *SMALL, "--out", mine, "--cache-dir", tmp_path / "cache")
    assert r.returncode == 1 and "not a featurestore report" in _error_line(r.stderr)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert not (tmp_path / "cache").exists()


def _can_mount_tmpfs(tmp: Path) -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = tmp / "probe"
    probe.mkdir()
    ok = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
        capture_output=True,
    )
    probe.rmdir()
    return ok.returncode == 0


def test_a_full_disk_keeps_the_previous_report_whole(tmp_path: Path, run_cli, cli_env) -> None:
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs root with unshare and mount for a small private tmpfs")
    src = make_split_folder(tmp_path / "imgs", n_train=4, n_val=2)
    cache = tmp_path / "cache"
    previous = tmp_path / "previous"
    r = run_cli("sweep", src, *SMALL, "--out", previous, "--cache-dir", cache)
    assert r.returncode == 0, r.stderr.decode()
    size = sum(p.stat().st_size + 4096 for p in previous.iterdir())
    disk, res = tmp_path / "disk", tmp_path / "res"
    disk.mkdir()
    res.mkdir()
    cmd = " ".join(
        shlex.quote(str(a))
        for a in [
            sys.executable,
            "-m",
            "featurestore.cli",
            "sweep",
            src,
            *SMALL,
            "--out",
            disk / "report",
            "--cache-dir",
            cache,
        ]
    )
    script = (
        f"mount -t tmpfs -o size={size + size // 3} tmpfs {disk} || exit 97\n"
        f"cp -a {previous} {disk}/report || exit 98\n"
        f"{cmd} >{res}/out 2>{res}/err; echo $? >{res}/rc\n"
        f"diff -r {previous} {disk}/report >{res}/diff; echo $? >{res}/same\n"
        f"ls -A {disk} >{res}/ls\n"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=cli_env(), timeout=300)
    assert done.returncode == 0, done
    assert (res / "rc").read_text().strip() == "1"
    line = _error_line((res / "err").read_bytes(), alone=False)  # after the fits' progress
    assert "No space left on device" in line and "previous report there" in line
    assert (res / "same").read_text().strip() == "0", (res / "diff").read_text()
    assert (res / "ls").read_text().split() == ["report"]  # no partial folder left beside it


# ----------------------------------------------------------------------------- options
def _train_only_h5(path: Path, n: int = 24) -> Path:
    """An HDF5 file with only a training split (like catvnoncat's train file alone)."""
    import h5py

    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, 8, 8, 3), dtype=np.uint8)
    x[y == 1, :, :, 2] += 180  # class 1 is blue
    with h5py.File(path, "w") as f:
        f["train_set_x"] = x
        f["train_set_y"] = y
        f["list_classes"] = np.array([b"red", b"blue"])
    return path


def test_a_lone_training_file_says_what_works_and_test_fraction_does(
    tmp_path: Path, run_cli
) -> None:
    src = _train_only_h5(tmp_path / "tiny_train.h5")
    args = ["sweep", src, "--heads", "logreg", "--no-grid", "--cv", "2", "--pixel-size", "4"]
    r = run_cli(*args, cwd=tmp_path)
    line = _error_line(r.stderr)
    assert r.returncode == 1 and "nothing to evaluate on" in line
    assert "--test-fraction 0.2" in line and "--train-split" not in line
    r = run_cli(*args, "--test-fraction", "0.25", "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    report = tmp_path / "report-tiny_train"  # the default --out, in the current folder
    markdown = (report / "leaderboard.md").read_text()
    assert "only the split 'train': deterministic stratified hash split" in markdown
    assert "test fraction 0.25, seed 3" in markdown
    provenance = json.loads((report / "leaderboard.json").read_text())["provenance"]
    assert (provenance["test_fraction"], provenance["seed"]) == (0.25, 3)
    assert f"report     {report.name}" in r.stdout.decode()


def test_sweep_help_lists_the_selection_and_split_options(run_cli) -> None:
    text = run_cli("sweep", "--help").stdout.decode()
    for option in ("--scoring", "--class-weight", "--test-fraction", "--seed", "--out"):
        assert option in text
    assert "accuracy|balanced_accuracy|f1_macro" in text
