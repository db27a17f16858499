"""Damage: a full verification of a store (:func:`verify`), the quicker health check run before
appending (:func:`check`), the scan of every chunk both use, and the check of a batch about to
be appended (:func:`require_finite`).

Rows that are not finite numbers (NaN, infinity) are damage wherever they are found: the store
never accepts them (:func:`require_finite`), so a store holding any was written by an older
version or by hand.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featurestore.errors import StoreCorruptError, StoreError
from featurestore.store.compaction import EAGER_COMPACT_BYTES
from featurestore.store.format import H5_ERRORS, attr_text, crc32, nonfinite_rows
from featurestore.store.identify import identify
from featurestore.store.journal import Journal, VanishedError
from featurestore.store.reader import chunk_crcs, damaged, open_checked, read_keys, rebuild_hint

log = logging.getLogger(__package__)  # "featurestore.store", as before the package split

HEX = re.compile(rb"^[0-9a-f]{64}$")
# check() verifies every feature checksum of a consolidated file up to this size (parts always).
CHECK_FULL_BYTES = EAGER_COMPACT_BYTES


@dataclass
class ChunkScan:
    """What reading every chunk of a dataset found: the row ranges of chunks that cannot be
    read or fail their checksum, and (float datasets) the rows holding NaN or an infinity."""

    unreadable: list[tuple[int, int]] = field(default_factory=list)
    nonfinite: int = 0
    first_nonfinite: int = -1

    def nonfinite_text(self) -> str:
        return (
            f"{self.nonfinite} row(s) hold NaN or infinite values (row {self.first_nonfinite} "
            "first); featurestore never stores such rows"
        )


def scan_chunks(ds: h5py.Dataset, crcs: np.ndarray | None = None) -> ChunkScan:
    """Read every chunk of ``ds``; see :class:`ChunkScan`. Given the chunks' ``crcs``, each is
    also compared with its CRC32."""
    scan = ChunkScan()
    step = ds.chunks[0] if ds.chunks else max(1, ds.shape[0])
    floats = ds.dtype.kind == "f"
    for start in range(0, ds.shape[0], step):
        stop = min(ds.shape[0], start + step)
        try:
            block = ds[start:stop]
        except H5_ERRORS:
            scan.unreadable.append((start, stop))
            continue
        if crcs is not None and crc32(block) != int(crcs[start // step]):
            scan.unreadable.append((start, stop))
            continue
        if floats and len(bad := nonfinite_rows(block)):
            if not scan.nonfinite:
                scan.first_nonfinite = start + int(bad[0])
            scan.nonfinite += len(bad)
    return scan


def verify_features(f: h5py.File, where: Path, *, store: Path) -> None:
    """Read every feature chunk of file ``where`` of ``store``: StoreCorruptError on damage
    (a chunk that fails its checksum, a row that is not finite)."""
    try:
        scan = scan_chunks(f["features"], chunk_crcs(f, where))
    except StoreCorruptError as exc:
        raise damaged(store, where, str(exc).removeprefix(f"{where}: ")) from exc
    except H5_ERRORS as exc:
        raise damaged(store, where, f"features dataset unreadable ({exc})") from exc
    bad = scan.unreadable
    if bad:
        raise damaged(
            store,
            where,
            f"{len(bad)} feature chunk(s) fail their checksum (rows {bad[0][0]}..{bad[0][1]} "
            "first)",
        )
    if scan.nonfinite:
        raise damaged(store, where, scan.nonfinite_text())


def require_finite(keys: np.ndarray, rows: np.ndarray, store: Path) -> None:
    """Refuse a batch for ``store`` (StoreError naming it) when any of its rows is not finite:
    such rows are never stored."""
    bad = nonfinite_rows(rows)
    if len(bad):
        first = keys[bad[0]]
        first = first.decode() if isinstance(first, bytes) else str(first)
        raise StoreError(
            f"refusing a batch of {len(keys)} rows for {store.name}: {len(bad)} of them hold "
            f"NaN or infinite values (key {first} first); rows that are not finite numbers are "
            "never stored, so nothing of this batch was written"
        )


def _check_files(journal: Journal, expected: str | None) -> None:
    for path in journal.sources():
        with open_checked(path, expected) as f:
            read_keys(f, path)
            if path != journal.path or path.stat().st_size <= CHECK_FULL_BYTES:
                verify_features(f, path, store=journal.path)


def check(journal: Journal, expected: str | None) -> None:
    """Health check before appending: raises :class:`StoreCorruptError` if damaged.

    Every file must open with valid attributes (fingerprint ``expected`` unless None) and
    readable keys; every journal part and a consolidated file up to 256 MiB must also pass every
    feature chunk's checksum (a larger one is checked in full when compaction copies it). The
    error names the damaged file and says how to rebuild. A file where the cache directory or
    the journal folder belongs is a StoreError, found before any work.
    """
    problem = journal.layout_problem()
    if problem is not None:
        raise StoreError(problem)
    try:
        journal.shared(lambda: _check_files(journal, expected))
    except StoreCorruptError as exc:
        msg = str(exc)
        if exc.file is not None and "featurestore verify" not in msg:
            msg = f"{msg}. {rebuild_hint(journal.path, exc.file)}"
        raise StoreCorruptError(msg, file=exc.file) from exc


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: ``ok`` is False when any problem was found."""

    path: Path
    n_rows: int = 0
    feature_dim: int = 0
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "n_rows": self.n_rows,
            "feature_dim": self.feature_dim,
            "files_checked": self.files_checked,
            "problems": self.problems,
        }


