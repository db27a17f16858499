"""Compaction: merge the journal parts into the consolidated file, crash-safely.

Crash safety rests on one rule: **no HDF5 file is ever modified in place**. Compaction (under
the exclusive lock) copies the consolidated file plus the parts, dropping duplicate keys, block
by block into a temporary file, renames it over the consolidated file and only then deletes the
merged parts. A SIGKILL at any instant therefore leaves the old good state or the new good
state; readers merge the consolidated file with any parts, first occurrence of a key wins, so a
part whose rows were already merged is harmless. Every block is checked as it is copied, and
files of formats 1-2 are rewritten as format 3.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featurestore.atomic import atomic_path
from featurestore.errors import StoreError
from featurestore.store.format import (
    H5_ERRORS,
    KEY_DTYPE,
    RowWriter,
    json_attr,
    nonfinite_rows,
    write_file,
)
from featurestore.store.journal import Journal, write_error
from featurestore.store.keymatch import new_rows
from featurestore.store.reader import CheckedRows, damaged, open_checked, read_keys

# Compact eagerly while the consolidated file is small; for big stores wait until the journal
# holds a quarter as many rows, so that adding a few images never rewrites gigabytes.
EAGER_COMPACT_BYTES = 256 * 1024 * 1024
MAX_PARTS = 256


@dataclass
class _Plan:
    """What a compaction found: the consolidated file (open, or None), its keys and provenance,
    each part's keys (rows are read only when copied), and the common row width."""

    main: h5py.File | None
    main_keys: np.ndarray
    provenance: dict[str, Any]
    parts: list[Path]
    part_keys: list[np.ndarray] = field(default_factory=list)
    runs: list[Any] = field(default_factory=list)
    dim: int | None = None


def compact(
    journal: Journal,
    *,
    expected: str | None,
    attrs: Callable[[dict[str, Any]], dict[str, Any]],
    force: bool = False,
) -> int:
    """Merge ``journal``'s parts into the consolidated file. Returns the number of rows added.

    Runs under the exclusive lock, and also deletes temp files left by killed writers.
    Without ``force`` a large store is only rewritten once the journal holds a quarter as
    many rows as the consolidated file (or many parts). With nothing to merge or clean up
    it returns at once without the lock, so a read-only cache that is complete works.
    ``expected``: the fingerprint every file must hold (None: any); ``attrs(provenance)``: the
    new file's attributes.
    """
    if not journal.part_paths():
        if journal.main_temps() or journal.part_temps():
            # Best effort: a read-only cache that holds nothing to merge must still work.
            with contextlib.suppress(StoreError), journal.locked(exclusive=True):
                journal.remove_stale_temps()
        return 0
    with journal.locked(exclusive=True):
        journal.remove_stale_temps()
        parts = journal.part_paths()
        if not parts:
            return 0
        main = open_checked(journal.path, expected) if journal.path.exists() else None
        try:
            plan = _read_plan(journal, main, parts, expected)
            if _wait_for_more(journal, plan) and not force:
                return 0
            added = _merge(journal, plan, expected, attrs)
        finally:
            if main is not None:
                main.close()
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        return added


def _read_plan(
    journal: Journal, main: h5py.File | None, parts: list[Path], expected: str | None
) -> _Plan:
    """Keys, provenance and width of the consolidated file and of every part."""
    plan = _Plan(main, np.empty(0, dtype=KEY_DTYPE), {}, parts)
    if main is not None:
        plan.main_keys = read_keys(main, journal.path)
        plan.provenance = json_attr(main, "provenance", journal.path)
        plan.dim = int(main["features"].shape[1])
    plan.runs = list(plan.provenance.get("runs", []))
    for part in parts:
        with open_checked(part, expected) as pf:
            plan.part_keys.append(read_keys(pf, part))
            width = int(pf["features"].shape[1])
            plan.dim = width if plan.dim is None else plan.dim
            if width != plan.dim:
                raise damaged(journal.path, part, f"width {width} != {plan.dim}")
            run = json_attr(pf, "provenance", part)
            if run and run not in plan.runs:
                plan.runs.append(run)
    return plan


