"""The ray engine's pieces without a cluster: the plan, the two stages called directly (rows equal
the local path's bit for bit), the numpy work list, the errors; and what happens without Ray.

The stages are plain functions and classes that Ray Data runs on the nodes; here they run in
this process, so these tests need neither Ray nor a cluster (the cluster test is
``test_ray_cluster.py``).
"""

from __future__ import annotations

import json
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featurestore import worklist
from featurestore.engines import check_engine
from featurestore.engines import ray as ray_engine
from featurestore.engines.ray import (
    ForwardActor,
    _as_user_error,
    _versions,
    check_reachable,
    decode_batch,
    plan_cluster,
)
from featurestore.errors import ExtractError, OptionError, StoreError
from featurestore.extraction import extract
from featurestore.extractor import resolve
from featurestore.sources import Record, open_source
from featurestore.store import FeatureStore

BATCH = 4


# ---------------------------------------------------------------------------- the plan
def test_gpus_get_one_actor_each_and_decoders_take_the_other_cpus() -> None:
    plan = plan_cluster({"CPU": 64, "GPU": 8}, "auto", None)
    assert (plan.device, plan.actors, plan.actor_gpus, plan.actor_cpus) == ("cuda", 8, 1.0, 1.0)
    assert (plan.decode_cpus, plan.decoders) == (1.0, 56)
    assert plan_cluster({"CPU": 64, "GPU": 8}, "cuda", 3).actors == 3
    assert plan_cluster({"CPU": 64, "GPU": 8}, "auto", 20).actors == 8  # one GPU each at most


def test_cpus_get_one_single_threaded_actor_each_and_decoders_hold_no_cpu() -> None:
    plan = plan_cluster({"CPU": 3}, "auto", None)
    assert (plan.device, plan.actors, plan.actor_cpus, plan.threads) == ("cpu", 3, 1.0, 1)
    assert (plan.decode_cpus, plan.decoders) == (0.0, 3)
    assert plan_cluster({"CPU": 16, "GPU": 2}, "cpu", None).device == "cpu"
    shared = plan_cluster({"CPU": 2}, "cpu", 4)  # more actors than CPUs: they share them
    assert (shared.actors, shared.actor_cpus, shared.threads) == (4, 0.5, 1)


@pytest.mark.parametrize(
    ("resources", "device", "actors", "message"),
    [
        ({"CPU": 4}, "cuda", None, "no GPU"),
        ({"CPU": 4}, "mps", None, "cpu or cuda"),
        ({"GPU": 1}, "auto", None, "no CPU"),
        ({"CPU": 4}, "cpu", 0, "at least one actor"),
    ],
)
def test_plans_that_cannot_work_are_refused(
    resources: dict[str, float], device: str, actors: int | None, message: str
) -> None:
    with pytest.raises(ExtractError, match=message):
        plan_cluster(resources, device, actors)


# ---------------------------------------------------------------------------- the stages
@pytest.fixture
def folder(tmp_path: Path, make_images: Callable[..., list[Path]]) -> Path:
    root = tmp_path / "imgs"
    make_images(root, n=9, size=(40, 30))
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    return root


def _reference_batch(records: list[Record]) -> dict[str, np.ndarray]:
    """What an input block of the ray engine holds for ``records``."""
    return {
        "i": np.arange(len(records)),
        "key": np.array([r.key for r in records], dtype=object),
        "ref": np.array([pickle.dumps(r.ref) for r in records], dtype=object),
    }


def _actor(store: FeatureStore, options: Any, **over: Any) -> ForwardActor:
    kwargs = {
        "options": options.to_json(),
        "fingerprint": store.fingerprint,
        "store": str(store.path),
        "batch_size": BATCH,
        "device": "cpu",
        "threads": 1,
        "source_name": "test",
        "versions": _versions(),
    }
    return ForwardActor(**{**kwargs, **over})


