"""Extracting views: view 0 is the plain store, only missing (image, view) pairs are computed,
rows are the same bits however the run was split, and a SIGKILL mid-run resumes cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

from featurestore.extraction import extract
from featurestore.pipeline import group_records
from featurestore.store import FeatureStore, verify
from featurestore.views import get_policy

TINY = {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32, "device": "cpu"}


def _rows(path: Path) -> dict[str, np.ndarray]:
    keys, rows = FeatureStore(path).read_all()
    return dict(zip(keys, rows, strict=True))


def _same_rows(a: Path, b: Path) -> bool:
    ka, ra = FeatureStore(a).read_all()
    kb, rb = FeatureStore(b).read_all()
    return ka == kb and np.array_equal(ra, rb)


# ------------------------------------------------------------------------------ reuse and counts
def test_view_0_reuses_the_plain_store_and_leaves_it_untouched(
    tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "imgs", 8)
    cache = tmp_path / "cache"
    plain = extract(tmp_path / "imgs", cache_dir=cache, batch_size=4, workers=0, **TINY)
    plain_bytes = plain.store.read_bytes()
    r = extract(
        tmp_path / "imgs", cache_dir=cache, batch_size=4, workers=0, views="crops10", **TINY
    )
    assert r.store == plain.store == r.view_stores[0]
    assert plain.store.read_bytes() == plain_bytes  # not a copy, not rewritten
    assert (r.views, r.views_per_image) == ("crops10", 10)
    assert (r.n_views_extracted, r.n_views_reused) == (8 * 9, 8)  # view 0 was cached
    assert (r.n_extracted, r.n_reused) == (8, 0)  # images with a view computed / all cached
    assert len(set(r.view_stores)) == 10 and all(p.exists() for p in r.view_stores)
    d = r.to_dict()
    assert (d["views_extracted"], d["views_reused"], d["views_per_image"]) == (72, 8, 10)
    # a second run computes nothing, and flip's mirror is crops10's view 5: also cached
    again = extract(tmp_path / "imgs", cache_dir=cache, workers=0, views="crops10", **TINY)
    assert (again.n_views_extracted, again.n_views_reused, again.n_extracted) == (0, 80, 0)
    assert "forward" not in again.timings  # no model was built
    flip = extract(tmp_path / "imgs", cache_dir=cache, workers=0, views="flip", **TINY)
    assert (flip.n_views_extracted, flip.n_views_reused) == (0, 16)
    assert flip.view_stores == [r.view_stores[0], r.view_stores[5]]
    for p in r.view_stores:
        assert verify(p).ok and len(FeatureStore(p).keys()) == 8


def test_views_first_then_plain_extracts_nothing(
    tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "imgs", 5)
    r = extract(tmp_path / "imgs", cache_dir=tmp_path / "c", workers=0, views="flip", **TINY)
    assert (r.n_views_extracted, r.n_extracted) == (10, 5)
    plain = extract(tmp_path / "imgs", cache_dir=tmp_path / "c", workers=0, **TINY)
    assert (plain.n_extracted, plain.n_reused, plain.store) == (0, 5, r.store)
    assert (plain.views, plain.n_views_extracted, plain.n_views_reused) == (None, 0, 5)


def test_only_the_missing_pairs_are_computed(
    tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    paths = make_images(tmp_path / "imgs", 6)
    cache = tmp_path / "c"
    extract(tmp_path / "imgs", cache_dir=cache, workers=0, views="flip", **TINY)
    make_images(tmp_path / "imgs", 2, seed=9)  # two new images
    r = extract(tmp_path / "imgs", cache_dir=cache, workers=0, views="crops10", **TINY)
    # old images: views 0 and 5 cached, 8 missing each; new ones: all 10
    assert (r.n_views_extracted, r.n_views_reused) == (6 * 8 + 2 * 10, 6 * 2)
    assert (r.n_extracted, r.n_reused, r.n_images) == (8, 0, 8)
    assert all(len(FeatureStore(p).keys()) == 8 for p in r.view_stores)
    assert len(paths) == 6


def test_a_bad_image_is_decoded_once_and_skipped_once(
    tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"not an image")
    r = extract(tmp_path / "imgs", cache_dir=tmp_path / "c", workers=0, views="crops10", **TINY)
    assert [Path(s.path).name for s in r.skipped] == ["broken.png"]
    assert (r.n_extracted, r.n_views_extracted, r.n_views_reused) == (4, 40, 0)


# ------------------------------------------------------------------------------ determinism
def _images_with_a_broken_one(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(7):
        arr = rng.integers(0, 256, (40 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("policy", ["random16", "crops10"])
def test_same_bits_across_workers_runs_and_resumes(tmp_path: Path, policy: str) -> None:
    src = _images_with_a_broken_one(tmp_path / "imgs")
    kw = {**TINY, "batch_size": 4, "views": policy}
    runs = {
        "replica workers": extract(src, cache_dir=tmp_path / "a", **kw),
        "decode workers": extract(src, cache_dir=tmp_path / "b", workers=2, **kw),
        "main process": extract(src, cache_dir=tmp_path / "c", workers=0, **kw),
    }
    # a run that finds the plain rows and the first half of the views cached
    half = get_policy(policy).n_views // 2
    extract(src, cache_dir=tmp_path / "d", workers=0, **{**kw, "views": None})
    ref = runs["main process"]
    for v in range(1, half):
        path = tmp_path / "d" / ref.view_stores[v].name
        keys, rows = FeatureStore(ref.view_stores[v]).read_all()
        FeatureStore(path, spec=get_policy(policy).spec(ref.extractor.spec, v)).append(
            keys[:3], rows[:3]
        )
    runs["resumed"] = extract(src, cache_dir=tmp_path / "d", workers=1, **kw)
    for name, r in runs.items():
        assert [Path(s.path).name for s in r.skipped] == ["broken.png"], name
        for mine, theirs in zip(r.view_stores, ref.view_stores, strict=True):
            assert mine.name == theirs.name
            assert _same_rows(mine, theirs), (name, mine.name)
            assert len(FeatureStore(mine).keys()) == 7
    # view 0 of a views run is exactly a plain run's row
    plain = extract(src, cache_dir=tmp_path / "e", workers=0, **{**kw, "views": None})
    assert _same_rows(plain.store, ref.view_stores[0])
    # views are different rows
    rows = [FeatureStore(p).read_all()[1] for p in ref.view_stores]
    assert all(not np.array_equal(rows[0], r) for r in rows[1:])


def test_group_records_fills_the_network_batch() -> None:
    assert group_records([1] * 10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # plain batching
    groups = group_records([10] * 40, 32)  # crops10: 16 images = 160 rows = 5 passes
    assert [len(g) for g in groups] == [16, 16, 8]
    assert group_records([16] * 5, 32) == [[0, 1], [2, 3], [4]]
    # a resumed run: images with fewer missing views share a batch, never beyond its rows
    mixed = [10, 3, 10, 10, 1, 10]
    groups = group_records(mixed, 4)  # 4 * 5 = 20 rows per batch
    assert [i for g in groups for i in g] == list(range(6))
    assert all(sum(mixed[i] for i in g) <= 20 for g in groups)
    assert group_records([7] * 6, 5) == [[0, 1, 2, 3, 4], [5]]  # 7 passes: 35 rows, no padding
    # no multiple of the views within 8 passes: one image per batch (11 rows in 3 passes)
    assert group_records([11, 11], 5) == [[0], [1]]


# ------------------------------------------------------------------------------ SIGKILL
N_KILL = 12
KILL_VIEWS = "crops10"


def _views_child(source: str, cache: str, replace_kill: int = 0) -> None:
    """Extract ``KILL_VIEWS`` in this (forked) process; with ``replace_kill`` SIGKILL ourselves
    just before the n-th atomic rename (a part or a compacted file fsynced, not yet in place)."""
    import torch

    torch.set_num_threads(1)
    if replace_kill:
        orig, count = os.replace, {"n": 0}

        def replace(src: Any, dst: Any) -> None:
            count["n"] += 1
            if count["n"] == replace_kill:
                os.kill(os.getpid(), signal.SIGKILL)
            orig(src, dst)

        os.replace = replace
    extract(source, cache_dir=cache, batch_size=4, workers=0, views=KILL_VIEWS, **TINY)


def _parts(cache: Path) -> int:
    return sum(1 for _ in cache.glob("*.parts/part-*.h5"))


@pytest.fixture(scope="module")
def kill_world(
    tmp_path_factory: pytest.TempPathFactory, fork_ctx: Any, make_images: Any
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("views-kill")
    make_images(root / "imgs", N_KILL, size=(30, 26), seed=5)
    ref = root / "ref"
    p = fork_ctx.Process(target=_views_child, args=(str(root / "imgs"), str(ref)))
    p.start()
    p.join(180)
    assert p.exitcode == 0
    stores = sorted(ref.glob("*.h5"))
    assert len(stores) == get_policy(KILL_VIEWS).n_views
    return {"src": root / "imgs", "ref": {p.name: _rows(p) for p in stores}}


def _assert_sound(cache: Path, ref: dict[str, dict[str, np.ndarray]]) -> int:
    """Every store after a kill: verifies, no duplicate key in a consolidated file, every row in
    every file equal to the uninterrupted run's. Returns the (image, view) rows held."""
    held = 0
    for name, want in ref.items():
        store = cache / name
        parts = sorted(cache.glob(f"{store.stem}.parts/part-*.h5"))
        if not store.exists() and not parts:
            continue
        report = verify(store)
        assert report.ok, report.problems
        for path in ([store] if store.exists() else []) + parts:
            with h5py.File(path, "r") as f:
                keys = [k.decode() for k in f["keys"][...]]
                rows = f["features"][...]
            if path == store:
                assert len(set(keys)) == len(keys), f"duplicate keys in {name}"
            for k, row in zip(keys, rows, strict=True):
                assert np.array_equal(row, want[k]), f"{path.name}: wrong row"
        held += len(FeatureStore(store).keys())
    return held


