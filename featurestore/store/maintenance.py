"""Cache maintenance: remove a store, remove some rows of a store, collect leftovers.

Every operation first works out what it would do (a list of :class:`Step`); with ``dry_run``
it stops there, otherwise it does it, under the store's exclusive lock (taken the way
compaction takes it: the gate, then the lock), so no reader is halfway through a read and no
compaction runs meanwhile.

* :func:`remove_store`: the consolidated file, the journal, temporary files, the lock and the
  gate. The files are first moved into one hidden folder beside them (journal first, so a kill
  midway leaves at most a store holding the rows of its last compaction), then deleted.
* :func:`remove_rows`: rows of some image keys, crash-safely. The journal is compacted first
  (crash-safe as every compaction), then the consolidated file is rewritten without the rows
  into a temporary file that is renamed over it: a SIGKILL at any moment leaves the store with
  all of those rows or none. Rows of those keys appended by another process while this runs
  are its own newer rows and are kept (counted in the report).
* :func:`collect_garbage`: leftovers of killed or interrupted runs: temporary files of dead
  writers, journal parts whose rows are all in the consolidated file already (a compaction
  killed after its rename), journal folders, locks and gates of stores that no longer exist,
  and folders left by a killed :func:`remove_store`. Journal parts that hold rows not merged
  yet are data, not garbage: they are merged only when asked (``compact=True``). A damaged
  store is left as it is (and named in the report's notes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.atomic import atomic_path, fsync_dir
from featurestore.errors import StoreCorruptError, StoreError
from featurestore.keys import fingerprint
from featurestore.store.facade import FeatureStore
from featurestore.store.format import (
    H5_ERRORS,
    RowWriter,
    attr_text,
    json_attr,
    store_attrs,
    write_file,
)
from featurestore.store.journal import Journal, is_stale_part_tmp, write_error
from featurestore.store.keymatch import as_key_array, first_match
from featurestore.store.reader import CheckedRows, open_checked, read_keys

__all__ = [
    "MaintenanceReport",
    "Step",
    "collect_garbage",
    "remove_rows",
    "remove_store",
]

log = logging.getLogger(__package__)

TRASH_MARK = ".rm-"
#: A journal folder younger than this may belong to a writer that is about to use it.
YOUNG_SECONDS = 60.0


@dataclass(frozen=True)
class Step:
    """One thing an operation does (or, in a dry run, would do) to one file or folder."""

    action: str  # "delete", "rewrite" or "merge"
    path: Path
    detail: str = ""
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "path": str(self.path),
            "detail": self.detail,
            "bytes": self.size,
        }


@dataclass
class MaintenanceReport:
    """What an operation did, or would do with ``dry_run``."""

    dry_run: bool
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows_removed: int = 0

    @property
    def freed_bytes(self) -> int:
        """Bytes of the files deleted (or to be deleted)."""
        return sum(s.size for s in self.steps if s.action == "delete")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "steps": [s.to_dict() for s in self.steps],
            "notes": self.notes,
            "rows_removed": self.rows_removed,
            "freed_bytes": self.freed_bytes,
        }


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _delete(path: Path) -> None:
    """Delete a file or folder; one already gone is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise write_error(path.parent, exc) from exc


def _journal(path: Path | str) -> Journal:
    journal = Journal(path)
    if not journal.path.exists() and not journal.parts_dir.is_dir():
        raise StoreError(f"no store at {journal.path} (no such .h5 file or .parts folder)")
    return journal


def _spec(journal: Journal) -> dict[str, Any]:
    """The extractor spec of the store's files (the consolidated file's, else a part's)."""

    def read() -> dict[str, Any]:
        sources = journal.sources()
        if not sources:
            raise StoreError(f"no store at {journal.path}")
        with open_checked(sources[0], None) as f:
            return json.loads(attr_text(f, "spec"))

    return journal.shared(read)


# ---------------------------------------------------------------------------- remove a store
def remove_store(path: Path | str, *, dry_run: bool = False) -> MaintenanceReport:
    """Delete the store at ``path``: its consolidated file, journal, temporary files, lock and
    gate. Waits for readers and a running compaction to finish (the exclusive lock).

    An extraction writing to this store at the same time fails (its journal folder is gone)
    or, if it starts after, builds the store anew.

    Raises:
        StoreError: there is no store at ``path``, or its files cannot be deleted.
    """
    journal = _journal(path)
    report = MaintenanceReport(dry_run)
    files = [journal.path, journal.parts_dir, *journal.main_temps()]
    files += [journal.lock_path, journal.gate_path]
    report.steps = [Step("delete", f, "", _size(f)) for f in files if f.exists()]
    if dry_run:
        return report
    with journal.locked(exclusive=True):
        trash = journal.path.with_name(f".{journal.path.name}{TRASH_MARK}{uuid.uuid4().hex[:12]}")
        try:
            trash.mkdir()
            for f in [journal.parts_dir, journal.path, *journal.main_temps()]:
                if f.exists():
                    os.replace(f, trash / f.name)
            fsync_dir(journal.path.parent)
        except OSError as exc:
            raise write_error(journal.path.parent, exc) from exc
        _delete(trash)
        _delete(journal.gate_path)  # held by us: waiting processes retry on a new file
        _delete(journal.lock_path)
    log.info("removed store %s", journal.path)
    return report


