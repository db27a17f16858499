"""Damaged and hostile files: flipped or truncated bytes, read-only and full cache folders,
foreign store files, weight files that are pickles.

The promise under test: `verify` reports damage, extraction refuses to append to a damaged store
and says how to rebuild, and nothing ever returns a wrong row.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from featurestore.cli import main as cli
from featurestore.extraction import extract
from featurestore.store import FeatureStore, StoreCorruptError, StoreError, verify

BATCH = 4


# ---------------------------------------------------------------------------- helpers
def _rows(store: Path) -> dict[str, np.ndarray]:
    keys, rows = FeatureStore(store).read_all()
    return dict(zip(keys, rows, strict=True))


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def _chunk_offset(path: Path, name: str) -> tuple[int, int]:
    """(byte offset, size) of the first chunk of dataset ``name`` in the file."""
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
        return info.byte_offset, info.size


def _toy_store(root: Path, n: int = 120, dim: int = 1024, parts: int = 1) -> tuple[Path, dict]:
    """A store written through the public API: a consolidated file plus ``parts`` journal
    parts, rows a deterministic function of the key. dim 1024 gives 64-row chunks."""
    store = FeatureStore.for_spec(root, {"backbone": "toy", "dim": dim})
    rng = np.random.default_rng(0)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    cut = n - 10 * parts
    store.append(keys[:cut], rows[:cut])
    store.compact()
    for p in range(parts):
        lo = cut + 10 * p
        store.append(keys[lo : lo + 10], rows[lo : lo + 10])
    return store.path, dict(zip(keys, rows, strict=True))


def _outcome(store: Path, ref: dict[str, np.ndarray]) -> tuple[bool, str]:
    """(verify ok, read outcome 'ok' | 'error' | 'WRONG') for a possibly damaged store.

    Any exception other than StoreError/KeyError fails the test: a damaged file must give a
    clear error, not a traceback from h5py."""
    report = verify(store)
    try:
        got = _rows(store)
    except (StoreError, KeyError):
        return report.ok, "error"
    same = got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
    return report.ok, "ok" if same else "WRONG"


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory, make_images: Any) -> Path:
    src = tmp_path_factory.mktemp("src")
    make_images(src, 8, ("a", "b"), seed=11)
    return src


@pytest.fixture
def built(small_source: Path, tmp_path: Path, tiny_backbone: dict) -> dict[str, Any]:
    """A finished extraction of 8 images into a fresh cache."""
    cache = tmp_path / "cache"
    r = extract(small_source, cache_dir=cache, batch_size=BATCH, workers=0, **tiny_backbone)
    return {"cache": cache, "store": r.store, "ref": _rows(r.store), "src": small_source}


def _extract_again(built: dict[str, Any], tiny_backbone: dict, make_images: Any, tmp: Path) -> Any:
    """An extraction with 4 new images over ``built``'s cache."""
    more = tmp / "more"
    if not more.exists():
        shutil.copytree(built["src"], more)
        make_images(more, 4, ("a", "b"), seed=12)
    return extract(more, cache_dir=built["cache"], batch_size=BATCH, workers=0, **tiny_backbone)


# ---------------------------------------------------------------------------- flipped bytes
def test_every_flipped_byte_is_reported_never_a_wrong_row(tmp_path: Path) -> None:
    """Flip one byte at a time all over the metadata (every 7th byte of the first 3 KiB of the
    consolidated file, every 11th of a journal part's) and at random places in the data: verify
    never crashes and reports the damage, reading gives a StoreError, never a wrong row."""
    store, ref = _toy_store(tmp_path / "c", n=100, dim=1024, parts=1)
    (part,) = store.with_name(store.stem + ".parts").glob("part-*.h5")
    rng = random.Random(5)
    for target, step in ((store, 7), (part, 11)):
        pristine = target.read_bytes()
        padding = _edge_chunk_padding(target)
        used = [i for i in range(3072, len(pristine)) if not padding[0] <= i < padding[1]]
        positions = list(range(0, 3072, step)) + rng.sample(used, 40)
        counts = {"reported": 0, "harmless": 0}
        for pos in positions + rng.sample(range(*padding), 5) if padding[1] else positions:
            target.write_bytes(pristine)
            _flip(target, pos)
            ok, read = _outcome(store, ref)
            assert read != "WRONG", f"{target.name} byte {pos} flipped: wrong rows returned"
            assert not (ok and read == "error"), f"byte {pos}: read fails, verify says OK"
            if padding[0] <= pos < padding[1]:  # never read: harmless, and nothing is wrong
                assert ok and read == "ok", f"{target.name} padding byte {pos}: {ok}, {read}"
                continue
            counts["reported" if not ok else "harmless"] += 1
        target.write_bytes(pristine)
        # Every byte of these files other than the last feature chunk's padding is under a
        # checksum (CRC32 of each feature chunk's rows, fletcher32 on the other datasets'
        # chunks; superblock, object headers with the attributes and the chunk index are
        # checksummed in the v110 format): every flip is reported, none is silently ignored.
        assert counts == {"reported": len(positions), "harmless": 0}, (target.name, counts)


