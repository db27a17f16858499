"""A CSV manifest of ``path,label[,split]`` (header optional; paths relative to the CSV).

Its records are file records (:mod:`featurestore.sources.files` loads them).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from featurestore.errors import SourceError
from featurestore.sources.files import Entry, file_records
from featurestore.sources.records import Skipped, Source

Row = tuple[int, list[str]]  # (line number, cells)


def read_rows(path: Path) -> list[Row]:
    """(line number, row) for the non-blank rows; line_num counts physical lines."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            numbered = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: a manifest must be UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise SourceError(f"{path}: not a readable CSV manifest ({exc})") from exc
    if not numbered:
        raise SourceError(f"{path}: the manifest is empty (expected lines of path,label[,split])")
    return numbered


def columns(path: Path, numbered: list[Row]) -> tuple[dict[str, int], list[Row]]:
    """(column name -> index, data rows): a first row whose first cell is ``path`` is the
    header; without one the columns are ``path,label,split`` (as many as the widest row)."""
    if numbered[0][1][0].strip().lower() == "path":
        header = [c.strip().lower() for c in numbered[0][1]]
        numbered = numbered[1:]
    else:
        header = ["path", "label", "split"][: max(len(r) for _, r in numbered)]
    if "path" not in header:
        raise SourceError(f"{path}: a manifest needs a 'path' column, got {header}")
    return {name: i for i, name in enumerate(header)}, numbered


def _cell(row: list[str], col: dict[str, int], name: str) -> str | None:
    """The stripped cell of column ``name`` (None when absent or blank)."""
    return row[col[name]].strip() or None if name in col and len(row) > col[name] else None


def from_csv(path: Path) -> Source:
    """A CSV manifest of ``path,label[,split]``; paths are relative to the CSV's folder."""
    skipped: list[Skipped] = []
    base = path.parent
    col, numbered = columns(path, read_rows(path))
    entries: list[Entry] = []
    for n, row in numbered:
        if len(row) <= col["path"] or not row[col["path"]].strip():
            skipped.append(Skipped(f"{path}:{n}", f"no path (manifest line {n})"))
            continue
        rel = row[col["path"]].strip()
        file = (base / rel) if not os.path.isabs(rel) else Path(rel)
        label, split = _cell(row, col, "label"), _cell(row, col, "split")
        if not file.exists() and not file.is_symlink():
            skipped.append(Skipped(str(file), f"missing file (manifest line {n})"))
            continue
        entries.append((str(file), label, split))
    records = file_records(entries, skipped)
    return Source(str(path), "csv", records, skipped)