# ---------------------------------------------------------------------------- remove rows
def remove_rows(
    path: Path | str, keys: Iterable[str], *, dry_run: bool = False, reason: str = ""
) -> MaintenanceReport:
    """Remove the rows of image ``keys`` from the store at ``path``, crash-safely.

    The journal is compacted first (merging every part), then the consolidated file is
    rewritten without those rows and renamed over the old one: a kill at any moment leaves all
    of the rows or none. ``reason`` (e.g. the source's name) is recorded in the store's
    provenance. Keys the store does not hold are ignored.

    Raises:
        StoreError: there is no store at ``path``, or it cannot be written.
        StoreCorruptError: a file of the store is damaged (nothing is changed).
    """
    journal = _journal(path)
    spec = _spec(journal)
    store = FeatureStore(journal.path, spec=spec)
    want = as_key_array(sorted(set(keys)))
    held = store.keys()
    hits = sum(k.decode() in held for k in want.tolist())
    report = MaintenanceReport(dry_run, rows_removed=hits)
    if not hits:
        report.notes.append(f"{journal.path.name} holds none of the {len(want)} image(s)")
        return report
    report.steps.append(
        Step(
            "rewrite", journal.path, f"without {hits} of its {len(held)} rows", _size(journal.path)
        )
    )
    if dry_run:
        return report
    store.compact(force=True)
    with journal.locked(exclusive=True):
        journal.remove_stale_temps()
        if journal.path.exists():
            report.rows_removed = _rewrite_without(journal, spec, want, reason)
        else:
            report.rows_removed = 0
        late = [p for p in journal.part_paths() if _holds_any(p, want)]
    if late:
        report.notes.append(
            f"{len(late)} journal part(s) written by another process meanwhile hold some of "
            "these images again; they are kept (run `rm --source` again to remove them)"
        )
    return report


def _holds_any(part: Path, want: np.ndarray) -> bool:
    with open_checked(part, None) as f:
        return bool((first_match(want, read_keys(f, part)) >= 0).any())


