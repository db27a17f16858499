"""A CSV manifest of ``path,label[,split]`` (header optional; paths relative to the CSV).

The manifest is UTF-8 text (a byte-order mark is fine). Its first non-blank row is a header
when one of its cells is ``path`` (any case, spaces around ignored) and every cell is a name:
not blank, without a ``.`` or a ``/`` (a data row names a file); the header names the columns
in any order (``path`` needed, ``label`` and ``split`` optional, other columns ignored, no name
twice). Without a header the columns are ``path,label,split``. Blank rows are ignored; blank
cells are no label or no split. A row without a path, or whose path does not exist or cannot be
looked up, is skipped with its manifest line. A manifest that is not a regular file (a FIFO)
is refused without being read.

Its records are file records (:mod:`featurestore.sources.files` loads them).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from featurestore.decode import NotRegularFile, open_regular
from featurestore.errors import SourceError
from featurestore.sources.files import Entry, file_records
from featurestore.sources.records import Skipped, Source

Row = tuple[int, list[str]]  # (line number, cells)
COLUMNS = ("path", "label", "split")


def read_rows(path: Path) -> list[Row]:
    """(line number, row) for the non-blank rows; line_num counts physical lines."""
    try:
        fd, _ = open_regular(path)
    except NotRegularFile as exc:
        raise SourceError(f"{path}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        with open(fd, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            numbered = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: a manifest must be UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise SourceError(f"{path}: not a readable CSV manifest ({exc})") from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not numbered:
        raise SourceError(f"{path}: the manifest is empty (expected lines of path,label[,split])")
    return numbered


def _is_header(row: list[str]) -> bool:
    cells = [c.strip().lower() for c in row]
    return "path" in cells and all(c and "." not in c and "/" not in c for c in cells)


def columns(path: Path, numbered: list[Row]) -> tuple[dict[str, int], list[Row]]:
    """(column name -> index, data rows): a first row with a cell ``path`` whose cells are all
    names (not blank, no ``.`` or ``/``) is the header; without one the columns are
    ``path,label,split`` (as many as the widest row)."""
    if _is_header(numbered[0][1]):
        header = [c.strip().lower() for c in numbered[0][1]]
        twice = sorted({c for c in header if c and header.count(c) > 1})
        if twice:
            raise SourceError(f"{path}: the header names {twice} twice: {header}")
        numbered = numbered[1:]
    else:
        header = list(COLUMNS[: max(len(r) for _, r in numbered)])
    return {name: i for i, name in enumerate(header) if name}, numbered


def _cell(row: list[str], col: dict[str, int], name: str) -> str | None:
    """The stripped cell of column ``name`` (None when absent or blank)."""
    return row[col[name]].strip() or None if name in col and len(row) > col[name] else None


def _missing(file: Path) -> str | None:
    """Why ``file`` cannot be listed, or None when it exists (a symlink counts: it fails, with
    its reason, when read)."""
    try:
        os.lstat(file)
    except (FileNotFoundError, NotADirectoryError):
        return "missing file"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    except ValueError as exc:  # a NUL character
        return f"cannot read: {exc}"
    return None


def from_csv(path: Path) -> Source:
    """A CSV manifest of ``path,label[,split]``; paths are relative to the CSV's folder."""
    skipped: list[Skipped] = []
    base = path.parent
    col, numbered = columns(path, read_rows(path))
    entries: list[Entry] = []
    for n, row in numbered:
        rel = _cell(row, col, "path")
        if rel is None:
            skipped.append(Skipped(f"{path}:{n}", f"no path (manifest line {n})"))
            continue
        file = (base / rel) if not os.path.isabs(rel) else Path(rel)
        label, split = _cell(row, col, "label"), _cell(row, col, "split")
        problem = _missing(file)
        if problem is not None:
            skipped.append(Skipped(str(file), f"{problem} (manifest line {n})"))
            continue
        entries.append((str(file), label, split))
    records = file_records(entries, skipped)
    return Source(str(path), "csv", records, skipped)