def verify(path: Path | str) -> VerifyReport:
    """Check a store fully: attributes, shapes, every chunk's checksum, keys, duplicates, rows
    that are not finite.

    Raises NotAStoreError when ``path`` is not a store at all (:func:`identify`): only a store
    is ever reported damaged. Runs under the shared lock, so a compaction running meanwhile is
    never mistaken for damage.
    """
    journal = Journal(identify(path))

    def attempt() -> VerifyReport:
        report = VerifyReport(path=journal.path)
        _verify_into(journal, report)
        return report

    return journal.shared(attempt)


def _verify_file(src: Path, f: h5py.File, report: VerifyReport, fps: set[str]) -> list[bytes]:
    """Check open file ``src`` into ``report``; returns its keys (none if unreadable)."""
    try:
        fps.add(attr_text(f, "fingerprint"))
        width = int(f["features"].shape[1])
        report.feature_dim = report.feature_dim or width
        if width != report.feature_dim:
            report.problems.append(f"{src}: width {width} differs")
        crcs = chunk_crcs(f, src)
        for name, sums in (("features", crcs), ("keys", None)):
            scan = scan_chunks(f[name], sums)
            for start, stop in scan.unreadable:
                report.problems.append(f"{src}: {name} rows {start}..{stop} unreadable")
            if scan.nonfinite:
                report.problems.append(f"{src}: {scan.nonfinite_text()}")
        keys = f["keys"][...].tolist()
    except H5_ERRORS as exc:
        report.problems.append(f"{src}: unreadable ({exc})")
        return []
    bad = [k for k in keys if not HEX.match(k)]
    if bad:
        report.problems.append(f"{src}: {len(bad)} malformed key(s)")
    return keys


def _verify_into(journal: Journal, report: VerifyReport) -> None:
    problem = journal.layout_problem()
    if problem is not None:
        report.problems.append(problem)
    sources = journal.sources()
    if not sources:  # only an empty journal folder (a first run stopped early): no rows, no damage
        return
    all_keys: list[bytes] = []
    fps: set[str] = set()
    for src in sources:
        report.files_checked += 1
        try:
            f = open_checked(src, None)
        except VanishedError:
            raise
        except StoreError as exc:
            report.problems.append(str(exc))
            continue
        with f:
            keys = _verify_file(src, f, report, fps)
        if src == journal.path and len(set(keys)) != len(keys):
            report.problems.append(
                f"{src}: {len(keys) - len(set(keys))} duplicate key(s) in consolidated rows"
            )
        all_keys.extend(keys)
    if len(fps) > 1:
        report.problems.append(f"files disagree on the fingerprint: {sorted(fps)}")
    report.n_rows = len(set(all_keys))
    stale = journal.main_temps() + journal.part_temps()
    if stale:
        log.info(
            "%d temporary file(s) of interrupted or running writers next to %s (never "
            "read; the next compaction deletes those whose writer is gone)",
            len(stale),
            journal.path,
        )
