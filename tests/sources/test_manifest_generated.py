"""Generated CSV manifests (hypothesis): random cells (commas, quotes, newlines, control and
non-ASCII characters, blanks), quoting styles, line endings, encodings (UTF-8 with and without
a byte-order mark, Latin-1, UTF-16), headers in any column order and case (or none), blank
lines, and paths that are relative, absolute, going up, missing, too long, not images,
empty, folders, dangling links and a FIFO (watched: it must never be opened).

Each manifest is read by ``open_source`` and compared with a reference written here from the
rules in the manifest module's docstring: a SourceError exactly when the reference refuses the
manifest, otherwise the same records (path, key, label, split), the same skipped paths with
their reasons and manifest lines, and the same warnings.

FEATURESTORE_HYPOTHESIS_EXAMPLES=500 runs more examples than the default.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import re
from pathlib import Path
from typing import Any

import pytest
from fifo_sentinel import FifoSentinel
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from featurestore.errors import FeatureStoreError, SourceError
from featurestore.sources import open_source

EXAMPLES = int(os.environ.get("FEATURESTORE_HYPOTHESIS_EXAMPLES", "40"))
LONG = "d" * 300 + ".png"
# path kind -> (file name in the data folder, what reading it gives)
KINDS = {
    "image": ("a.png", None),
    "deep": ("sub/b.jpg", None),
    "missing": ("gone.png", "missing file"),
    "text": ("notes.txt", "not an image file (extension '.txt')"),
    "empty": ("empty.png", "empty file (0 bytes)"),
    "fifo": ("pipe.png", "not a regular file (a FIFO)"),
    "folder": ("dir.png", "not a regular file (a folder)"),
    "dangling": ("dangling.png", "cannot read: No such file or directory"),
    "long": (LONG, "cannot read: File name too long"),
}
ROW_LEVEL = ("missing", "long")  # reasons given with the manifest line


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("manifests")
    d = root / "data"
    (d / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 3), (1, 2, 3)).save(d / "a.png")
    Image.new("RGB", (3, 4), (3, 2, 1)).save(d / "sub" / "b.jpg")
    (d / "notes.txt").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    (d / "dir.png").mkdir()
    (d / "dangling.png").symlink_to("nowhere.png")
    with FifoSentinel(d / "pipe.png") as sentinel:
        yield root, sentinel
    assert sentinel.opened == 0


TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FF)
    | st.sampled_from([",", '"', "\n", "\r", " ", "é", "\t"]),
    max_size=6,
) | st.sampled_from(["path", " Path ", "a.b", "x/y"])
SPLITS = st.sampled_from(["", "train", "test", " val ", "Train"]) | TEXT


@st.composite
def manifests(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(0, 6))
    rows = []
    for _ in range(n):
        kind = draw(st.sampled_from([*KINDS, "image", "image", "blank"]))
        form = draw(st.sampled_from(["relative", "absolute", "padded"]))
        rows.append((kind, form, draw(TEXT), draw(SPLITS), draw(st.integers(0, 2))))
    shape = draw(st.integers(0, 9))
    if shape < 3:
        header = None
    elif shape < 6:
        header = draw(st.permutations(["path", "label", "split", "extra"]))
    elif shape < 8:
        header = draw(st.permutations(["path", "label"]))
    else:
        header = ["path"] if shape == 8 else ["path", "label", "label"]  # a name twice
    return {
        "rows": rows,
        "header": header,
        "case": draw(st.sampled_from([str, str.upper, str.title, lambda s: f" {s} "])),
        "widths": [draw(st.integers(1, 3)) for _ in rows],
        "quoting": draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
        "ending": draw(st.sampled_from(["\n", "\r\n"])),
        "encoding": draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"])),
        "blanks": draw(st.lists(st.sampled_from(["", "  ", ",,", " , "]), max_size=2)),
    }


def _path_cell(kind: str, form: str, data_dir: Path, base: Path) -> str:
    if kind == "blank":
        return ""
    name = KINDS[kind][0]
    if form == "absolute":
        return str(data_dir / name)
    rel = os.path.relpath(data_dir, base) + "/" + name  # "../data/a.png"
    return f"  {rel} " if form == "padded" else rel


def write_manifest(spec: dict[str, Any], data_dir: Path, base: Path) -> tuple[bytes, list[Any]]:
    """The manifest's bytes, and per data row: (cells by column name, physical end line)."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=spec["quoting"], lineterminator=spec["ending"])
    # Python 3.11's writer quotes a cell holding a line-break character only when that
    # character is in its line terminator: with "\n" endings a bare "\r" would be written
    # unquoted, which every CSV reader (and RFC 4180) reads as the end of a record. Such a row
    # is written with every cell quoted instead, as later Pythons quote it.
    quoted = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator=spec["ending"])
    header = spec["header"]
    line = 0
    planned = []

    def emit(cells: list[str]) -> int:
        nonlocal line
        start = buf.tell()
        bare_cr = "\r" not in spec["ending"] and any("\r" in c for c in cells)
        (quoted if bare_cr else writer).writerow(cells)
        line += len(re.findall(r"\r\n|\r|\n", buf.getvalue()[start:]))
        return line

    for blank in spec["blanks"]:
        buf.write(blank + spec["ending"])
        line += 1
    if header is not None:
        emit([spec["case"](name) for name in header])
    for (kind, form, label, split, extra), width in zip(spec["rows"], spec["widths"], strict=True):
        named = {"path": _path_cell(kind, form, data_dir, base), "label": label, "split": split}
        named["extra"] = "x" * extra
        if header is None:
            cells = [named["path"], label, split][:width]
        else:
            cells = [named[name] for name in header]
        planned.append((kind, form, cells, emit(cells)))
    text = buf.getvalue()
    encoding = spec["encoding"]
    if encoding == "latin-1":
        try:
            raw = text.encode("latin-1")
        except UnicodeEncodeError:
            raw = text.encode("utf-8")
        else:
            assume(_utf8(raw) is None or text.isascii())  # bytes that are other UTF-8 text
    else:
        raw = text.encode(encoding)
    return raw, planned


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def reference(
    spec: dict[str, Any], raw: bytes, planned: list[Any], manifest: Path, data_dir: Path
) -> Any:
    """("error", pattern) or (records, skipped, warnings) by the documented rules."""
    if _utf8(raw) is None:
        return "error", "a manifest must be UTF-8 text"
    rows = [(cells, end) for _, _, cells, end in planned]
    header = spec["header"]
    if header is not None:
        names = [spec["case"](n).strip().lower() for n in header]
        rows.insert(0, (names, 0))
    rows = [(c, e) for c, e in rows if any(x.strip() for x in c)]
    if not rows:
        return "error", "the manifest is empty"
    first = [c.strip().lower() for c in rows[0][0]]
    if "path" in first and all(c and "." not in c and "/" not in c for c in first):
        if len(set(first) - {""}) < len([c for c in first if c]):
            return "error", "the header names"
        columns = {name: i for i, name in enumerate(first) if name}
        rows = rows[1:]
    else:
        columns = {
            n: i for i, n in enumerate(["path", "label", "split"][: max(len(c) for c, _ in rows)])
        }

    def cell(cells: list[str], name: str) -> str | None:
        i = columns.get(name)
        return (cells[i].strip() or None) if i is not None and i < len(cells) else None

    by_cells = {id(cells): kind for kind, _, cells, _ in planned}
    records, skipped = [], []
    for cells, end in rows:
        rel = cell(cells, "path")
        if rel is None:
            skipped.append((f"{manifest}:{end}", f"no path (manifest line {end})"))
            continue
        file = str(Path(rel) if os.path.isabs(rel) else manifest.parent / rel)
        kind = by_cells.get(id(cells))
        if kind is None:  # a data row read as the header cannot happen here
            raise AssertionError(cells)
        reason = KINDS[kind][1] if kind in KINDS else None
        if reason is None:
            key = hashlib.sha256(Path(file).read_bytes()).hexdigest()
            records.append((file, key, cell(cells, "label"), cell(cells, "split")))
        elif kind in ROW_LEVEL:
            skipped.append((file, f"{reason} (manifest line {end})"))
        else:
            skipped.append((file, reason))
    if not records:
        return "error", "no images found"
    # the reader skips rows as it reads them, then names that are not images, then files
    # that cannot be read; each in manifest order
    skipped.sort(key=lambda s: 0 if "manifest line" in s[1] else 1 if "extension" in s[1] else 2)
    return records, skipped, _warnings(records)