def _assert_complete(cache: Path, ref: dict[str, dict[str, np.ndarray]]) -> None:
    assert sorted(p.name for p in cache.glob("*.h5")) == sorted(ref)
    for name, want in ref.items():
        keys, rows = FeatureStore(cache / name).read_all()
        assert keys == sorted(want) and np.array_equal(rows, np.stack([want[k] for k in keys]))
        assert not list(cache.glob(f"{Path(name).stem}.parts/part-*.h5")), "parts left over"


def _resume(fork_ctx: Any, world: dict[str, Any], cache: Path) -> None:
    p = fork_ctx.Process(target=_views_child, args=(str(world["src"]), str(cache)))
    p.start()
    p.join(180)
    assert p.exitcode == 0
    _assert_complete(cache, world["ref"])


@pytest.mark.parametrize("after_parts", [1, 17, 43])
def test_sigkill_once_parts_landed_then_resume(
    after_parts: int, kill_world: dict[str, Any], fork_ctx: Any, tmp_path: Path
) -> None:
    """Killed once ``after_parts`` journal parts of the views' stores exist (one part per view
    per batch of 2 images: 60 in the run), then run again to completion."""
    cache = tmp_path / "cache"
    p = fork_ctx.Process(target=_views_child, args=(str(kill_world["src"]), str(cache)))
    p.start()
    deadline = time.monotonic() + 120
    while _parts(cache) < after_parts and p.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    p.kill()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL, "the run ended before the kill: no trial"
    assert _assert_sound(cache, kill_world["ref"]) >= 2 * after_parts
    _resume(fork_ctx, kill_world, cache)