def test_the_stages_write_the_local_paths_rows_bit_for_bit(
    folder: Path, tmp_path: Path, tiny_backbone: dict[str, Any]
) -> None:
    local = extract(folder, cache_dir=tmp_path / "local", batch_size=BATCH, **tiny_backbone)
    extractor = local.extractor
    assert extractor is not None
    src = open_source(folder)
    decoded = decode_batch(
        _reference_batch(src.records), preprocess=extractor.preprocess, loader=src.loader
    )
    bad = [i for i, e in enumerate(decoded["error"]) if e]
    assert [src.records[i].path for i in bad] == [str(folder / "cat" / "broken.png")]
    assert decoded["pixels"].shape == (10, 32, 32, 3) and not decoded["pixels"][bad].any()

    store = FeatureStore.for_spec(tmp_path / "ray", extractor.spec)
    store.parts_dir.mkdir(parents=True)
    out = _actor(store, extractor.options)(decoded)  # 10 records: padded batches of 4, 4, 2
    assert list(out["i"]) == list(range(10)) and list(out["error"]) == list(decoded["error"])
    parts = store.journal.part_paths()
    assert len(parts) == 1  # one part per call, with the 9 decoded images' rows
    with h5py.File(parts[0], "r") as f:
        assert f["features"].shape[0] == 9
    keys_l, rows_l = FeatureStore(local.store).read_all()
    keys_r, rows_r = store.read_all()
    assert keys_r == keys_l and np.array_equal(rows_r, rows_l)
    with h5py.File(parts[0], "r") as f:
        prov = json.loads(f.attrs["provenance"])
    assert (prov["engine"], prov["device_type"], prov["batch_size"]) == ("ray", "cpu", BATCH)
    assert prov["host"] and prov["pid"]


def test_an_actor_refuses_another_fingerprint_other_versions_and_a_missing_cache(
    tmp_path: Path, tiny_backbone: dict[str, Any]
) -> None:
    extractor = resolve(**tiny_backbone)
    store = FeatureStore.for_spec(tmp_path / "cache", extractor.spec)
    with pytest.raises(ExtractError, match="is not there; mount the shared cache"):
        _actor(store, extractor.options)
    store.parts_dir.mkdir(parents=True)
    with pytest.raises(ExtractError, match="fingerprint"):
        _actor(store, extractor.options, fingerprint="0" * 64)
    with pytest.raises(ExtractError, match="versions"):
        _actor(store, extractor.options, versions={**_versions(), "torch": "1.0"})


def test_connecting_leaves_the_callers_signal_handlers_in_force() -> None:
    """ray.init installs SIGTERM/SIGINT handlers in the driver and keeps them after shutdown;
    the engine puts the caller's back at once, so Ctrl-C and SIGTERM still end a run cleanly."""

    def ours(signum: int, frame: object) -> None:  # pragma: no cover - never called
        pass

    def theirs(signum: int, frame: object) -> None:  # pragma: no cover - never called
        pass

    calls: list[str] = []

    class FakeRay:
        def init(self, **kwargs: Any) -> None:
            calls.append("init")
            signal.signal(signal.SIGTERM, theirs)
            signal.signal(signal.SIGINT, theirs)

        def shutdown(self) -> None:
            calls.append("shutdown")

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, ours)
        with ray_engine._connection(FakeRay(), None):
            assert signal.getsignal(signal.SIGTERM) is ours
            assert signal.getsignal(signal.SIGINT) is saved[signal.SIGINT]
        assert calls == ["init", "shutdown"]
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- errors
def test_a_featurestore_error_raised_on_a_node_comes_back_as_itself() -> None:
    inner = StoreError("cannot write to the cache directory /c: the disk is full")
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = inner
    assert _as_user_error(wrapped) is inner
    text = RuntimeError(
        "ActorDiedError: ...\n  File x\nfeaturestore.errors.ExtractError: node b: no cache\n"
    )
    err = _as_user_error(text)
    assert type(err) is ExtractError and str(err) == "node b: no cache"
    other = _as_user_error(RuntimeError("\nraylet died\nmore"))
    assert type(other) is ExtractError and "raylet died" in str(other)


def test_an_address_that_does_not_answer_fails_at_once_in_one_line() -> None:
    with socket.socket() as sock:  # a port on this machine that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ExtractError, match="cannot reach the Ray cluster"):
            check_reachable(address, timeout=2)
    with pytest.raises(ExtractError, match="expected HOST:PORT"):
        check_reachable("head-node")
    check_reachable("auto")
    check_reachable(None)
    with socket.socket() as server:  # a port that answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=2)


