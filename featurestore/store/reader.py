"""Opening store files with their checks, and checked reads of their feature rows.

Every chunk of every dataset is under a checksum and files use the v110 format (checksummed
superblock, object headers and chunk index); string attributes are fixed-length so they live in
the checksummed object header. The small datasets (``keys``, ``features_crc32``) use HDF5's
fletcher32 filter. Format 3's feature rows are stored unfiltered and each chunk's CRC32 is
checked on every read, on worker threads (zlib releases the GIL) while the next block is read;
formats 1-2 leave that to HDF5's fletcher32 filter on the reading thread. Any error HDF5 raises
on a damaged file becomes :class:`StoreCorruptError`, whose message names the damaged file and
how to rebuild (:func:`damaged`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featurestore.errors import StoreCorruptError, StoreError
from featurestore.keys import fingerprint
from featurestore.store.format import CRC, H5_ERRORS, STORED, attr_text, block_rows, crc32
from featurestore.store.identify import require_regular_file
from featurestore.store.journal import VanishedError


def rebuild_hint(store: Path, damaged: Path) -> str:
    """What to do about a damaged file of ``store``: see the damage, delete the file, re-extract."""
    if damaged == store:
        what = f"delete {damaged} (journal parts in {store.stem}.parts/ are kept)"
    else:
        what = f"delete the damaged journal part {damaged}"
    return (
        f"The store is damaged and nothing was appended to it. Run `featurestore verify {store}` "
        f"to see the damage; to rebuild, {what} and run `featurestore extract` again: the rows "
        "it held are extracted anew, every other row is reused"
    )


def damaged(store: Path, where: Path, what: str) -> StoreCorruptError:
    """The error for damage ``what`` found in file ``where`` of ``store``, with the way out."""
    return StoreCorruptError(f"{where}: {what}. {rebuild_hint(store, where)}", file=where)


# ---------------------------------------------------------------------------- opening files
def _check_attrs(f: h5py.File, where: Path, expected: str | None) -> None:
    try:
        spec = json.loads(attr_text(f, "spec"))
        fp = attr_text(f, "fingerprint")
    except H5_ERRORS as exc:
        raise StoreCorruptError(
            f"{where}: missing or unreadable attributes ({exc})", file=where
        ) from exc
    if not isinstance(spec, dict) or fingerprint(spec) != fp:
        raise StoreCorruptError(
            f"{where}: attribute 'spec' does not hash to its fingerprint", file=where
        )
    if expected is not None and fp != expected:
        raise StoreError(
            f"{where} holds fingerprint {fp[:16]}, expected {expected[:16]}; "
            "it belongs to another extractor"
        )
    try:
        n = f["keys"].shape[0]
        n_feat = f["features"].shape[0]
        n_rows = int(f.attrs.get("n_rows", n))
    except H5_ERRORS as exc:
        raise StoreCorruptError(f"{where}: unreadable datasets ({exc})", file=where) from exc
    if n_feat != n or n_rows != n:
        raise StoreCorruptError(
            f"{where}: features has {n_feat} rows, keys {n}, n_rows says {n_rows}", file=where
        )


def open_checked(path: Path, expected: str | None) -> h5py.File:
    """Open store file ``path`` for reading once its datasets and attributes check out (and it
    holds fingerprint ``expected``, unless None). Raises :class:`VanishedError` when the file
    is gone, StoreCorruptError when it is damaged, StoreError when it is another extractor's or
    not a regular file (a FIFO would block the open; a device would be read without end)."""
    try:
        require_regular_file(path)
    except FileNotFoundError as exc:
        raise VanishedError(
            f"{path} disappeared while reading (another process compacted the store); run again"
        ) from exc
    try:
        f = h5py.File(path, "r")
    except H5_ERRORS as exc:
        if not path.exists():  # HDF5 reports a vanished file in several ways
            raise VanishedError(
                f"{path} disappeared while reading (another process compacted the store); run again"
            ) from exc
        raise StoreCorruptError(f"{path}: not a readable HDF5 file ({exc})", file=path) from exc
    try:
        try:
            ok = "features" in f and "keys" in f
        except H5_ERRORS as exc:
            raise StoreCorruptError(f"{path}: unreadable file ({exc})", file=path) from exc
        if not ok:
            raise StoreCorruptError(
                f"{path}: datasets 'features' and 'keys' are required", file=path
            )
        _check_attrs(f, path, expected)
    except BaseException:
        f.close()
        raise
    return f


def read_keys(f: h5py.File, where: Path) -> np.ndarray:
    """Every key of open file ``f`` (file ``where``), as stored."""
    try:
        return f["keys"][...]
    except H5_ERRORS as exc:
        raise StoreCorruptError(f"{where}: keys dataset unreadable ({exc})", file=where) from exc


def chunk_crcs(f: h5py.File, where: Path) -> np.ndarray | None:
    """The CRC32 of each chunk of ``f``'s feature rows (format 3), or None where HDF5's fletcher32
    filter checks them (formats 1-2). Raises StoreCorruptError when neither is there."""
    ds = f["features"]
    if CRC not in f:
        if ds.fletcher32:
            return None
        raise StoreCorruptError(
            f"{where}: the feature rows carry no checksum ({CRC} is missing)", file=where
        )
    crcs = f[CRC][...]
    chunk = int(ds.chunks[0]) if ds.chunks else 0
    if not chunk or crcs.dtype != np.uint32 or crcs.shape != (-(-int(ds.shape[0]) // chunk),):
        raise StoreCorruptError(f"{where}: {CRC} does not match the feature chunks", file=where)
    return crcs


# ---------------------------------------------------------------------------- reading rows
def _is_run(idx: np.ndarray) -> bool:
    """Whether ``idx`` (non-empty) counts up by one: a run of consecutive integers."""
    return int(idx[-1]) - int(idx[0]) == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))


class CheckedRows:
    """Checked reads of one open file's feature rows (file ``where`` of the store at ``store``).

    Formats 1-2: HDF5's fletcher32 filter checks each chunk as it reads it. Format 3: each chunk
    read is compared with its CRC32 (``features_crc32``); a read of several blocks does that on
    worker threads (:class:`CrcChecker`) while the next block is read, so the check costs no
    time on two cores. Format 3's chunks are stored unfiltered, so where HDF5 reports where each
    one lies (``chunk_iter``), whole chunks are read with ``os.preadv`` on HDF5's own file
    descriptor straight into the destination (one system call per chunk, without the GIL);
    otherwise HDF5 reads them. Either way the CRC32 is what vouches for the bytes. Damage raises
    :func:`damaged`.
    """

    def __init__(self, f: h5py.File, where: Path, *, store: Path) -> None:
        self.where, self.store = where, store
        try:
            self.ds = f["features"]
            self.crcs = chunk_crcs(f, where)
            self.n, self.dim = (int(x) for x in self.ds.shape)
            self.chunk = int(self.ds.chunks[0]) if self.ds.chunks else max(1, self.n)
        except StoreCorruptError as exc:
            raise damaged(store, where, str(exc).removeprefix(f"{where}: ")) from exc
        except H5_ERRORS as exc:
            raise damaged(store, where, f"features dataset unreadable ({exc})") from exc
        self.step = block_rows(self.dim, self.chunk)
        self.f = f
        self._layout: tuple[int, np.ndarray] | None = None
        self._layout_known = False

    def _corrupt(self, what: str) -> StoreCorruptError:
        return damaged(self.store, self.where, what)

    def _chunk_layout(self) -> tuple[int, np.ndarray] | None:
        """(file descriptor, byte offset of each chunk) when format-3 chunks can be read with
        plain preads: every chunk stored unfiltered at full size where HDF5's index says, in a
        file opened by HDF5's default driver. None otherwise (HDF5 reads them)."""
        if self._layout_known:
            return self._layout
        self._layout_known = True
        if self.crcs is None or not hasattr(os, "preadv") or not len(self.crcs):
            return None
        if self.ds.dtype != STORED or np.dtype(np.float32) != STORED:  # bytes as they lie
            return None
        offsets = np.full(len(self.crcs), -1, dtype=np.int64)
        full = self.chunk * self.dim * 4
        odd: list[Any] = []

        def visit(info: Any) -> None:
            row, col = info.chunk_offset
            c = row // self.chunk
            if info.filter_mask or info.size != full or col or row % self.chunk:
                odd.append(info)
            elif c >= len(offsets):
                odd.append(info)
            else:
                offsets[c] = info.byte_offset

        try:
            self.ds.id.chunk_iter(visit)
            fd = self.f.id.get_vfd_handle()
            if not isinstance(fd, int) or self.f.driver != "sec2":
                return None
            size = os.fstat(fd).st_size
        except (AttributeError, NotImplementedError, *H5_ERRORS):  # old HDF5, other drivers
            return None
        if odd or (offsets < 0).any() or int(offsets.max()) + full > size:
            return None
        self._layout = (fd, offsets)
        return self._layout

    def _read(self, dest: np.ndarray, lo: int, hi: int, at: int) -> None:
        """Stored rows [lo, hi) into ``dest[at : at + hi - lo]``."""
        layout = self._chunk_layout() if lo % self.chunk == 0 else None
        if layout is not None and (hi == self.n or hi % self.chunk == 0):
            fd, offsets = layout
            for first in range(lo, hi, self.chunk):
                rows = dest[at + first - lo : at + min(first + self.chunk, hi) - lo]
                view = memoryview(rows).cast("B")
                if os.preadv(fd, [view], int(offsets[first // self.chunk])) != len(view):
                    raise self._corrupt(f"feature rows from {first} cut short")
            return
        try:
            self.ds.read_direct(dest, np.s_[lo:hi], np.s_[at : at + hi - lo])
        except H5_ERRORS as exc:
            raise self._corrupt(f"feature rows fail their checksum ({exc})") from exc

    def check(self, block: np.ndarray, lo: int) -> None:
        """Compare stored rows [lo, lo + len(block)) (whole chunks, ``lo`` a chunk's first row)
        as read into ``block`` with their chunks' CRC32s."""
        if self.crcs is None:
            return
        for i in range(0, len(block), self.chunk):
            if crc32(block[i : i + self.chunk]) != int(self.crcs[(lo + i) // self.chunk]):
                first = lo + i
                last = min(first + self.chunk, self.n)
                raise self._corrupt(f"feature rows {first}..{last} fail their CRC32")

    def read_block(self, lo: int, hi: int, buf: np.ndarray | None) -> np.ndarray:
        """Stored rows [lo, hi) (``lo`` a chunk's first row), checked, into ``buf[: hi - lo]``
        (a new array when ``buf`` is None or too short); returns the array used."""
        if buf is None or len(buf) < hi - lo:
            buf = np.empty((hi - lo, self.dim), dtype=np.float32)
        self._read(buf, lo, hi, 0)
        self.check(buf[: hi - lo], lo)
        return buf

    def _blocks(self, src: np.ndarray) -> list[tuple[int, int]]:
        """Row ranges [lo, hi) of whole chunks, about a block each, in file order, that cover
        the stored rows ``src`` (sorted): only the chunks holding wanted rows."""
        per_block = max(1, self.step // self.chunk)
        needed = np.unique(src // self.chunk)  # the chunks holding wanted rows, in file order
        blocks = []
        for run in np.split(needed, np.flatnonzero(np.diff(needed) != 1) + 1):
            last = int(run[-1]) + 1
            for first in range(int(run[0]), last, per_block):
                hi = min(min(first + per_block, last) * self.chunk, self.n)
                blocks.append((first * self.chunk, hi))
        return blocks

    def read_into(self, src: np.ndarray, dst: np.ndarray, out: np.ndarray) -> None:
        """``out[dst[i]] = stored row src[i]`` for every i (``src`` may repeat a row).

        Blocks of about BLOCK_BYTES (whole chunks) in file order: where a whole block lands on
        a run of ``out`` rows (a file read in stored order, the common case) it is read straight
        into ``out``; otherwise the block is read into a scratch buffer and scattered with one
        copy. Only the chunks holding wanted rows are read.
        """
        if not len(src):
            return
        if np.any(src[1:] < src[:-1]):
            order = np.argsort(src, kind="stable")
            src, dst = src[order], dst[order]
        if self.crcs is None and _is_run(src) and _is_run(dst):  # HDF5 checks as it reads
            self._read(out, int(src[0]), int(src[-1]) + 1, int(dst[0]))
            return
        blocks = self._blocks(src)
        with CrcChecker(self, threaded=len(blocks) > 1) as checker:
            for lo, hi in blocks:
                a, b = np.searchsorted(src, (lo, hi))
                rows, to = src[a:b], dst[a:b]
                whole = len(rows) == hi - lo and _is_run(rows)
                if _is_run(rows) and _is_run(to) and (whole or self.crcs is None):
                    at = int(to[0])
                    self._read(out, int(rows[0]), int(rows[-1]) + 1, at)
                    checker.run(self.check, out[at : at + len(rows)], lo)
                    continue
                slot, buf = checker.scratch(hi - lo)
                self._read(buf, lo, hi, 0)
                checker.run(self.check, buf[: hi - lo], lo, slot=slot)
                out[to] = buf[: hi - lo] if whole else buf[rows - lo]


class CrcChecker:
    """Runs :meth:`CheckedRows.check` on worker threads (zlib.crc32 releases the GIL) while the
    next block is read, or inline when not ``threaded``. Two scratch buffers take turns; one is
    reused only once its check is done. A failed check is raised at the latest on leaving the
    ``with`` block, before the caller can return the rows."""

    def __init__(self, rows: CheckedRows, *, threaded: bool) -> None:
        self.rows = rows
        self.pool: ThreadPoolExecutor | None = None
        if threaded and rows.crcs is not None:
            workers = min(4, os.cpu_count() or 1)
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="featurestore-crc")
        self.pending: list[Future[None]] = []
        self.bufs: list[np.ndarray | None] = [None, None]
        self.slot_checks: list[Future[None] | None] = [None, None]
        self.turn = 0

    def __enter__(self) -> CrcChecker:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.pool is None:
            return
        try:
            if exc_type is None:
                for fut in self.pending:
                    fut.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, fn: Callable[..., None], *args: Any, slot: int | None = None) -> None:
        """``fn(*args)`` (a check) on a worker, or inline."""
        if self.pool is None:
            fn(*args)
            return
        fut = self.pool.submit(fn, *args)
        self.pending = [f for f in self.pending if not f.done() or f.exception()] + [fut]
        if slot is not None:
            self.slot_checks[slot] = fut

    def scratch(self, n: int) -> tuple[int, np.ndarray]:
        """A buffer of at least ``n`` rows no check is still reading, and its slot."""
        slot, self.turn = self.turn, 1 - self.turn
        done = self.slot_checks[slot]
        if done is not None:
            done.result()
        buf = self.bufs[slot]
        if buf is None or len(buf) < n:
            buf = self.bufs[slot] = np.empty((n, self.rows.dim), dtype=np.float32)
        return slot, buf
