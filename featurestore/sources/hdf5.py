"""Reading an HDF5 file without leaving it: opening it read-only, reaching its objects link by
link, and refusing any object whose bytes live elsewhere, before a byte of it is read.

An HDF5 file can point at other files in four ways, and a source reads only its own file:

* an **external link** (``f["x"] = h5py.ExternalLink("other.h5", "/x")``): never followed;
* **external raw storage** (``create_dataset(..., external=[("/etc/passwd", 0, n)])``): the
  dataset's creation property list names the files; refused;
* a **virtual dataset** (VDS) mapping another file: refused; one mapping datasets of the same
  file is read when each of those datasets passes the same checks;
* a **soft link** is a path inside the file: followed (at most :data:`MAX_LINK_HOPS` links), so
  a link that leads nowhere or in a circle is refused with its name, never a crash.

A dataset whose storage was never (or only partly) written reads as its fill value; the images
it would give are reported by :func:`unwritten_runs`, not read.

h5py is imported only when an HDF5 source is read.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.decode import file_type
from featurestore.errors import SourceError

MAX_LINK_HOPS = 16  # soft links followed to reach one object (HDF5's own default limit)


class Refused(SourceError):
    """An HDF5 file or object a source will not read; ``where`` is the file (``x.h5``) or the
    object (``x.h5::name``) and ``reason`` says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def open_file(path: Path) -> Any:
    """``h5py.File(path, "r")`` for a regular file that HDF5 can read; :class:`Refused` for a
    folder, FIFO or device (never opened), a missing or unreadable file, or one that is not
    HDF5 (or is damaged)."""
    import h5py

    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise Refused(str(path), f"cannot read: {_strerror(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise Refused(str(path), f"not a regular file ({file_type(st.st_mode)})")
    try:
        # best-effort: a read-only share without file locks (NFS) is still readable
        return h5py.File(path, "r", locking="best-effort")
    except (OSError, RuntimeError, ValueError) as exc:
        raise Refused(str(path), f"not a readable HDF5 file ({_strerror(exc)})") from exc


def _strerror(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)


def lookup(f: Any, name: str) -> Any:
    """The object (dataset or group) at ``name`` in the open file ``f``, reached one link at a
    time: hard links are entered, soft links followed inside the file, and anything else
    refused (:class:`Refused` naming ``file::name``): an external or user-defined link, a
    missing object, a soft link that leads nowhere or in a circle."""
    where = f"{f.filename}::{name}"
    hops = [0]
    return _walk(f, name, where, hops)


def _walk(f: Any, path: str, where: str, hops: list[int]) -> Any:
    import h5py

    obj = f["/"]
    parts = [p for p in path.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        here = "/" + "/".join(parts[:i])
        if not isinstance(obj, h5py.Group):
            raise Refused(where, f"{here} is a dataset, not a group holding {part!r}")
        try:
            link = obj.get(part, getlink=True)
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            raise Refused(where, f"cannot read the link {part!r} in {here} ({exc})") from exc
        if link is None:
            what = f"no dataset {part!r}" if here == "/" else f"no object {part!r} in {here}"
            raise Refused(where, what + _names_hint(obj))
        if isinstance(link, h5py.ExternalLink):
            raise Refused(
                where,
                f"external link to {link.filename}:{link.path} (not followed: a source reads "
                "only its own file)",
            )
        if isinstance(link, h5py.SoftLink):
            hops[0] += 1
            if hops[0] > MAX_LINK_HOPS:
                raise Refused(where, f"soft links go round in a circle (over {MAX_LINK_HOPS})")
            target = link.path if link.path.startswith("/") else f"{here}/{link.path}"
            obj = _walk(f, target, where, hops)
        elif isinstance(link, h5py.HardLink):
            try:
                obj = obj[part]
            except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
                raise Refused(where, f"cannot open {part!r} in {here} ({exc})") from exc
        else:
            raise Refused(where, f"a link of unknown kind ({type(link).__name__}): not followed")
    return obj


def _names_hint(group: Any) -> str:
    try:
        names = sorted(group)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError):
        return ""
    return f"; has {names[:20]}" + (" ..." if len(names) > 20 else "")


def check_inside(f: Any, dataset: Any, where: str, *, depth: int = 0) -> None:
    """Refuse (:class:`Refused`) a dataset whose bytes live outside ``f``: external raw
    storage, or a virtual dataset mapping another file (or a dataset of this file that fails
    this same check). Reads only the dataset's creation property list."""
    import h5py

    plist = dataset.id.get_create_plist()
    if plist.get_external_count():
        name = os.fsdecode(plist.get_external(0)[0])
        raise Refused(
            where,
            f"raw data stored outside the file (external storage in {name!r}): a source reads "
            "only its own file",
        )
    if plist.get_layout() != h5py.h5d.VIRTUAL:
        return
    for i in range(plist.get_virtual_count()):
        file_name = plist.get_virtual_filename(i)
        source = plist.get_virtual_dsetname(i)
        if file_name != ".":
            raise Refused(
                where,
                f"virtual dataset mapping {file_name}:{source} (another file): a source reads "
                "only its own file",
            )
        if "%" in source or depth >= MAX_LINK_HOPS:
            raise Refused(where, f"virtual dataset mapping {source!r}: not followed")
        inner = lookup(f, source)
        if not isinstance(inner, h5py.Dataset):
            raise Refused(where, f"virtual dataset mapping {source!r}, which is not a dataset")
        places = plist.get_virtual_vspace(i).get_select_npoints()
        src_space = plist.get_virtual_srcspace(i)
        whole = src_space.get_select_type() == h5py.h5s.SEL_ALL
        values = inner.size if whole else src_space.get_select_npoints()
        if values != places:
            raise Refused(
                where,
                f"virtual dataset mapping {values} values of {source!r} onto {places} places",
            )
        check_inside(f, inner, where, depth=depth + 1)


def unwritten_runs(dataset: Any, *, depth: int = 0) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of the first axis whose storage was never written (they would
    read as the fill value): all of it for contiguous storage never allocated, the rows of
    every chunk row missing a chunk for chunked storage, and all of a virtual dataset that
    leaves part of itself unmapped or maps a dataset (of this file, see :func:`check_inside`)
    not wholly written. Compact datasets: none."""
    import h5py

    n = dataset.shape[0] if dataset.shape else 1
    if dataset.size == 0:
        return []
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        count = plist.get_virtual_count()
        mapped = sum(plist.get_virtual_vspace(i).get_select_npoints() for i in range(count))
        if mapped < dataset.size or depth >= MAX_LINK_HOPS:
            return [(0, n)]
        for i in range(count):
            source = lookup(dataset.file, plist.get_virtual_dsetname(i))
            if unwritten_runs(source, depth=depth + 1):
                return [(0, n)]
        return []
    if layout == h5py.h5d.CONTIGUOUS:
        return [(0, n)] if dataset.id.get_storage_size() == 0 else []
    if layout != h5py.h5d.CHUNKED:
        return []
    chunks = dataset.chunks
    rows = math.ceil(n / chunks[0])
    grid = zip(dataset.shape[1:], chunks[1:], strict=True)
    per_row = math.prod(math.ceil(s / c) for s, c in grid)
    stored_chunks = dataset.id.get_num_chunks()
    if stored_chunks == rows * per_row:
        return []
    if stored_chunks == 0:
        return [(0, n)]
    stored = np.zeros(rows, np.int64)

    def count(info: Any) -> None:
        stored[info.chunk_offset[0] // chunks[0]] += 1

    dataset.id.chunk_iter(count)
    runs: list[tuple[int, int]] = []
    for row in np.flatnonzero(stored < per_row).tolist():
        start, stop = row * chunks[0], min(n, (row + 1) * chunks[0])
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs
