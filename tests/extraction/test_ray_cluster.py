"""``extract --engine ray`` on a local multi-node Ray cluster, with an actor SIGKILLed and a node
removed mid-run: same rows (bit for bit), same skipped files and exit code as the local path;
and a driver SIGKILLed mid-run, whose rerun resumes from the parts it left.

The cluster is ``ray.cluster_utils.Cluster`` on this machine: a head node with no CPU (the
driver's node) and three single-CPU worker nodes, so the forward actors and the decoders run in
processes of other nodes' raylets, as on a real cluster (the cache folder is the shared
filesystem). Each run goes through the command line in a subprocess, as a user would start it;
the tests watch the store's journal and act as soon as the run's first part lands: SIGKILL the
actor that wrote it (its pid is in the part's provenance) and remove a worker node (Ray
restarts the actor and retries its batches; the store is the record of what is done), or
SIGKILL the driver. The first test leaves the cluster one node short for the second.

Skipped, with the reason, when the ``ray`` extra is not installed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import REPO

pytest.importorskip(
    "ray.data", reason='the ray engine is an optional extra: pip install "featurestore[ray]"'
)

from featurestore.extraction import extract
from featurestore.store import FeatureStore, verify

N_IMAGES = 200
BATCH = 2  # small parts (8 batches each): the run is still going when the first one lands
PREFILLED = 60  # images whose rows are in the cache before the run


def _corrupt(root: Path) -> list[Path]:
    """Files that are skipped: at the scan (empty), at decoding (garbage, truncated), twice
    (the same bad bytes under two names)."""
    bad = {
        root / "cat" / "empty.png": b"",
        root / "cat" / "garbage.png": b"this is not a png" * 10,
        root / "dog" / "garbage_copy.png": b"this is not a png" * 10,
        root / "dog" / "text.jpg": b"GIF89a but not really",
    }
    good = sorted((root / "cat").glob("*.png"))[0].read_bytes()
    bad[root / "dog" / "truncated.png"] = good[: len(good) // 3]
    for path, data in bad.items():
        path.write_bytes(data)
    return list(bad)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, make_images: Callable[..., Any]) -> Path:
    root = tmp_path_factory.mktemp("ray-images") / "imgs"
    make_images(root, n=N_IMAGES, size=(40, 36))
    shutil.copy(sorted((root / "cat").glob("*.png"))[1], root / "dog" / "same_bytes.png")
    _corrupt(root)
    return root


@pytest.fixture(scope="module")
def prefill(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV manifest of the first PREFILLED images: extracting it pre-fills a cache."""
    manifest = tmp_path_factory.mktemp("ray-prefill") / "some.csv"
    paths = sorted(images.rglob("img_*.png"))[:PREFILLED]
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([str(p), p.parent.name] for p in paths)
    return manifest


@contextlib.contextmanager
def _pythonpath() -> Iterator[None]:
    """Ray's worker processes import this checkout's featurestore, as the driver does."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved]))
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    # the head node installs SIGTERM/SIGINT handlers in this process; later tests see the
    # handlers they would see without this module
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with _pythonpath():
        c = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "_system_config": {
                    "health_check_period_ms": 500,
                    "health_check_failure_threshold": 4,
                },
            },
        )
        try:
            c.worker_nodes_list = [c.add_node(num_cpus=1) for _ in range(3)]
            c.wait_for_nodes()
            yield c
        finally:
            c.shutdown()
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _extract(
    run_cli: Callable[..., subprocess.CompletedProcess[bytes]],
    source: Path,
    cache: Path,
    tiny_cli_args: list[str],
    *extra: str,
) -> tuple[int, dict[str, Any]]:
    r = run_cli(
        "extract", source, *tiny_cli_args, "--batch-size", str(BATCH), "--cache-dir", cache,
        "--json", *extra, timeout=300,
    )  # fmt: skip
    assert r.returncode in (0, 3), r.stderr.decode()[-3000:]
    return r.returncode, json.loads(r.stdout)


def _part_writer_pid(part: Path) -> int | None:
    """The pid recorded in a journal part's provenance (None if it vanished meanwhile)."""
    try:
        with h5py.File(part, "r") as f:
            return int(json.loads(f.attrs["provenance"])["pid"])
    except (OSError, KeyError):
        return None


def _rows(part: Path) -> int:
    """Rows in a journal part (0 if it was merged and deleted meanwhile)."""
    try:
        with h5py.File(part, "r") as f:
            return int(f["features"].shape[0])
    except OSError:
        return 0


def _leftovers(cache: Path) -> list[Path]:
    """Temporary files and journal parts: none may be left after a finished run."""
    return sorted(
        p for p in cache.rglob("*") if p.name.startswith(".") or p.name.startswith("part-")
    )


@pytest.fixture(scope="module")
def reference(
    images: Path,
    prefill: Path,
    tmp_path_factory: pytest.TempPathFactory,
    run_cli: Callable[..., subprocess.CompletedProcess[bytes]],
    tiny_cli_args: list[str],
    tiny_backbone: dict[str, Any],
) -> dict[str, Any]:
    """The local path's run over the images, from a cache pre-filled with PREFILLED of them:
    its exit code and --json summary, and the pre-filled cache (each test copies it)."""
    root = tmp_path_factory.mktemp("ray-reference")
    prefilled, local_cache = root / "prefilled", root / "local"
    pre = extract(prefill, cache_dir=prefilled, batch_size=BATCH, workers=0, **tiny_backbone)
    assert (pre.n_extracted, pre.skipped) == (PREFILLED, [])
    shutil.copytree(prefilled, local_cache)
    code, local = _extract(run_cli, images, local_cache, tiny_cli_args)
    assert code == 3 and local["reused"] == PREFILLED and local["skipped"] == 5
    return {"prefilled": prefilled, "code": code, "summary": local}