def test_unknown_engines_and_an_address_without_ray_are_refused(
    folder: Path, tmp_path: Path, tiny_backbone: dict[str, Any]
) -> None:
    check_engine("local", None)
    check_engine("ray", "auto")
    with pytest.raises(OptionError, match="engine must be one of"):
        extract(folder, cache_dir=tmp_path, engine="spark", **tiny_backbone)
    with pytest.raises(OptionError, match="--engine ray"):
        extract(folder, cache_dir=tmp_path, address="10.0.0.1:6379", **tiny_backbone)


def test_without_ray_the_engine_says_how_to_install_it(
    folder: Path, tmp_path: Path, tiny_backbone: dict[str, Any], monkeypatch: Any
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ExtractError, match=r'pip install "featurestore\[ray\]"'):
        extract(folder, cache_dir=tmp_path, engine="ray", **tiny_backbone)
    # a run with nothing to extract never needs the engine (a skipped image is tried again)
    (folder / "cat" / "broken.png").unlink()
    extract(folder, cache_dir=tmp_path / "c", workers=0, **tiny_backbone)
    again = extract(folder, cache_dir=tmp_path / "c", engine="ray", **tiny_backbone)
    assert again.n_extracted == 0 and again.engine == "ray"


def test_importing_featurestore_and_the_engine_does_not_import_ray(
    cli_env: Callable[..., dict[str, str]],
) -> None:
    code = (
        "import sys, featurestore, featurestore.extraction, featurestore.cli, "
        "featurestore.engines.ray; "
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


# ---------------------------------------------------------------------------- the work list
def _records(keys: list[str]) -> list[Record]:
    return [Record(k, f"/p/{i}", None, None, ("file", f"/p/{i}")) for i, k in enumerate(keys)]


def test_the_work_list_keeps_the_first_record_of_each_missing_key_in_order() -> None:
    a, b, c, d = (ch * 64 for ch in "abcd")
    records = _records([c, a, c, b, d, a])
    n_unique, todo = worklist.missing(records, np.array([b.encode(), b.encode()], "S64"))
    assert n_unique == 4
    assert [r.path for r in todo] == ["/p/0", "/p/1", "/p/4"]  # c, a, d: first of each
    assert worklist.missing(records, np.empty(0, "S64"))[1] == [records[i] for i in (0, 1, 3, 4)]
    assert worklist.missing([], np.array([a.encode()], "S64")) == (0, [])


def _weak_hashes(keys: np.ndarray) -> np.ndarray:
    """A hash with four values: most different keys collide."""
    return np.frombuffer(keys.tobytes(), np.uint8)[63::64].astype(np.uint64) % 4


@given(
    st.lists(st.integers(0, 30), max_size=60),
    st.lists(st.integers(0, 30), max_size=40),
    st.booleans(),
)
def test_the_work_list_agrees_with_a_set(want: list[int], have: list[int], weak: bool) -> None:
    key = "{:064x}".format
    records = _records([key(k) for k in want])
    with mock.patch.object(worklist, "_hashes", _weak_hashes if weak else worklist._hashes):
        n_unique, todo = worklist.missing(records, np.array([key(k) for k in have], "S64"))
    seen: dict[str, Record] = {}
    for r in records:
        seen.setdefault(r.key, r)
    held = {key(k) for k in have}
    assert n_unique == len(seen)
    assert todo == [r for k, r in seen.items() if k not in held]


@given(
    st.lists(st.integers(0, 30), max_size=60),
    st.lists(st.lists(st.integers(0, 30), max_size=40), min_size=1, max_size=4),
    st.booleans(),
)
def test_the_work_list_of_several_stores_agrees_with_sets(
    want: list[int], haves: list[list[int]], weak: bool
) -> None:
    """With views each view has its store: an image is to do when one of them lacks it, and
    its wants are exactly the stores that lack it."""
    key = "{:064x}".format
    records = _records([key(k) for k in want])
    arrays = [np.array([key(k) for k in have], "S64").reshape(-1) for have in haves]
    with mock.patch.object(worklist, "_hashes", _weak_hashes if weak else worklist._hashes):
        n_unique, todo, wants = worklist.missing_per_store(records, arrays)
    seen: dict[str, Record] = {}
    for r in records:
        seen.setdefault(r.key, r)
    held = [{key(k) for k in have} for have in haves]
    expect = {k: tuple(s for s, h in enumerate(held) if k not in h) for k in seen}
    assert n_unique == len(seen)
    assert todo == [r for k, r in seen.items() if expect[k]]
    assert wants == [expect[r.key] for r in todo]