@pytest.mark.parametrize("n", [1, 25, 63])
def test_sigkill_before_an_atomic_rename_then_resume(
    n: int, kill_world: dict[str, Any], fork_ctx: Any, tmp_path: Path
) -> None:
    """Renames: 60 parts, then one compacted file per store. n=1: the first part; 25: mid-run;
    63: the third store's compaction."""
    cache = tmp_path / "cache"
    p = fork_ctx.Process(target=_views_child, args=(str(kill_world["src"]), str(cache), n))
    p.start()
    p.join(180)
    assert p.exitcode == -signal.SIGKILL, f"the kill at rename #{n} never fired"
    _assert_sound(cache, kill_world["ref"])
    _resume(fork_ctx, kill_world, cache)


# ------------------------------------------------------------------------------ the command
def test_cli_views_json_progress_and_second_run(
    tmp_path: Path,
    make_images: Callable[..., list[Path]],
    run_cli: Any,
    tiny_cli_args: list[str],
) -> None:
    make_images(tmp_path / "imgs", 6)
    base = ["extract", tmp_path / "imgs", *tiny_cli_args, "--cache-dir", tmp_path / "c"]
    plain = run_cli(*base, "--json")
    assert plain.returncode == 0, plain.stderr.decode()
    done = run_cli(*base, "--views", "crops10")  # the summary, with a progress bar on stderr
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "views      crops10: 10 per image, 54 extracted, 6 reused" in out
    assert "54/54" in done.stderr.decode() and "view" in done.stderr.decode()
    again = run_cli(*base, "--views", "crops10", "--json")
    summary = json.loads(again.stdout)
    assert (summary["views_extracted"], summary["views_reused"]) == (0, 60)
    assert summary["view_stores"][0] == json.loads(plain.stdout)["store"]
    bad = run_cli(*base, "--views", "crops5")
    assert bad.returncode == 2 and b"flip" in bad.stderr and b"Traceback" not in bad.stderr
    help_text = run_cli("extract", "--help").stdout.decode()
    assert "--views [flip|crops10|random16]" in help_text


_PROBE = """
import json, sys
from featurestore.api import load_features
from featurestore.extraction import extract
kw = json.loads(sys.argv[3])
r = extract(sys.argv[1], cache_dir=sys.argv[2], views="random16", **kw)
f = load_features(sys.argv[1], cache_dir=sys.argv[2], views="random16", **kw)
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"extracted": r.n_views_extracted, "rows": list(f.X.shape),
                             "heavy": heavy}))
"""


def test_cached_views_never_import_torch(
    tmp_path: Path,
    make_images: Callable[..., list[Path]],
    tiny_backbone: dict[str, object],
    cli_env: Callable[..., dict[str, str]],
) -> None:
    make_images(tmp_path / "imgs", 3)
    args = [str(tmp_path / "imgs"), str(tmp_path / "c"), json.dumps(tiny_backbone)]
    reports = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, *args],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
        assert done.returncode == 0 and lines, done.stdout + done.stderr
        reports.append(json.loads(lines[-1][len("PROBE ") :]))
    assert reports[0]["extracted"] == 48 and "torch" in reports[0]["heavy"]
    assert reports[1] == {"extracted": 0, "rows": [48, 1024], "heavy": []}
