"""`featurestore predict`: a probability column per class (or the top k), stdout with `--out -`,
the exit code and skipped list of `extract`, no input ever overwritten, atomic writes, and every
refusal one line with exit 1. Saved heads carry their class names for plain joblib users.

The head is built here in-process (tiny random-weight backbone, logistic regression) and saved
as a sweep saves it, so the tests need no sweep.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from classifiers.heads import get_head
from classifiers.labelled import LabelledClassifier
from featurestore.api import load_features
from featurestore.cli import main as cli
from featurestore.errors import OutputError
from featurestore.headfile import HeadCard, save_head, save_head_card, sidecar_path
from featurestore.predict import predict

TINY = {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32}
CLASSES = ("blue", "green", "red")
BAD_NAME = "bad\x1b[2J\x1b]0;pwned\x07.png"  # clears the screen and sets the window title


def _colour_folder(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    base = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for cls in CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(np.array(base[cls]) + rng.normal(0, 25, (20, 20, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A labelled folder, the same folder plus an undecodable file, a cache holding both, and a
    head saved as a sweep saves it."""
    root = tmp_path_factory.mktemp("predict")
    clean = _colour_folder(root / "clean")
    broken = _colour_folder(root / "broken")
    (broken / "red" / BAD_NAME).write_bytes(b"not an image at all")
    cache = root / "cache"
    feats = load_features(clean, cache_dir=cache, workers=0, **TINY)
    load_features(broken, cache_dir=cache, workers=0, **TINY)
    estimator = get_head("logreg").build().fit(feats.X, feats.y)
    card = HeadCard(
        feature_set=TINY["backbone"],
        head="logreg",
        class_names=feats.class_names,
        extractors=feats.extractors,
    )
    head = save_head_card(estimator, root / "head" / "best_head.joblib", card)
    return {"root": root, "clean": clean, "broken": broken, "cache": cache, "head": head}


def _invoke(world: dict[str, Path], *args: str | Path, source: str = "clean") -> Any:
    argv = ["predict", str(world[source]), "--head", str(world["head"])]
    argv += ["--cache-dir", str(world["cache"]), *map(str, args)]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ---------------------------------------------------------------------------- the CSV
def test_a_joblib_loaded_head_predicts_class_names(world: dict[str, Path]) -> None:
    head = joblib.load(world["head"])
    feats = load_features(world["clean"], cache_dir=world["cache"], workers=0, **TINY)
    assert isinstance(head, LabelledClassifier)
    assert list(head.classes_) == list(CLASSES)
    predicted = head.predict(feats.X)
    assert set(predicted) <= set(CLASSES) and predicted.dtype.kind == "U"
    assert np.mean(predicted == np.array(feats.labels)) == 1.0  # colours are easy
    assert head.predict_proba(feats.X).shape == (len(feats), len(CLASSES))