def _wait_for_more(journal: Journal, plan: _Plan) -> bool:
    """Whether a large store waits for a bigger journal before it is rewritten."""
    part_rows = sum(len(k) for k in plan.part_keys)
    size = journal.path.stat().st_size if plan.main is not None else 0
    lazy = size > EAGER_COMPACT_BYTES and part_rows * 4 < len(plan.main_keys)
    return lazy and len(plan.parts) < MAX_PARTS


def _merge(
    journal: Journal,
    plan: _Plan,
    expected: str | None,
    attrs: Callable[[dict[str, Any]], dict[str, Any]],
) -> int:
    """Write the merged file over the consolidated one (atomically); returns the rows added."""
    keep = new_rows(plan.main_keys, plan.part_keys)
    added = sum(int(k.sum()) for k in keep)
    if not added:
        return 0
    provenance = {**plan.provenance, "runs": plan.runs[-100:]}
    provenance.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    new_attrs = attrs(provenance)
    copies = list(zip(plan.parts, plan.part_keys, keep, strict=True))

    def fill(writer: RowWriter) -> None:
        _merge_into(journal.path, expected, writer, plan, copies)

    n = len(plan.main_keys) + added
    tmp_name = journal.compaction_tmp_name()
    try:
        with atomic_path(journal.path, tmp_name=tmp_name, tmp_synced=True) as tmp:
            write_file(tmp, n, int(plan.dim or 0), new_attrs, fill)
    except StoreError:  # a damaged file (StoreCorruptError), found as copied
        raise
    except H5_ERRORS as exc:  # h5py reports a failed write as any of these
        raise write_error(journal.path.parent, exc) from exc
    return added


def _merge_into(
    store: Path,
    expected: str | None,
    writer: RowWriter,
    plan: _Plan,
    parts: list[tuple[Path, np.ndarray, np.ndarray]],
) -> None:
    """Write compaction's rows into its new file: the consolidated file's rows (if any, under
    ``plan.main_keys``), then the kept rows (``(path, keys, keep mask)``) of each journal part,
    block by block, so that memory stays at about a block however many rows are merged.
    Every block is checked as it is read: a damaged file (a checksum that fails, a row that is
    not finite) raises StoreCorruptError."""
    buf: np.ndarray | None = None
    if plan.main is not None:
        rows = CheckedRows(plan.main, store, store=store)
        keys = plan.main_keys
        for start in range(0, rows.n, rows.step):
            stop = min(rows.n, start + rows.step)
            buf = rows.read_block(start, stop, buf)
            _require_finite(buf[: stop - start], start, store, store)
            writer.add(keys[start:stop], buf[: stop - start])
    for part, pkeys, keep in parts:
        if not keep.any():
            continue  # every row already merged: its rows are not even read
        with open_checked(part, expected) as pf:
            rows = CheckedRows(pf, part, store=store)
            for start in range(0, rows.n, rows.step):
                stop = min(rows.n, start + rows.step)
                # every block, even one without new rows: checks the whole part
                buf = rows.read_block(start, stop, buf)
                mask = keep[start:stop]
                block = buf[: stop - start]
                _require_finite(block, start, part, store)
                writer.add(pkeys[start:stop][mask], block if mask.all() else block[mask])


def _require_finite(block: np.ndarray, start: int, where: Path, store: Path) -> None:
    """Stored rows ``start``.. of file ``where`` as read into ``block``: StoreCorruptError
    when one is not finite (never carried into the new file)."""
    bad = nonfinite_rows(block)
    if len(bad):
        raise damaged(
            store,
            where,
            f"row {start + int(bad[0])} holds NaN or infinite values; featurestore never "
            "stores such rows",
        )