def _edge_chunk_padding(path: Path) -> tuple[int, int]:
    """Byte range of the unused rows HDF5 stores after the last row of a partial last feature
    chunk (they are never read); (0, 0) when the last chunk is full."""
    with h5py.File(path, "r") as f:
        ds = f["features"]
        n, chunk = ds.shape[0], ds.chunks[0]
        last = ds.id.get_chunk_info(ds.id.get_num_chunks() - 1)
        used = (n - (n - 1) // chunk * chunk) * ds.shape[1] * 4
    if used == last.size:
        return 0, 0
    return last.byte_offset + used, last.byte_offset + last.size


@pytest.mark.parametrize("dataset", ["features", "keys"])
def test_flipped_data_byte_verify_reports_and_extraction_refuses(
    dataset: str, built: dict[str, Any], tiny_backbone: dict, make_images: Any, tmp_path: Path
) -> None:
    store = built["store"]
    offset, size = _chunk_offset(store, dataset)
    _flip(store, offset + size // 2)
    report = verify(store)
    assert not report.ok
    assert any(f"{dataset} rows" in p or "unreadable" in p for p in report.problems)
    with pytest.raises(StoreCorruptError):
        FeatureStore(store).read(sorted(built["ref"]))
    parts_dir = store.with_name(store.stem + ".parts")
    before = sorted(parts_dir.iterdir()) if parts_dir.exists() else []
    with pytest.raises(StoreCorruptError) as err:
        _extract_again(built, tiny_backbone, make_images, tmp_path)
    msg = str(err.value)
    assert str(store) in msg and "featurestore verify" in msg and f"delete {store}" in msg
    assert (sorted(parts_dir.iterdir()) if parts_dir.exists() else []) == before, "appended"
    # Following the advice rebuilds the store with the same rows.
    store.unlink()
    r = _extract_again(built, tiny_backbone, make_images, tmp_path)
    assert r.n_extracted == 12
    rows = _rows(store)
    assert all(np.array_equal(rows[k], v) for k, v in built["ref"].items())


@pytest.mark.parametrize("keep", [0, 100, 0.5, -1], ids=["empty", "100B", "half", "last-byte"])
def test_truncated_store_is_reported_and_never_appended_to(
    keep: float, built: dict[str, Any], tiny_backbone: dict, make_images: Any, tmp_path: Path
) -> None:
    store = built["store"]
    data = store.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    store.write_bytes(data[:n])
    assert not verify(store).ok
    with pytest.raises(StoreError):
        _rows(store)
    with pytest.raises(StoreCorruptError, match="featurestore verify"):
        FeatureStore(store).check()
    with pytest.raises(StoreCorruptError, match="delete"):
        _extract_again(built, tiny_backbone, make_images, tmp_path)
    assert store.read_bytes() == data[:n], "a damaged store was rewritten"


def test_damaged_journal_part_names_the_part(tmp_path: Path) -> None:
    store, _ref = _toy_store(tmp_path / "c", n=60, dim=64, parts=2)
    part = sorted(store.with_name(store.stem + ".parts").glob("part-*.h5"))[0]
    offset, size = _chunk_offset(part, "features")
    _flip(part, offset + size // 2)
    report = verify(store)
    assert not report.ok and any(str(part) in p for p in report.problems)
    fs = FeatureStore(store, spec={"backbone": "toy", "dim": 64})
    with pytest.raises(StoreCorruptError) as err:
        fs.check()
    assert err.value.file == part and f"delete the damaged journal part {part}" in str(err.value)
    with pytest.raises(StoreCorruptError):
        fs.compact()
    assert part.exists() and verify(store).problems == report.problems  # nothing changed


def test_verify_cli_reports_damage_and_how_to_rebuild(built: dict[str, Any]) -> None:
    store = built["store"]
    ok = CliRunner().invoke(cli, ["verify", str(store), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    offset, _size = _chunk_offset(store, "features")
    _flip(store, offset + 7)
    bad = CliRunner().invoke(cli, ["verify", str(store)])
    assert bad.exit_code == 1
    assert "DAMAGED" in bad.output and "To rebuild" in bad.output


def test_extract_cli_refuses_a_damaged_store_with_rebuild_advice(
    built: dict[str, Any], tiny_cli_args: list[str]
) -> None:
    store = built["store"]
    store.write_bytes(store.read_bytes()[:-1])
    r = CliRunner().invoke(
        cli,
        [
            "extract",
            str(built["src"]),
            *tiny_cli_args,
            "--workers",
            "0",
            "--json",
            "--cache-dir",
            str(built["cache"]),
        ],
    )
    assert r.exit_code == 1
    assert "featurestore verify" in r.output and "delete" in r.output


def test_store_of_another_extractor_at_the_path_is_refused(built: dict[str, Any]) -> None:
    """A file copied (or planted) under the name of another fingerprint is not read as ours."""
    store = built["store"]
    with h5py.File(store, "r") as f:
        spec = json.loads(f.attrs["spec"])
    other_spec = {**spec, "precision": "bf16"}
    other = FeatureStore.for_spec(store.parent, other_spec)
    shutil.copy(store, other.path)
    with pytest.raises(StoreError, match="belongs to another extractor"):
        other.keys()
    with pytest.raises(StoreError, match="another extractor"):
        other.check()
    # An edited spec that no longer hashes to the stored fingerprint is damage, not a match.
    with h5py.File(other.path, "r+") as f:
        f.attrs["spec"] = json.dumps(other_spec)
    assert not verify(other.path).ok


def test_garbage_file_in_place_of_a_store(tmp_path: Path) -> None:
    store = FeatureStore.for_spec(tmp_path, {"backbone": "toy"})
    store.path.write_text("not hdf5\n")
    assert not verify(store.path).ok
    with pytest.raises(StoreCorruptError, match="delete"):
        store.check()
    (tmp_path / "README.txt").write_text("hello\n")
    r = CliRunner().invoke(cli, ["verify", str(tmp_path / "README.txt")])
    assert r.exit_code == 2 and "not a featurestore store" in r.output  # not a store: usage
    assert isinstance(r.exception, SystemExit), r.exception  # a clear message, no traceback


# ---------------------------------------------------------------------------- read-only / full
def _can_unshare_mounts(tmp: Path) -> bool:
    """Root with unshare: mounts in a private namespace (gone when the command ends)."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    mnt = tmp / "probe"
    mnt.mkdir(exist_ok=True)
    cmd = f"mount -t tmpfs -o size=64k tmpfs {mnt}"
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True).returncode == 0


def _with_read_only(cache: Path, script: str, env: dict[str, str], tmp: Path) -> None:
    """Run shell ``script`` while ``cache`` is read-only to it. As a normal user: the write bits
    are removed (EACCES). As root, who ignores them: a read-only bind mount in a private mount
    namespace (EROFS)."""
    if os.geteuid() != 0:
        paths = [cache, *cache.rglob("*")]
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            subprocess.run(["sh", "-c", script], env=env, check=True, timeout=300)
        finally:
            for path in paths:
                path.chmod(0o755 if path.is_dir() else 0o644)
        return
    if not _can_unshare_mounts(tmp):
        pytest.skip("as root a read-only cache needs unshare and mount (root ignores chmod)")
    ro = f"mount --bind {cache} {cache} || exit 97\nmount -o remount,bind,ro {cache} || exit 97\n"
    subprocess.run(["unshare", "-m", "sh", "-c", ro + script], env=env, check=True, timeout=300)


def _sh_run(out: Path, *args: str | Path) -> str:
    """A shell line running the CLI with ARGS, keeping exit code, stdout and stderr in files."""
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "featurestore.cli", *args])
    return f"{cmd} >{out}.out 2>{out}.err; echo $? >{out}.rc\n"


def _sh_result(out: Path) -> tuple[int, str, str]:
    rc = int(Path(f"{out}.rc").read_text())
    return rc, Path(f"{out}.out").read_text(), Path(f"{out}.err").read_text()


def test_read_only_cache_serves_cached_rows_and_refuses_new_ones_cleanly(
    tmp_path: Path,
    built: dict[str, Any],
    make_images: Any,
    tiny_cli_args: list[str],
    cli_env: Any,
    folder_bytes: Any,
) -> None:
    cache, store = built["cache"], built["store"]
    more = tmp_path / "more"
    shutil.copytree(built["src"], more)
    make_images(more, 2, ("a",), seed=22)
    before = folder_bytes(cache)
    lock = store.with_name(store.name + ".lock")
    assert lock in before
    o = tmp_path / "out"
    opts = [*tiny_cli_args, "--workers", "0", "--cache-dir", cache]
    script = (
        _sh_run(o / "cached", "extract", built["src"], *opts, "--json")
        + _sh_run(o / "new", "extract", more, *opts)
        + _sh_run(o / "verify", "verify", store)
    )
    o.mkdir()
    _with_read_only(cache, script, cli_env(), tmp_path)
    rc, out, err = _sh_result(o / "cached")
    assert rc == 0, err  # everything cached: a read-only (shared) cache just works
    assert json.loads(out)["reused"] == 8
    rc, out, err = _sh_result(o / "new")
    assert rc == 1 and "cannot write to the cache directory" in err and "Traceback" not in err
    assert _sh_result(o / "verify")[0] == 0
    # Made read-only before any lock file existed: readers go without the lock.
    for path in (lock, store.with_name(store.name + ".gate")):
        path.unlink()
        del before[path]
    read = (
        f"{shlex.quote(sys.executable)} -c 'import sys; from featurestore.store import "
        f"FeatureStore as S; s = S(sys.argv[1]); s.read_all(); s.compact()' {store} "
        f">{o}/lockless.out 2>{o}/lockless.err; echo $? >{o}/lockless.rc\n"
    )
    _with_read_only(cache, read, cli_env(), tmp_path)
    assert _sh_result(o / "lockless")[0] == 0, _sh_result(o / "lockless")[2]
    assert folder_bytes(cache) == before


def test_read_only_cache_with_an_unmerged_journal_serves_its_rows(
    tmp_path: Path,
    built: dict[str, Any],
    make_images: Any,
    tiny_cli_args: list[str],
    cli_env: Any,
    tiny_backbone: dict,
    monkeypatch: pytest.MonkeyPatch,
    folder_bytes: Any,
) -> None:
    """A shared cache whose last writer left journal parts (interrupted before compaction) and
    that is read-only to this user: every row is there, so `extract` succeeds and says the
    journal was left unmerged, instead of failing on the compaction it cannot do."""
    cache, store = built["cache"], built["store"]
    more = tmp_path / "more"
    shutil.copytree(built["src"], more)
    make_images(more, 2, ("a",), seed=23)
    with monkeypatch.context() as m:  # a writer killed between its last part and compaction
        m.setattr(FeatureStore, "compact", lambda self, force=False: 0)
        r = extract(more, cache_dir=cache, batch_size=BATCH, workers=0, **tiny_backbone)
    assert r.n_extracted == 2
    parts = sorted(store.with_name(store.stem + ".parts").glob("part-*.h5"))
    assert parts
    before = folder_bytes(cache)
    o = tmp_path / "out"
    o.mkdir()
    opts = [*tiny_cli_args, "--workers", "0", "--cache-dir", cache, "--json"]
    _with_read_only(cache, _sh_run(o / "cached", "extract", more, *opts), cli_env(), tmp_path)
    rc, out, err = _sh_result(o / "cached")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["reused"] == 10 and summary["extracted"] == 0
    assert any("not merged" in w for w in summary["warnings"]), summary["warnings"]
    assert folder_bytes(cache) == before
    # Once the cache is writable again, the next run merges the journal.
    extract(more, cache_dir=cache, batch_size=BATCH, workers=0, **tiny_backbone)
    assert not any(p.exists() for p in parts)


def test_full_disk_gives_a_clear_error_and_corrupts_nothing(
    tmp_path: Path,
    built: dict[str, Any],
    make_images: Any,
    tiny_cli_args: list[str],
    cli_env: Any,
    tiny_backbone: dict,
) -> None:
    """A real ENOSPC: the cache lives on a tiny tmpfs (in a private mount namespace) holding the
    finished 8-image store; extracting 16 more images fills it during a journal write (first
    case) or during compaction (second case)."""
    if not _can_unshare_mounts(tmp_path):
        pytest.skip("needs root and unshare to mount a small tmpfs in a private namespace")
    src = tmp_path / "src"
    shutil.copytree(built["src"], src)
    make_images(src, 16, ("a", "b"), seed=31)
    store_bytes = sum(p.stat().st_size for p in built["cache"].rglob("*") if p.is_file())
    part = 30 * 1024  # one journal part of 4 rows x 1024 floats, with HDF5 overhead
    cases = {"journal": store_bytes + part // 2, "compaction": store_bytes + 5 * part}
    script = []
    for name, size in cases.items():
        mnt, out = tmp_path / f"mnt-{name}", tmp_path / f"after-{name}"
        mnt.mkdir()
        out.mkdir()
        script += [
            f"mount -t tmpfs -o size={(size // 4096 + 1) * 4096} tmpfs {mnt} || exit 97",
            f"cp -a {built['cache']}/. {mnt}/ || exit 97",
            f"{sys.executable} -m featurestore.cli extract {src} {' '.join(tiny_cli_args)} "
            f"--batch-size {BATCH} --workers 0 --cache-dir {mnt} >{out}.out 2>{out}.err; "
            f"echo $? >{out}.rc",
            f"cp -a {mnt}/. {out}/ || exit 97",
        ]
    subprocess.run(
        ["unshare", "-m", "sh", "-c", "\n".join(script)], env=cli_env(), check=True, timeout=300
    )
    original = built["store"].read_bytes()
    for name in cases:
        out = tmp_path / f"after-{name}"
        rc, err = Path(f"{out}.rc").read_text().strip(), Path(f"{out}.err").read_text()
        assert rc == "1", f"{name}: exit {rc}\n{err}"
        assert "the disk is full" in err and "Traceback" not in err, err
        store = out / built["store"].name
        assert verify(store).ok
        assert store.read_bytes() == original, f"{name}: the consolidated file was changed"
        rows = _rows(store)
        assert all(np.array_equal(rows[k], v) for k, v in built["ref"].items())
        leftovers = list(out.rglob("*.tmp*"))
        assert not leftovers, leftovers
        parts = list(out.rglob("part-*.h5"))
        if name == "journal":  # the first part did not fit
            assert not parts
        else:  # every part fitted, the compacted copy did not: the journal is kept
            assert len(parts) == 4
        # With space again, the same command finishes the job and keeps every earlier row.
        r = extract(src, cache_dir=out, batch_size=BATCH, workers=0, **tiny_backbone)
        assert r.n_unique == 24 and not r.skipped and verify(store).ok
        assert len(_rows(store)) == 24


# ---------------------------------------------------------------------------- hostile weights
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_weight_files_are_loaded_with_weights_only(tmp_path: Path, make_images: Any) -> None:
    """A pickle that runs code when unpickled is refused, and its code never runs."""
    import torch

    from featurestore.backbones import BackboneError, build_model, get_backbone

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the control: a plain unpickle runs the payload
    assert marker.exists()
    marker.unlink()
    with pytest.raises(BackboneError, match="weights_only=True"):
        build_model(get_backbone("mobilenet_v3_small"), evil)
    assert not marker.exists()
    make_images(tmp_path / "src", 2)
    r = CliRunner().invoke(
        cli,
        [
            "extract",
            str(tmp_path / "src"),
            "--backbone",
            "mobilenet_v3_small",
            "--weights",
            str(evil),
            "--workers",
            "0",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 1 and "weights_only=True" in r.output and not marker.exists()