def test_the_csv_has_a_probability_column_per_class(world, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    done = _invoke(world, "--out", out)
    assert done.exit_code == 0, done.output
    rows = _rows(out.read_text())
    assert list(rows[0]) == ["path", "predicted", "probability", "label"] + [
        f"p_{c}" for c in CLASSES
    ]
    assert len(rows) == 4 * len(CLASSES)
    for row in rows:
        probs = {c: float(row[f"p_{c}"]) for c in CLASSES}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert float(row["probability"]) == probs[row["predicted"]]
        assert row["predicted"] == max(probs, key=probs.get) == row["label"]


def test_top_k_gives_the_k_most_probable_classes(world, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert _invoke(world, "--out", out, "--top-k", "2").exit_code == 0
    rows = _rows(out.read_text())
    head = ["path", "predicted", "probability", "label", "top1", "p_top1", "top2", "p_top2"]
    assert list(rows[0]) == head
    for row in rows:
        assert row["top1"] == row["predicted"] and row["top2"] != row["top1"]
        assert float(row["p_top1"]) >= float(row["p_top2"])
    assert _invoke(world, "--out", out, "--top-k", "9").exit_code == 0  # at most every class
    assert list(_rows(out.read_text())[0])[-2:] == ["top3", "p_top3"]


def test_out_dash_writes_the_csv_to_stdout_and_no_file(world, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = _invoke(world, "--out", "-")
    assert done.exit_code == 0, done.output
    assert not list(tmp_path.iterdir()), "--out - created a file"
    rows = _rows(done.stdout)
    assert len(rows) == 12 and rows[0]["predicted"] in CLASSES
    assert "predicted  12 images -> stdout" in done.stderr  # the summary keeps off stdout


def test_a_broken_image_exits_3_and_is_listed_as_extract_lists_it(world, tmp_path) -> None:
    out = tmp_path / "p.csv"
    done = _invoke(world, "--out", out, source="broken")
    assert done.exit_code == 3, done.output
    assert "skipped    1" in done.stdout
    listed = [line for line in done.stdout.splitlines() if line.startswith("  - ")]
    argv = ["extract", str(world["broken"]), "--cache-dir", str(world["cache"])]
    argv += ["--backbone", "mobilenet_v3_small", "--weights", "none", "--input-size", "32"]
    extract = CliRunner().invoke(cli, argv)
    assert extract.exit_code == 3
    assert listed == [line for line in extract.stdout.splitlines() if line.startswith("  - ")]
    assert len(_rows(out.read_text())) == 12  # the broken file has no row


def test_printed_file_names_cannot_drive_the_terminal(world, tmp_path: Path) -> None:
    done = _invoke(world, "--out", tmp_path / "p.csv", source="broken")
    assert "\x1b" not in done.output and "\x07" not in done.output
    assert "bad\\x1b[2J\\x1b]0;pwned\\x07.png" in done.stdout


def test_stdout_csv_keeps_bytes_in_a_pipe_and_escapes_them_on_a_terminal(world, cli_env):
    """To a pipe the CSV is data: a file name's bytes as they are. On a terminal, escaped."""
    name = (world["broken"] / "red" / "esc\x1b[31m.png").resolve()
    shutil.copy(world["broken"] / "red" / "0.png", name)
    try:
        argv = [sys.executable, "-m", "featurestore.cli", "predict", str(world["broken"])]
        argv += ["--head", str(world["head"]), "--cache-dir", str(world["cache"]), "--out", "-"]
        piped = subprocess.run(argv, capture_output=True, env=cli_env(), check=False)
        assert piped.returncode == 3, piped.stderr
        assert b"esc\x1b[31m.png" in piped.stdout  # raw, parseable data
        leader, follower = pty.openpty()
        try:
            on_tty = subprocess.run(
                argv, stdout=follower, stderr=subprocess.PIPE, env=cli_env(), check=False
            )
        finally:
            os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO once the child is gone and everything was read
                break
            if not chunk:
                break
            shown += chunk
        os.close(leader)
        assert on_tty.returncode == 3, on_tty.stderr
        assert b"esc\\x1b[31m.png" in shown and b"\x1b" not in shown
        assert b"\x1b" not in on_tty.stderr
    finally:
        name.unlink()


# ---------------------------------------------------------------------------- never an input
@pytest.mark.parametrize("which", ["manifest", "head", "sidecar", "image", "symlink"])
def test_predict_refuses_to_overwrite_an_input(world, tmp_path, monkeypatch, which) -> None:
    monkeypatch.chdir(world["root"])
    manifest = world["root"] / "m.csv"
    manifest.write_text("clean/red/0.png,red\nclean/blue/0.png,blue\n")
    link = tmp_path / "link.csv"
    link.symlink_to(manifest)
    out = {
        "manifest": "./m.csv",
        "head": str(world["head"]),
        "sidecar": str(sidecar_path(world["head"])),
        "image": "clean/red/0.png",
        "symlink": str(link),
    }[which]
    target = (world["root"] / out).resolve()
    before = target.read_bytes()
    argv = ["predict", "m.csv", "--head", str(world["head"]), "--cache-dir", str(world["cache"])]
    done = CliRunner().invoke(cli, [*argv, "--out", out], catch_exceptions=False)
    assert done.exit_code == 1
    assert done.stderr.startswith("error: refusing to write") and done.stderr.count("\n") == 1
    assert target.read_bytes() == before


def test_predictions_are_written_atomically(world, tmp_path, monkeypatch) -> None:
    """A write that fails halfway leaves the previous file as it was and no temporary file."""
    pred = predict(world["clean"], world["head"], cache_dir=world["cache"])
    out = tmp_path / "p.csv"
    out.write_text("previous predictions\n")
    real = csv.writer

    class FullDisk:
        def __init__(self, fh: Any) -> None:
            self.inner = real(fh)

        def writerow(self, row: list[str]) -> None:
            self.inner.writerow(row)

        def writerows(self, rows: Any) -> None:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("featurestore.predict.csv.writer", FullDisk)
    with pytest.raises(OutputError, match="No space left"):
        pred.write_csv(out)
    assert out.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_a_head_saved_before_heads_carried_names_still_predicts_names(world, tmp_path) -> None:
    """Heads written by earlier versions hold the bare estimator (predicting indices)."""
    labelled = joblib.load(world["head"])
    side = json.loads(sidecar_path(world["head"]).read_text())
    old = save_head(labelled.estimator_, tmp_path / "old.joblib", metadata=side["metadata"])
    assert not isinstance(joblib.load(old), LabelledClassifier)
    new = predict(world["clean"], world["head"], cache_dir=world["cache"])
    again = predict(world["clean"], old, cache_dir=world["cache"])
    assert again.predicted == new.predicted and set(again.predicted) <= set(CLASSES)
    np.testing.assert_array_equal(again.probabilities, new.probabilities)


# ---------------------------------------------------------------------------- refusals
def _set_sidecar(head: Path, edit: Any) -> None:
    side = sidecar_path(head)
    data = json.loads(side.read_text())
    edit(data)
    side.write_text(json.dumps(data))


def _matching_sha(head: Path) -> None:
    digest = hashlib.sha256(head.read_bytes()).hexdigest()
    _set_sidecar(head, lambda d: d.update(sha256=digest))


def _tamper(kind: str, head: Path) -> None:
    """Make the copy of a good head at ``head`` bad in one way."""
    if kind == "tampered head":
        data = bytearray(head.read_bytes())
        data[len(data) // 2] ^= 0xFF
        head.write_bytes(bytes(data))
    elif kind == "missing sidecar":
        sidecar_path(head).unlink()
    elif kind == "sidecar is a JSON list":
        sidecar_path(head).write_text("[1, 2, 3]")
    elif kind == "random bytes as the head":
        head.write_bytes(np.random.default_rng(1).bytes(300))
        _matching_sha(head)
    elif kind == "text as the head":
        head.write_text("these are not the weights you are looking for\n")
        _matching_sha(head)
    elif kind == "unknown option in the sidecar":
        _set_sidecar(head, lambda d: d["metadata"]["extractors"][0]["options"].update(hue=1))
    elif kind == "class names shorter than the head's":
        _set_sidecar(head, lambda d: d["metadata"].update(class_names=["blue"]))
    elif kind == "foreign extractor":
        _set_sidecar(head, lambda d: d["metadata"]["extractors"][0].update(fingerprint="0" * 64))
    elif kind == "no such head":
        head.unlink()


REFUSALS = [
    "tampered head",
    "missing sidecar",
    "sidecar is a JSON list",
    "random bytes as the head",
    "text as the head",
    "unknown option in the sidecar",
    "class names shorter than the head's",
    "foreign extractor",
    "no such head",
    "out is /dev/full",
    "out under a file",
    "out in a read-only folder",
]


def test_every_predict_refusal_is_one_line_with_exit_1(world, tmp_path, cli_env) -> None:
    """The real command, one process per case (run side by side): never a traceback."""
    procs = {}
    for i, case in enumerate(REFUSALS):
        folder = tmp_path / f"case{i}"
        shutil.copytree(world["head"].parent, folder)
        head = folder / world["head"].name
        _tamper(case, head)
        out, prefix = folder / "p.csv", []
        if case == "out is /dev/full":
            out = Path("/dev/full")
        elif case == "out under a file":
            out = head.parent / "best_head.joblib.json" / "p.csv"
        elif case == "out in a read-only folder":
            ro = folder / "ro"
            ro.mkdir()
            ro.chmod(0o555)
            out = ro / "p.csv"
            if os.geteuid() == 0:  # root writes anywhere unless it drops the capability
                if shutil.which("setpriv") is None:
                    continue
                prefix = ["setpriv", "--bounding-set", "-dac_override", "--inh-caps"]
                prefix += ["-dac_override"]
        argv = [*prefix, sys.executable, "-m", "featurestore.cli", "predict"]
        argv += [str(world["clean"]), "--head", str(head), "--cache-dir", str(world["cache"])]
        argv += ["--out", str(out)]
        procs[case] = subprocess.Popen(
            argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    assert len(procs) >= len(REFUSALS) - 1
    for case, proc in procs.items():
        _, err_bytes = proc.communicate(timeout=300)
        err = err_bytes.decode()
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 1, (case, proc.returncode, err)
        assert "Traceback" not in err, (case, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