def _start_ray_cli(
    images: Path, cache: Path, cluster: Any, tiny_cli_args: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    args = [
        "extract", images, *tiny_cli_args, "--batch-size", str(BATCH), "--cache-dir", cache,
        "--json", "--engine", "ray", "--address", cluster.address,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "featurestore.cli", *(os.fsdecode(a) for a in args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _first_parts(proc: subprocess.Popen[bytes], parts_dir: Path) -> list[Path]:
    """Wait until the run's first journal part lands; its parts then (fail if the run ends
    or four minutes pass first)."""
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        landed = sorted(parts_dir.glob("part-*.h5")) if parts_dir.is_dir() else []
        if landed:
            return landed
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no part landed while the run was going: {proc.communicate()[1][-3000:]}")


def _assert_same_as_local(result: dict[str, Any], local: dict[str, Any], cache: Path) -> None:
    """Same rows (bit for bit) as the local path; one compaction left nothing behind."""
    keys_l, rows_l = FeatureStore(local["store"]).read_all()
    keys_r, rows_r = FeatureStore(result["store"]).read_all()
    assert keys_r == keys_l and np.array_equal(rows_r, rows_l)
    assert result["skipped_files"] == local["skipped_files"]
    assert result["engine"] == "ray" and result["device"] == "cpu"
    assert verify(result["store"]).ok
    assert _leftovers(cache) == []


def test_cluster_run_with_a_killed_actor_and_a_lost_node_matches_the_local_path(
    images: Path,
    reference: dict[str, Any],
    cluster: Any,
    tmp_path: Path,
    run_cli: Callable[..., subprocess.CompletedProcess[bytes]],
    cli_env: Callable[..., dict[str, str]],
    tiny_cli_args: list[str],
) -> None:
    local = reference["summary"]
    ray_cache = tmp_path / "ray"
    shutil.copytree(reference["prefilled"], ray_cache)
    store = ray_cache / Path(local["store"]).name
    proc = _start_ray_cli(images, ray_cache, cluster, tiny_cli_args, cli_env())
    try:
        landed = _first_parts(proc, store.with_name(store.stem + ".parts"))
        killed = _part_writer_pid(landed[0])
        rows_at_kill = sum(_rows(p) for p in landed)
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        cluster.remove_node(cluster.worker_nodes_list.pop(), allow_graceful=False)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # the kill and the node loss happened mid-run, with work left to do
    assert rows_at_kill < local["extracted"]
    assert proc.returncode == reference["code"], err.decode()[-3000:]
    result = json.loads(out)
    # same counts, skipped files (same order) and rows as the local path; nothing left behind
    for field in ("images", "unique_images", "extracted", "reused", "skipped"):
        assert result[field] == local[field], field
    _assert_same_as_local(result, local, ray_cache)

    # the parts' provenance: written by the ray engine on CPU, by the killed actor and others
    runs = FeatureStore(store).info().provenance["runs"]
    ray_runs = [r for r in runs if r.get("engine") == "ray"]
    assert {r["device_type"] for r in ray_runs} == {"cpu"}
    assert killed in {r["pid"] for r in ray_runs} and len(ray_runs) >= 2

    # a rerun on the cluster extracts nothing (the undecodable files are tried again)
    code, again = _extract(
        run_cli, images, ray_cache, tiny_cli_args, "--engine", "ray", "--address",
        cluster.address,
    )  # fmt: skip
    assert (code, again["extracted"], again["skipped_files"]) == (3, 0, local["skipped_files"])


def test_a_rerun_after_the_driver_was_killed_resumes_from_the_parts_it_left(
    images: Path,
    reference: dict[str, Any],
    cluster: Any,
    tmp_path: Path,
    run_cli: Callable[..., subprocess.CompletedProcess[bytes]],
    cli_env: Callable[..., dict[str, str]],
    tiny_cli_args: list[str],
) -> None:
    local = reference["summary"]
    ray_cache = tmp_path / "ray"
    shutil.copytree(reference["prefilled"], ray_cache)
    store = ray_cache / Path(local["store"]).name
    proc = _start_ray_cli(images, ray_cache, cluster, tiny_cli_args, cli_env())
    try:
        landed = _first_parts(proc, store.with_name(store.stem + ".parts"))
        proc.kill()  # SIGKILL the driver: no compaction, no clean-up
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    kept = sum(_rows(p) for p in landed)
    assert 0 < kept < local["extracted"]

    code, resumed = _extract(
        run_cli, images, ray_cache, tiny_cli_args, "--engine", "ray", "--address",
        cluster.address,
    )  # fmt: skip
    assert code == reference["code"]
    # it reused the parts the killed run left (at least those seen before the kill) and
    # extracted only the rest
    from_parts = resumed["reused"] - PREFILLED
    assert from_parts >= kept
    assert resumed["extracted"] == local["extracted"] - from_parts
    _assert_same_as_local(resumed, local, ray_cache)