def _rewrite_without(journal: Journal, spec: dict[str, Any], want: np.ndarray, reason: str) -> int:
    """Rewrite the consolidated file without the rows of keys ``want`` (under the exclusive
    lock, with no journal part of those keys); returns how many rows were dropped."""
    main = open_checked(journal.path, fingerprint(spec))
    try:
        keys = read_keys(main, journal.path)
        drop = first_match(want, keys) >= 0
        n_drop = int(drop.sum())
        if not n_drop:
            return 0
        keep = ~drop
        dim = int(main["features"].shape[1])
        provenance = json_attr(main, "provenance", journal.path)
        removals = list(provenance.get("removals", []))[-99:]
        removals.append(
            {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": n_drop, "reason": reason}
        )
        attrs = store_attrs(spec, {**provenance, "removals": removals})

        def fill(writer: RowWriter) -> None:
            rows = CheckedRows(main, journal.path, store=journal.path)
            buf: np.ndarray | None = None
            for start in range(0, rows.n, rows.step):
                stop = min(rows.n, start + rows.step)
                buf = rows.read_block(start, stop, buf)
                mask = keep[start:stop]
                if mask.any():
                    writer.add(keys[start:stop][mask], buf[: stop - start][mask])

        try:
            with atomic_path(
                journal.path, tmp_name=journal.compaction_tmp_name(), tmp_synced=True
            ) as tmp:
                write_file(tmp, int(keep.sum()), dim, attrs, fill)
        except StoreError:
            raise
        except H5_ERRORS as exc:
            raise write_error(journal.path.parent, exc) from exc
    finally:
        main.close()
    log.info("removed %d rows from %s", n_drop, journal.path)
    return n_drop


# ---------------------------------------------------------------------------- garbage
def _store_of(entry: Path) -> Path | None:
    """The store path a cache-root entry belongs to (None: not a store's file)."""
    name = entry.name
    if name.startswith(".") and ".h5.tmp-" in name:
        return entry.with_name(name[1:].split(".h5.tmp-")[0] + ".h5")
    if name.startswith("."):
        return None
    for suffix in (".h5.lock", ".h5.gate"):
        if name.endswith(suffix):
            return entry.with_name(name[: -len(suffix)] + ".h5")
    if name.endswith(".parts") and entry.is_dir():
        return entry.with_name(name[: -len(".parts")] + ".h5")
    if name.endswith(".h5"):
        return entry
    return None


def collect_garbage(
    root: Path | str, *, dry_run: bool = False, compact: bool = False
) -> MaintenanceReport:
    """Delete what killed or interrupted runs left under cache root ``root`` (see the module
    docstring); with ``compact`` also merge every store's pending journal parts."""
    root = Path(root)
    report = MaintenanceReport(dry_run)
    if not root.is_dir():
        report.notes.append(f"no cache at {root}")
        return report
    entries = sorted(root.iterdir())
    for entry in entries:
        if entry.name.startswith(".") and TRASH_MARK in entry.name:
            report.steps.append(Step("delete", entry, "left by an interrupted rm", _size(entry)))
            if not dry_run:
                _delete(entry)
    stores = sorted({s for e in entries if (s := _store_of(e)) is not None})
    for path in stores:
        journal = Journal(path)
        try:
            if path.exists() or journal.part_paths():
                _collect_in_store(journal, report, dry_run=dry_run, compact=compact)
            else:
                _collect_orphan(journal, report, dry_run=dry_run)
        except StoreCorruptError as exc:  # one damaged store does not stop the others
            report.notes.append(
                f"{path.name} is damaged and was left as it is ({exc.file or path}); "
                f"see `featurestore verify {path.name}`"
            )
    return report


def _stale_part_temps(journal: Journal) -> list[Path]:
    return [t for t in journal.part_temps() if is_stale_part_tmp(t)]


def _live_part_temps(journal: Journal) -> list[Path]:
    return [t for t in journal.part_temps() if not is_stale_part_tmp(t)]


def _collect_in_store(
    journal: Journal, report: MaintenanceReport, *, dry_run: bool, compact: bool
) -> None:
    """A store with rows: stale temporary files and journal parts already merged."""

    def plan() -> tuple[list[Path], list[Path]]:
        parts = journal.part_paths()
        if not parts or not journal.path.exists():
            return [], parts
        with open_checked(journal.path, None) as f:
            main_keys = read_keys(f, journal.path)
        merged, pending = [], []
        for part in parts:
            with open_checked(part, None) as f:
                pkeys = read_keys(f, part)
            (merged if (first_match(main_keys, pkeys) >= 0).all() else pending).append(part)
        return merged, pending

    def steps(merged: list[Path], temps: list[Path]) -> list[Step]:
        out = [
            Step("delete", t, "temporary file of an interrupted writer", _size(t)) for t in temps
        ]
        out += [Step("delete", p, "journal part already merged", _size(p)) for p in merged]
        return out

    if dry_run:
        merged, pending = journal.shared(plan)
        temps = journal.main_temps() + _stale_part_temps(journal)
        report.steps += steps(merged, temps)
    else:
        with journal.locked(exclusive=True):
            merged, pending = plan()
            # under the exclusive lock no compaction runs: every consolidated temp is stale
            temps = journal.main_temps() + _stale_part_temps(journal)
            report.steps += steps(merged, temps)
            for f in temps + merged:
                _delete(f)
    if pending and compact:
        report.steps.append(
            Step("merge", journal.path, f"{len(pending)} pending journal part(s)", 0)
        )
        if not dry_run:
            FeatureStore(journal.path, spec=_spec(journal)).compact(force=True)
    elif pending:
        report.notes.append(
            f"{journal.path.name}: {len(pending)} journal part(s) hold rows not merged yet "
            "(readers use them as they are; the next extract, or `gc --compact`, merges them)"
        )


def _collect_orphan(journal: Journal, report: MaintenanceReport, *, dry_run: bool) -> None:
    """Files of a store that holds no rows: an empty journal folder, stale temporary files,
    its lock and gate."""
    live = _live_part_temps(journal)
    young = False
    if journal.parts_dir.is_dir():
        with contextlib.suppress(OSError):
            young = time.time() - journal.parts_dir.stat().st_mtime < YOUNG_SECONDS
    if live or young:
        report.notes.append(
            f"{journal.parts_dir.name}: a writer is starting on this store; left alone"
        )
        return
    files = [*journal.main_temps(), journal.parts_dir, journal.lock_path, journal.gate_path]
    why = {
        journal.parts_dir: "journal folder of a store that holds no rows",
        journal.lock_path: "lock of a store that no longer exists",
        journal.gate_path: "gate of a store that no longer exists",
    }
    found = [f for f in files if f.exists()]
    report.steps += [
        Step("delete", f, why.get(f, "temporary file of an interrupted writer"), _size(f))
        for f in found
    ]
    if dry_run or not found:
        return
    with journal.locked(exclusive=True):
        if journal.path.exists() or journal.part_paths() or _live_part_temps(journal):
            return  # a writer got there first: it is a store again
        for f in [*journal.main_temps(), journal.parts_dir, journal.gate_path, journal.lock_path]:
            _delete(f)