def _warnings(records: list[Any]) -> list[str]:
    out = []
    total = len(records)
    no_split = [r for r in records if r[3] is None]
    no_label = [r for r in records if r[2] is None]
    if 0 < len(no_split) < total:
        out.append(
            f"{len(no_split)} of {total} images have no split (e.g. {no_split[0][0]}); a sweep "
            "that uses the splits leaves them out"
        )
    if 0 < len(no_label) < total:
        out.append(f"{len(no_label)} of {total} images have no label (e.g. {no_label[0][0]})")
    return out


_counter = itertools.count()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=manifests())
def test_generated_manifests(spec: dict[str, Any], data: Any) -> None:
    root, sentinel = data
    base = root / f"ex{next(_counter)}"
    base.mkdir()
    manifest = base / "m.csv"
    raw, planned = write_manifest(spec, root / "data", base)
    manifest.write_bytes(raw)
    expected = reference(spec, raw, planned, manifest, root / "data")
    try:
        src = open_source(manifest)
    except FeatureStoreError as exc:
        event(f"error: {expected[1] if expected[0] == 'error' else 'unexpected'}")
        assert isinstance(exc, SourceError)
        assert expected[0] == "error", f"refused by the reader ({exc}), read by the reference"
        assert str(exc).startswith(f"{manifest}: {expected[1]}"), str(exc)
        return
    finally:
        assert sentinel.count() == 0, "the FIFO listed in (or beside) the manifest was opened"
    event("records")
    assert expected[0] != "error", f"read by the reader, refused by the reference: {expected}"
    records, skipped, warnings = expected
    assert [(r.path, r.key, r.label, r.split) for r in src.records] == records
    assert [(s.path, s.reason) for s in src.skipped] == skipped
    assert src.warnings == warnings
