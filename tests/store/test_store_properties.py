"""Property tests of the store: random sequences of appends, compactions, reopenings and
interrupted writes, checked after every step against a dict of what the store should hold.

Interrupted writes are what a SIGKILL leaves behind (tests/store/test_crash.py makes them for real):
a half-written journal temp file, a half-written consolidated temp file, and a compaction that
renamed its new file into place but died before deleting the journal parts it merged.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from featurestore.store import FeatureStore, compaction, journal, verify, write_legacy

SPEC = {"backbone": "prop", "dim": 8}
DIM = SPEC["dim"]
UNIVERSE = 24  # few distinct keys, so that duplicates and overlaps are common


def _key(i: int) -> str:
    return hashlib.sha256(f"img{i}".encode()).hexdigest()


def _row(i: int, variant: int) -> np.ndarray:
    """The row written for key ``i``; ``variant`` != 0 stands for a second writer whose numbers
    differ (another device): the store must keep the first row it got, before and after
    compaction."""
    return np.random.default_rng(i * 7 + variant).standard_normal(DIM).astype(np.float32)


_DEAD_PID: list[int] = []


def _dead_pid() -> int:
    """The pid of a process that has exited (made once per session)."""
    if not _DEAD_PID:
        p = subprocess.Popen(["true"])
        p.wait()
        _DEAD_PID.append(p.pid)
    return _DEAD_PID[0]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="fs-prop-"))
        self.store = FeatureStore.for_spec(self.root, SPEC)
        self.model: dict[str, np.ndarray] = {}
        self.stale: set[Path] = set()  # temp files a compaction must delete
        self.foreign: set[Path] = set()  # temp files of (possibly) live writers: must be kept
        self.dead_pid = _dead_pid()

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -------------------------------------------------------------------- rules
    @rule(
        ids=st.lists(st.integers(0, UNIVERSE - 1), min_size=0, max_size=9),
        variant=st.sampled_from([0, 0, 0, 1]),
    )
    def append(self, ids: list[int], variant: int) -> None:
        keys = [_key(i) for i in ids]
        rows = np.stack([_row(i, variant) for i in ids]) if ids else np.empty((0, DIM), "f4")
        self.store.append(keys, rows)
        for k, r in zip(keys, rows, strict=True):
            self.model.setdefault(k, r)

    @rule()
    def compact(self) -> None:
        self.store.compact()
        assert not list(self.store.parts_dir.glob("part-*"))
        self._check_temps()

    @rule()
    def compact_lazily(self) -> None:
        """A big store only compacts once the journal is large: nothing may change meanwhile."""
        old = compaction.EAGER_COMPACT_BYTES
        compaction.EAGER_COMPACT_BYTES = 0
        try:
            self.store.compact()
        finally:
            compaction.EAGER_COMPACT_BYTES = old

    @rule()
    def reopen(self) -> None:
        """A new process: a fresh object on the same files (the invariant reads through yet
        another one that has no spec, as a sweep opening a store file does)."""
        self.store = FeatureStore(self.store.path, spec=SPEC)

    @rule(cut=st.floats(0.0, 1.0))
    def killed_during_append(self, cut: float) -> None:
        """A journal temp file cut short, left by a writer that is gone."""
        data = self._some_hdf5_bytes()
        self.store.parts_dir.mkdir(exist_ok=True)
        tmp = self.store.parts_dir / (
            f".tmp-{journal.HOST}-{self.dead_pid}-{uuid.uuid4().hex[:12]}.h5"
        )
        tmp.write_bytes(data[: int(len(data) * cut)])
        self.stale.add(tmp)

    @rule()
    def another_writer_busy(self) -> None:
        """A temp file of a writer that may still be running (another host, recent): it is
        never read, and never deleted under that writer's feet."""
        self.store.parts_dir.mkdir(exist_ok=True)
        tmp = self.store.parts_dir / f".tmp-otherhost-1-{uuid.uuid4().hex[:12]}.h5"
        tmp.write_bytes(self._some_hdf5_bytes()[:100])
        self.foreign.add(tmp)

    @rule(cut=st.floats(0.0, 1.0))
    def killed_during_compaction(self, cut: float) -> None:
        """A consolidated temp file cut short by a compaction that died before its rename."""
        data = self._some_hdf5_bytes()
        tmp = self.store.path.with_name(f".{self.store.path.name}.tmp-{uuid.uuid4().hex[:12]}")
        tmp.write_bytes(data[: int(len(data) * cut)])
        self.stale.add(tmp)

    @precondition(
        lambda self: self.store.parts_dir.exists() and any(self.store.parts_dir.glob("part-*"))
    )
    @rule(keep=st.floats(0.0, 1.0))
    def killed_after_compaction_rename(self, keep: float) -> None:
        """The compaction renamed its file into place, then died while deleting the merged
        journal parts: some (or all) parts it merged are still there."""
        parts = sorted(self.store.parts_dir.glob("part-*"))
        saved = {p: p.read_bytes() for p in parts[: max(1, int(len(parts) * keep))]}
        self.store.compact()
        for p, data in saved.items():
            p.write_bytes(data)

    # -------------------------------------------------------------------- helpers
    def _some_hdf5_bytes(self) -> bytes:
        for p in [self.store.path, *self.store.parts_dir.glob("part-*")]:
            if p.exists():
                return p.read_bytes()
        return b"\x89HDF\r\n\x1a\n" + bytes(200)

    def _check_temps(self) -> None:
        for tmp in self.stale:
            assert not tmp.exists(), f"stale temp file kept: {tmp.name}"
        self.stale.clear()
        for tmp in self.foreign:
            assert tmp.exists(), f"a possibly live writer's temp file was deleted: {tmp.name}"

    # -------------------------------------------------------------------- invariants
    @invariant()
    def holds_exactly_the_model(self) -> None:
        store = FeatureStore(self.store.path)  # a fresh reader, as another process would be
        assert store.keys() == set(self.model)
        if self.model:
            keys = sorted(self.model)
            rows = store.read(keys)
            for k, row in zip(keys, rows, strict=True):
                assert np.array_equal(row, self.model[k]), "a wrong row was returned"
            # duplicates and any order in one request
            ask = keys[::-1] + keys[:2]
            assert np.array_equal(store.read(ask), np.stack([self.model[k] for k in ask]))
            assert verify(store.path).ok
        with pytest.raises(KeyError):
            store.read([_key(UNIVERSE + 1)])


StoreMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreMachine = StoreMachine.TestCase


@settings(max_examples=20, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.integers(0, UNIVERSE - 1), min_size=1, max_size=8), min_size=1, max_size=6
    ),
    compact_after=st.sets(st.integers(0, 5)),
)
def test_reads_are_the_same_before_and_after_compaction(
    batches: list[list[int]], compact_after: set[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore.for_spec(tmp, SPEC)
        for b, ids in enumerate(batches):
            store.append([_key(i) for i in ids], np.stack([_row(i, b % 2) for i in ids]))
            if b in compact_after:
                store.compact()
        keys = sorted(store.keys())
        before = store.read(keys)
        store.compact()
        assert not list(store.parts_dir.glob("part-*"))
        assert store.keys() == set(keys)
        assert np.array_equal(store.read(keys), before)
        assert store.info().n_rows == len(keys) and verify(store.path).ok


def test_stores_written_with_variable_length_attributes_still_read(tmp_path: Path) -> None:
    """Format 1 wrote string attributes as variable-length strings and, like format 2, left the
    feature chunks to HDF5's fletcher32: such stores still open, verify and compact (into format
    3: fixed-length attributes, feature chunks checked by their CRC32s)."""
    import json

    import h5py

    store = FeatureStore.for_spec(tmp_path, SPEC)
    keys = [_key(i) for i in range(5)]
    rows = np.stack([_row(i, 0) for i in range(5)])
    write_legacy(store.path, keys, rows, format_version=1, spec=SPEC)
    with h5py.File(store.path, "r") as f:
        assert f.attrs["format_version"] == 1 and f["features"].chunks == (5, DIM)
        assert f["features"].fletcher32 and "features_crc32" not in f
        assert h5py.check_string_dtype(f.attrs.get_id("spec").dtype).length is None  # vlen
    assert verify(store.path).ok and store.keys() == set(keys)
    assert np.array_equal(store.read(keys), rows)
    store.append([_key(9)], _row(9, 0)[None])
    store.compact()
    with h5py.File(store.path, "r") as f:
        assert f.attrs["format_version"] == 3
        assert json.loads(f.attrs["spec"]) == SPEC  # plain h5py reads it as before
        # Format 3: rows unfiltered, each chunk's CRC32 beside them (checked by featurestore).
        assert not f["features"].fletcher32 and f["features_crc32"].fletcher32
    assert np.array_equal(store.read(keys), rows) and verify(store.path).ok
