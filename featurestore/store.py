"""The HDF5 feature store. Imports numpy and h5py only (no torch).

Layout under the cache root, for one extractor fingerprint::

    <backbone>-<fingerprint[:16]>.h5          consolidated rows: datasets `features`, `keys`
    <backbone>-<fingerprint[:16]>.parts/      journal: one complete HDF5 file per written batch
    <backbone>-<fingerprint[:16]>.h5.lock     advisory lock (fcntl.flock) for compaction/reads
    <backbone>-<fingerprint[:16]>.h5.gate     lets a waiting compaction go before new readers

Crash safety rests on one rule: **no HDF5 file is ever modified in place**. A batch is written to
a temporary name inside ``.parts/``, fsynced and renamed into place, so a part file is either
complete or absent. Compaction (under an exclusive lock) copies the consolidated file plus the
parts, dropping duplicate keys, block by block into a temporary file, renames it over the
consolidated file and only then deletes the merged parts. A SIGKILL at any instant therefore
leaves the old good state or the new good state; readers merge the consolidated file with any
parts, first occurrence of a key wins, so a part whose rows were already merged is harmless.

Every chunk of every dataset is under a checksum and files use the v110 format (checksummed
superblock, object headers and chunk index); string attributes are fixed-length so they live in
the checksummed object header, not in HDF5's unchecksummed global heap. The small datasets
(`keys`, `features_crc32`) use HDF5's fletcher32 filter. The feature rows (format 3) are stored
unfiltered and each chunk's CRC32 is kept in `features_crc32`: featurestore checks it on every
read, on worker threads (zlib releases the GIL) while the next block is read, where HDF5's own
fletcher32 ran on the reading thread (2.0 against 3.9 GB/s from the page cache,
`benchmarks/scale.py`). Formats 1-2 (fletcher32 on the features) are still read and are
rewritten as format 3 by the next compaction. A flipped byte anywhere outside unused space is
therefore reported as an error on read instead of returning a wrong number. Any error HDF5
raises on a damaged file becomes :class:`StoreCorruptError`, whose message names the damaged file
and how to rebuild.

HDF5 writes go through :class:`_Sink`, which never lets a write fail under HDF5 (on a full disk
HDF5's own error path crashes the process); the error is raised once HDF5 has finished.

Temporary files left by a killed writer (``.parts/.tmp-<host>-<pid>-*.h5`` and
``.<name>.h5.tmp-*``) are never read; the next compaction deletes them once their writer is gone.
Readers that cannot take the lock (a read-only cache) retry when a file vanishes under them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featurestore.errors import StoreCorruptError, StoreError
from featurestore.keys import KEY_LENGTH, canonical_json, fingerprint

log = logging.getLogger(__name__)

FORMAT = "featurestore-hdf5"
# 3: feature chunks are checked by the CRC32s in `features_crc32` (2: by HDF5's fletcher32
# filter); 2: string attributes are fixed-length UTF-8 bytes (1: variable-length). All are read.
FORMAT_VERSION = 3
_CRC = "features_crc32"
# Feature rows as stored; a chunk's CRC32 is over these bytes, so it holds on any machine.
_STORED = np.dtype("<f4")
KEY_DTYPE = f"S{KEY_LENGTH}"
_TARGET_CHUNK_BYTES = 256 * 1024
_HEX = re.compile(rb"^[0-9a-f]{64}$")
# Compact eagerly while the consolidated file is small; for big stores wait until the journal
# holds a quarter as many rows, so that adding a few images never rewrites gigabytes.
_EAGER_COMPACT_BYTES = 256 * 1024 * 1024
_MAX_PARTS = 256
# check() verifies every feature checksum of a consolidated file up to this size (parts always).
_CHECK_FULL_BYTES = _EAGER_COMPACT_BYTES
# h5py raises these (not only OSError) on damaged files: e.g. RuntimeError for a bad metadata
# checksum, KeyError for a damaged link, ValueError/TypeError for a garbled attribute.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_PART_TMP = re.compile(r"^\.tmp-(?P<host>[A-Za-z0-9_.]*)-(?P<pid>\d+)-[0-9a-f]+\.h5$")
_STALE_TMP_SECONDS = 24 * 3600  # temp files of other hosts (shared cache): age limit
_RETRIES = 5
# Reads that are not one straight run of stored rows, and compaction's copies, go block by block
# (about this many bytes): memory stays bounded whatever the number of rows.
_BLOCK_BYTES = 4 * 1024 * 1024
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class _VanishedError(StoreError):
    """A file listed a moment ago is gone (compacted by another process while we read)."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _is_stale_part_tmp(path: Path) -> bool:
    """A journal temp file whose writer is gone (same host: its pid; else: older than a day)."""
    m = _PART_TMP.match(path.name)
    if m and m["host"] == _HOST:
        return not _pid_alive(int(m["pid"]))
    try:
        return time.time() - path.stat().st_mtime > _STALE_TMP_SECONDS
    except OSError:
        return False


def store_name(backbone: str, fp: str) -> str:
    """File name of the consolidated store for ``backbone`` with fingerprint ``fp``."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", backbone)
    return f"{safe}-{fp[:16]}.h5"


def _chunk_rows(dim: int) -> int:
    return max(1, _TARGET_CHUNK_BYTES // (4 * max(1, dim)))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Sink:
    """The file h5py writes through (its ``fileobj`` driver) that never fails a write.

    HDF5 cannot recover from a failed write: on a full disk its close fails and freeing the
    objects afterwards crashes the process (segfault). So the first OSError is kept, later writes
    are dropped, HDF5 finishes normally, and :func:`_write_file` raises the kept error (the
    caller deletes the half-written temp file).
    """

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w+b", buffering=0)  # closed by _write_file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                done = self.file.write(view)
                while done < n:  # a short write, e.g. when the disk is nearly full
                    done += self.file.write(view[done:])
            except OSError as exc:
                self.error = exc
        return n

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.file.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.file.tell() if size is None else size

    def readinto(self, buf: Any) -> int:
        return self.file.readinto(buf)

    def read(self, n: int = -1) -> bytes:
        return self.file.read(n)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.file.seek(pos, whence)

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        pass  # unbuffered; durability comes from the fsync in _write_file


class _RowWriter:
    """Fills a new file's ``features`` and ``keys`` in order, a block of whole chunks at a time,
    and records the CRC32 of each feature chunk (as stored: float32 rows, C order)."""

    def __init__(self, feats: h5py.Dataset, kds: h5py.Dataset, crc_ds: h5py.Dataset) -> None:
        self.feats, self.kds, self.crc_ds = feats, kds, crc_ds
        self.n, self.dim = int(feats.shape[0]), int(feats.shape[1])
        self.chunk = int(feats.chunks[0])
        self.step = _block_rows(self.dim, self.chunk)
        self.crcs = np.zeros(int(crc_ds.shape[0]), dtype=np.uint32)
        self.done = 0
        self.rows: np.ndarray | None = None  # rows waiting for a whole block
        self.keys = np.empty(0, dtype=KEY_DTYPE)
        self.waiting = 0

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Append ``rows`` (n, dim) under ``keys`` (n,)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        i = 0
        while i < len(rows):
            if not self.waiting and len(rows) - i >= self.step:  # whole block: no copy
                self._write(keys[i : i + self.step], rows[i : i + self.step])
                i += self.step
                continue
            if self.rows is None:
                self.rows = np.empty((self.step, self.dim), dtype=np.float32)
                self.keys = np.empty(self.step, dtype=KEY_DTYPE)
            take = min(self.step - self.waiting, len(rows) - i)
            self.rows[self.waiting : self.waiting + take] = rows[i : i + take]
            self.keys[self.waiting : self.waiting + take] = keys[i : i + take]
            self.waiting += take
            i += take
            if self.waiting == self.step:
                self._flush()

    def _flush(self) -> None:
        if self.waiting and self.rows is not None:
            self._write(self.keys[: self.waiting], self.rows[: self.waiting])
        self.waiting = 0

    def _write(self, keys: np.ndarray, rows: np.ndarray) -> None:
        lo, hi = self.done, self.done + len(rows)
        if hi > self.n:
            raise ValueError(f"{hi} rows written to a file of {self.n}")
        self.feats[lo:hi] = rows
        self.kds[lo:hi] = keys
        for i in range(0, len(rows), self.chunk):  # ``lo`` is a multiple of the chunk
            self.crcs[(lo + i) // self.chunk] = _crc32(rows[i : i + self.chunk])
        self.done = hi

    def finish(self) -> None:
        self._flush()
        if self.done != self.n:
            raise ValueError(f"{self.done} rows written to a file of {self.n}")
        self.crc_ds[...] = self.crcs


def _write_file(
    path: Path,
    n: int,
    dim: int,
    attrs: dict[str, Any],
    fill: Callable[[_RowWriter], None],
) -> None:
    """Write a new file at ``path`` with ``n`` rows of width ``dim``, fsynced: ``fill(writer)``
    adds the keys and rows in order. Raises OSError (e.g. ENOSPC) if any byte could not be
    written."""
    chunk = min(_chunk_rows(dim), max(1, n))
    n_chunks = -(-n // chunk)
    sink = _Sink(path)
    try:
        with h5py.File(sink, "w", libver="v110") as f:
            feats = f.create_dataset(
                "features",
                shape=(n, dim),
                maxshape=(None, dim),
                dtype=_STORED,
                chunks=(chunk, dim),
            )
            kds = f.create_dataset(
                "keys",
                shape=(n,),
                maxshape=(None,),
                dtype=KEY_DTYPE,
                chunks=(max(1, min(n, 4096)),),
                fletcher32=True,
            )
            crc_ds = f.create_dataset(
                _CRC,
                shape=(n_chunks,),
                maxshape=(None,),
                dtype="uint32",
                chunks=(max(1, min(n_chunks, 4096)),),
                fletcher32=True,
            )
            writer = _RowWriter(feats, kds, crc_ds)
            fill(writer)
            writer.finish()
            for name, value in attrs.items():
                f.attrs[name] = _fixed_text(value) if isinstance(value, str) else value
            f.attrs["n_rows"] = n
            f.attrs["feature_dim"] = dim
        if sink.error is None:
            os.fsync(sink.file.fileno())
    except Exception as exc:
        if sink.error is not None:  # HDF5 tripped over the bytes it could not write
            raise sink.error from exc
        raise
    finally:
        sink.file.close()
    if sink.error is not None:
        raise sink.error


def _write_rows(path: Path, keys: np.ndarray, rows: np.ndarray, attrs: dict[str, Any]) -> None:
    """Write ``keys``/``rows`` to a new file at ``path`` (see :func:`_write_file`)."""

    def fill(writer: _RowWriter) -> None:
        writer.add(keys, rows)

    _write_file(path, len(keys), int(rows.shape[1]), attrs, fill)


def _block_rows(dim: int, chunk: int) -> int:
    """Rows per block of a piecewise read or copy: about _BLOCK_BYTES, whole ``chunk``s."""
    return max(1, _BLOCK_BYTES // (4 * max(1, dim) * chunk)) * chunk


def _is_run(idx: np.ndarray) -> bool:
    """Whether ``idx`` (non-empty) counts up by one: a run of consecutive integers."""
    return int(idx[-1]) - int(idx[0]) == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))


def _key_hashes(keys: np.ndarray) -> np.ndarray | None:
    """A 64-bit hash of each fixed-width key; None if the width is not a multiple of 8 bytes."""
    width = keys.dtype.itemsize
    if keys.dtype.kind != "S" or not width or width % 8:
        return None
    words = np.ascontiguousarray(keys).view(np.uint64).reshape(len(keys), width // 8)
    h = np.zeros(len(keys), dtype=np.uint64)
    for col in range(words.shape[1]):
        h ^= words[:, col]
        h *= _HASH_MULTIPLIER
    h ^= h >> np.uint64(29)
    return h


def _first_match(have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Index of the first occurrence in ``have`` of each key of ``want``; -1 where absent.

    Vectorised: sorts ``have`` (stably, so equal keys keep their order and the first one is
    found) and binary-searches ``want`` in it. It sorts 64-bit hashes of the keys, which is much
    faster than sorting the keys, and falls back to the keys when two different keys share a
    hash (every match is checked against the keys themselves).
    """
    found = np.full(len(want), -1, dtype=np.intp)
    if not len(have) or not len(want):
        return found
    tries: list[tuple[np.ndarray, np.ndarray]] = []
    if have.dtype == want.dtype:
        h_have = _key_hashes(have)
        if h_have is not None and len(have) == len(want) and np.array_equal(have, want):
            distinct = np.sort(h_have)  # the keys asked for are the stored ones, in order
            if not np.any(distinct[1:] == distinct[:-1]):
                return np.arange(len(want))
        h_want = _key_hashes(want)
        if h_have is not None and h_want is not None:
            tries.append((h_have, h_want))
    for h_have, h_want in [*tries, (have, want)]:
        order = np.argsort(h_have, kind="stable")
        ordered = h_have[order]
        pos = np.minimum(np.searchsorted(ordered, h_want), len(ordered) - 1)
        hit = ordered[pos] == h_want
        index = order[pos[hit]]
        if np.array_equal(have[index], want[hit]):  # False only on a hash collision
            found[hit] = index
            return found
    raise AssertionError("unreachable: the keys themselves never collide")


def _new_rows(old: np.ndarray, parts: list[np.ndarray]) -> list[np.ndarray]:
    """For each journal part's keys, a mask of the rows compaction adds: keys that are neither in
    ``old`` (the consolidated file) nor earlier in the journal. The first occurrence of a key
    wins, also among duplicates inside one part."""
    every = np.concatenate(parts) if parts else np.empty(0, dtype=KEY_DTYPE)
    keep = _first_match(every, every) == np.arange(len(every))
    if len(old):
        keep &= _first_match(old, every) < 0
    return np.split(keep, np.cumsum([len(k) for k in parts])[:-1])


def _crc32(rows: np.ndarray) -> int:
    """CRC32 of float32 ``rows`` as stored (little-endian; no copy on a little-endian CPU)."""
    return zlib.crc32(np.ascontiguousarray(rows, dtype=_STORED))


def _chunk_crcs(f: h5py.File, where: Path) -> np.ndarray | None:
    """The CRC32 of each chunk of ``f``'s feature rows (format 3), or None where HDF5's fletcher32
    filter checks them (formats 1-2). Raises StoreCorruptError when neither is there."""
    ds = f["features"]
    if _CRC not in f:
        if ds.fletcher32:
            return None
        raise StoreCorruptError(
            f"{where}: the feature rows carry no checksum ({_CRC} is missing)", file=where
        )
    crcs = f[_CRC][...]
    chunk = int(ds.chunks[0]) if ds.chunks else 0
    if not chunk or crcs.dtype != np.uint32 or crcs.shape != (-(-int(ds.shape[0]) // chunk),):
        raise StoreCorruptError(f"{where}: {_CRC} does not match the feature chunks", file=where)
    return crcs


class _Rows:
    """Checked reads of one open file's feature rows.

    Formats 1-2: HDF5's fletcher32 filter checks each chunk as it reads it. Format 3: each chunk
    read is compared with its CRC32 (``features_crc32``); a read of several blocks does that on
    worker threads (:class:`_Checker`) while the next block is read, so the check costs no
    time on two cores. Format 3's chunks are stored unfiltered, so where HDF5 reports where each
    one lies (``chunk_iter``), whole chunks are read with ``os.preadv`` on HDF5's own file
    descriptor straight into the destination (one system call per chunk, without the GIL);
    otherwise HDF5 reads them. Either way the CRC32 is what vouches for the bytes. Damage raises
    ``corrupt(where, what)``.
    """

    def __init__(
        self, f: h5py.File, where: Path, corrupt: Callable[[Path, str], StoreCorruptError]
    ) -> None:
        self.where, self._corrupt = where, corrupt
        try:
            self.ds = f["features"]
            self.crcs = _chunk_crcs(f, where)
            self.n, self.dim = (int(x) for x in self.ds.shape)
            self.chunk = int(self.ds.chunks[0]) if self.ds.chunks else max(1, self.n)
        except StoreCorruptError as exc:
            raise corrupt(where, str(exc).removeprefix(f"{where}: ")) from exc
        except _H5_ERRORS as exc:
            raise corrupt(where, f"features dataset unreadable ({exc})") from exc
        self.step = _block_rows(self.dim, self.chunk)
        self.f = f
        self._layout: tuple[int, np.ndarray] | None = None
        self._layout_known = False

    def _chunk_layout(self) -> tuple[int, np.ndarray] | None:
        """(file descriptor, byte offset of each chunk) when format-3 chunks can be read with
        plain preads: every chunk stored unfiltered at full size where HDF5's index says, in a
        file opened by HDF5's default driver. None otherwise (HDF5 reads them)."""
        if self._layout_known:
            return self._layout
        self._layout_known = True
        if self.crcs is None or not hasattr(os, "preadv") or not len(self.crcs):
            return None
        if self.ds.dtype != _STORED or np.dtype(np.float32) != _STORED:  # bytes as they lie
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
        except (AttributeError, NotImplementedError, *_H5_ERRORS):  # old HDF5, other drivers
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
                    raise self._corrupt(self.where, f"feature rows from {first} cut short")
            return
        try:
            self.ds.read_direct(dest, np.s_[lo:hi], np.s_[at : at + hi - lo])
        except _H5_ERRORS as exc:
            raise self._corrupt(self.where, f"feature rows fail their checksum ({exc})") from exc

    def check(self, block: np.ndarray, lo: int) -> None:
        """Compare stored rows [lo, lo + len(block)) (whole chunks, ``lo`` a chunk's first row)
        as read into ``block`` with their chunks' CRC32s."""
        if self.crcs is None:
            return
        for i in range(0, len(block), self.chunk):
            if _crc32(block[i : i + self.chunk]) != int(self.crcs[(lo + i) // self.chunk]):
                first = lo + i
                last = min(first + self.chunk, self.n)
                raise self._corrupt(self.where, f"feature rows {first}..{last} fail their CRC32")

    def read_block(self, lo: int, hi: int, buf: np.ndarray | None) -> np.ndarray:
        """Stored rows [lo, hi) (``lo`` a chunk's first row), checked, into ``buf[: hi - lo]``
        (a new array when ``buf`` is None or too short); returns the array used."""
        if buf is None or len(buf) < hi - lo:
            buf = np.empty((hi - lo, self.dim), dtype=np.float32)
        self._read(buf, lo, hi, 0)
        self.check(buf[: hi - lo], lo)
        return buf

    def read_into(self, src: np.ndarray, dst: np.ndarray, out: np.ndarray) -> None:
        """``out[dst[i]] = stored row src[i]`` for every i (``src`` may repeat a row).

        Blocks of about _BLOCK_BYTES (whole chunks) in file order: where a whole block lands on
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
        per_block = max(1, self.step // self.chunk)
        needed = np.unique(src // self.chunk)  # the chunks holding wanted rows, in file order
        blocks = []
        for run in np.split(needed, np.flatnonzero(np.diff(needed) != 1) + 1):
            last = int(run[-1]) + 1
            for first in range(int(run[0]), last, per_block):
                hi = min(min(first + per_block, last) * self.chunk, self.n)
                blocks.append((first * self.chunk, hi))
        with _Checker(self, threaded=len(blocks) > 1) as checker:
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


class _Checker:
    """Runs :meth:`_Rows.check` on worker threads (zlib.crc32 releases the GIL) while the next
    block is read, or inline when not ``threaded``. Two scratch buffers take turns; one is
    reused only once its check is done. A failed check is raised at the latest on leaving the
    ``with`` block, before the caller can return the rows."""

    def __init__(self, rows: _Rows, *, threaded: bool) -> None:
        self.rows = rows
        self.pool: ThreadPoolExecutor | None = None
        if threaded and rows.crcs is not None:
            workers = min(4, os.cpu_count() or 1)
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="featurestore-crc")
        self.pending: list[Future[None]] = []
        self.bufs: list[np.ndarray | None] = [None, None]
        self.slot_checks: list[Future[None] | None] = [None, None]
        self.turn = 0

    def __enter__(self) -> _Checker:
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


def _fixed_text(text: str) -> np.ndarray:
    """A string attribute as fixed-length UTF-8 bytes: stored inside the (checksummed) object
    header. h5py's default, a variable-length string, lives in the global heap, which HDF5 does
    not checksum: a flipped byte there can change an attribute or make reading it hang."""
    data = text.encode("utf-8")
    return np.array(data, dtype=f"S{max(1, len(data))}")


def _attr_text(f: h5py.File, name: str, default: str | None = None) -> str:
    """A string attribute, written as fixed-length bytes or (older stores) variable-length."""
    if default is not None and name not in f.attrs:
        return default
    value = f.attrs[name]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"attribute {name!r} is a {type(value).__name__}, not text")
    return value


def _as_key_array(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """Keys as fixed-width ASCII bytes (UnicodeEncodeError for any other character)."""
    if isinstance(keys, np.ndarray):
        return keys.astype(KEY_DTYPE)
    return np.array(keys, dtype=KEY_DTYPE)  # encodes str as ASCII, 15x faster than np.char


@dataclass
class StoreInfo:
    """What a store holds: enough for `featurestore ls` and `info`."""

    path: Path
    fingerprint: str
    backbone: str
    spec: dict[str, Any]
    n_rows: int
    feature_dim: int
    n_parts: int
    size_bytes: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "backbone": self.backbone,
            "spec": self.spec,
            "n_rows": self.n_rows,
            "feature_dim": self.feature_dim,
            "pending_parts": self.n_parts,
            "size_bytes": self.size_bytes,
            "provenance": self.provenance,
        }


class FeatureStore:
    """Rows of one extractor fingerprint: a consolidated HDF5 file plus a journal of parts.

    Use :meth:`for_spec` to get the store of an extractor spec under a cache root, or pass the
    path of an existing ``.h5`` file. Reading never needs write access to the cache directory.
    """

    def __init__(self, path: Path | str, *, spec: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix != ".h5":
            raise StoreError(f"a store path ends in .h5, got {self.path}")
        self.parts_dir = self.path.with_name(self.path.stem + ".parts")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.gate_path = self.path.with_name(self.path.name + ".gate")
        self._depth: dict[int, int] = {}  # shared-lock nesting per thread (see _locked)
        self.spec = spec
        self.fingerprint = fingerprint(spec) if spec is not None else None

    @classmethod
    def for_spec(cls, root: Path | str, spec: dict[str, Any]) -> FeatureStore:
        """The store for ``spec`` (which must name its ``backbone``) under cache root ``root``."""
        fp = fingerprint(spec)
        return cls(Path(root) / store_name(str(spec.get("backbone", "features")), fp), spec=spec)

    # ------------------------------------------------------------------ locking
    def _lock_fd(self, path: Path, *, exclusive: bool) -> int | None:
        """A descriptor to flock ``path`` with; None when a reader cannot open or create it."""
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exclusive:
                raise StoreError(
                    f"cannot write to the cache directory {self.path.parent} ({exc.strerror}); "
                    "make it writable or choose another with --cache-dir / FEATURESTORE_CACHE"
                ) from exc
        try:  # a read-only cache: flock works on a read-only descriptor too
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        """The store's lock: shared for readers, exclusive for compaction.

        Compaction has priority: it takes the gate file exclusively before the lock, and a
        reader passes the gate (shared, for an instant) before taking the lock, so a stream of
        overlapping readers (sweeps) cannot starve a compaction. A reader that cannot open or
        create the files (read-only cache) goes without; readers retry when a file vanishes
        under them (see :meth:`_retrying`). Shared locking is re-entrant per thread: a read
        inside a read takes no second lock (it would queue behind a waiting compaction that
        itself waits for the outer read).
        """
        me = threading.get_ident()
        depth = self._depth.get(me, 0)
        if depth and not exclusive:
            self._depth[me] = depth + 1
            try:
                yield
            finally:
                self._depth[me] = depth
            return
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        fds: list[int] = []
        try:
            gate = self._lock_fd(self.gate_path, exclusive=exclusive)
            if gate is not None:
                fds.append(gate)
                fcntl.flock(gate, mode)
            lock = self._lock_fd(self.lock_path, exclusive=exclusive)
            if lock is not None:
                fds.append(lock)
                fcntl.flock(lock, mode)
            if gate is not None and not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)  # readers only pass through the gate
            self._depth[me] = depth + 1
            yield
        finally:
            self._depth[me] = depth
            for fd in fds:
                os.close(fd)  # closing releases the flock

    # ------------------------------------------------------------------ attributes
    def _attrs(self, provenance: dict[str, Any]) -> dict[str, Any]:
        if self.spec is None:
            raise StoreError(f"{self.path}: writing needs the extractor spec")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "backbone": str(self.spec.get("backbone", "")),
            "spec": canonical_json(self.spec),
            "provenance": json.dumps(provenance, sort_keys=True),
        }

    def _check_attrs(self, f: h5py.File, where: Path) -> None:
        try:
            spec = json.loads(_attr_text(f, "spec"))
            fp = _attr_text(f, "fingerprint")
        except _H5_ERRORS as exc:
            raise StoreCorruptError(
                f"{where}: missing or unreadable attributes ({exc})", file=where
            ) from exc
        if not isinstance(spec, dict) or fingerprint(spec) != fp:
            raise StoreCorruptError(
                f"{where}: attribute 'spec' does not hash to its fingerprint", file=where
            )
        if self.fingerprint is not None and fp != self.fingerprint:
            raise StoreError(
                f"{where} holds fingerprint {fp[:16]}, expected {self.fingerprint[:16]}; "
                "it belongs to another extractor"
            )
        try:
            n = f["keys"].shape[0]
            n_feat = f["features"].shape[0]
            n_rows = int(f.attrs.get("n_rows", n))
        except _H5_ERRORS as exc:
            raise StoreCorruptError(f"{where}: unreadable datasets ({exc})", file=where) from exc
        if n_feat != n or n_rows != n:
            raise StoreCorruptError(
                f"{where}: features has {n_feat} rows, keys {n}, n_rows says {n_rows}", file=where
            )

    def _open(self, path: Path) -> h5py.File:
        try:
            f = h5py.File(path, "r")
        except _H5_ERRORS as exc:
            if not path.exists():  # HDF5 reports a vanished file in several ways
                raise _VanishedError(
                    f"{path} disappeared while reading (another process compacted the "
                    "store); run again"
                ) from exc
            raise StoreCorruptError(f"{path}: not a readable HDF5 file ({exc})", file=path) from exc
        try:
            try:
                ok = "features" in f and "keys" in f
            except _H5_ERRORS as exc:
                raise StoreCorruptError(f"{path}: unreadable file ({exc})", file=path) from exc
            if not ok:
                raise StoreCorruptError(
                    f"{path}: datasets 'features' and 'keys' are required", file=path
                )
            self._check_attrs(f, path)
        except BaseException:
            f.close()
            raise
        return f

    def _read_keys(self, f: h5py.File, where: Path) -> np.ndarray:
        try:
            return f["keys"][...]
        except _H5_ERRORS as exc:
            raise StoreCorruptError(
                f"{where}: keys dataset unreadable ({exc})", file=where
            ) from exc

    def _retrying(self, fn: Any) -> Any:
        """Run ``fn`` again when a file vanished under it (only possible without the lock)."""
        for attempt in range(_RETRIES):
            try:
                return fn()
            except _VanishedError:
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ writing
    def append(
        self, keys: Sequence[str], rows: np.ndarray, *, provenance: dict[str, Any] | None = None
    ) -> Path:
        """Write one batch as a new journal file (atomic rename). Returns its path."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        karr = _as_key_array(keys)
        if rows.ndim != 2 or rows.shape[0] != len(karr):
            raise ValueError(f"rows must be (len(keys), D), got {rows.shape} for {len(karr)} keys")
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._write_error(exc) from exc
        token = uuid.uuid4().hex[:12]
        tmp = self.parts_dir / f".tmp-{_HOST}-{os.getpid()}-{token}.h5"
        final = self.parts_dir / f"part-{time.time_ns():020d}-{os.getpid()}-{token}.h5"
        try:
            _write_rows(tmp, karr, rows, self._attrs(provenance or {}))
            os.replace(tmp, final)
            _fsync_path(self.parts_dir)
        except _H5_ERRORS as exc:  # h5py reports a failed write as any of these
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._write_error(exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return final

    def _write_error(self, exc: Exception) -> StoreError:
        full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)
        what = "the disk is full" if full else getattr(exc, "strerror", None) or str(exc)
        return StoreError(
            f"cannot write to the cache directory {self.path.parent}: {what}. Rows already "
            "written are kept; free space, fix permissions or choose another cache with "
            "--cache-dir / FEATURESTORE_CACHE, then run again to resume"
        )

    def _part_paths(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(self.parts_dir.glob("part-*.h5"))

    def _main_temps(self) -> list[Path]:
        return sorted(self.path.parent.glob(f".{self.path.name}.tmp-*"))

    def _part_temps(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(self.parts_dir.glob(".tmp-*"))

    def _remove_stale_temps(self) -> int:
        """Delete temp files of killed writers. Call only under the exclusive lock."""
        # A consolidated temp file is only ever written under the exclusive lock we hold, so
        # any that exists belongs to a dead compaction; a part temp file is checked per writer.
        stale = self._main_temps() + [t for t in self._part_temps() if _is_stale_part_tmp(t)]
        removed = 0
        for tmp in stale:
            try:
                tmp.unlink()
            except OSError:  # gone already, or a read-only cache: nothing to do
                continue
            removed += 1
            log.info("removed %s, left by an interrupted writer", tmp)
        return removed

    def compact(self, *, force: bool = False) -> int:
        """Merge journal parts into the consolidated file. Returns the number of rows added.

        Runs under the exclusive lock, and also deletes temp files left by killed writers.
        Without ``force`` a large store is only rewritten once the journal holds a quarter as
        many rows as the consolidated file (or many parts). With nothing to merge or clean up
        it returns at once without the lock, so a read-only cache that is complete works.
        """
        if not self._part_paths():
            if self._main_temps() or self._part_temps():
                # Best effort: a read-only cache that holds nothing to merge must still work.
                with contextlib.suppress(StoreError), self._locked(exclusive=True):
                    self._remove_stale_temps()
            return 0
        with self._locked(exclusive=True):
            self._remove_stale_temps()
            parts = self._part_paths()
            if not parts:
                return 0
            main = self._open(self.path) if self.path.exists() else None
            try:
                provenance: dict[str, Any] = {}
                main_keys = np.empty(0, dtype=KEY_DTYPE)
                dim: int | None = None
                if main is not None:
                    main_keys = self._read_keys(main, self.path)
                    provenance = _json_attr(main, "provenance", self.path)
                    dim = int(main["features"].shape[1])
                runs = list(provenance.get("runs", []))
                part_keys: list[np.ndarray] = []  # only the keys: rows are read when copied
                for part in parts:
                    with self._open(part) as pf:
                        part_keys.append(self._read_keys(pf, part))
                        width = int(pf["features"].shape[1])
                        dim = width if dim is None else dim
                        if width != dim:
                            raise self._corrupt(part, f"width {width} != {dim}")
                        run = _json_attr(pf, "provenance", part)
                        if run and run not in runs:
                            runs.append(run)
                part_rows = sum(len(k) for k in part_keys)
                main_rows = len(main_keys)
                size = self.path.stat().st_size if main is not None else 0
                lazy = size > _EAGER_COMPACT_BYTES and part_rows * 4 < main_rows
                if not force and lazy and len(parts) < _MAX_PARTS:
                    return 0
                keep = _new_rows(main_keys, part_keys)
                added = sum(int(k.sum()) for k in keep)
                if added:
                    provenance = {**provenance, "runs": runs[-100:]}
                    provenance.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                    attrs = self._attrs(provenance)
                    tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}")
                    plan = list(zip(parts, part_keys, keep, strict=True))

                    def fill(writer: _RowWriter) -> None:
                        self._merge_into(writer, main, main_keys, plan)

                    try:
                        _write_file(tmp, main_rows + added, int(dim or 0), attrs, fill)
                        os.replace(tmp, self.path)
                        _fsync_path(self.path.parent)
                    except StoreError:  # a damaged file (StoreCorruptError), found as copied
                        with contextlib.suppress(OSError):
                            tmp.unlink()
                        raise
                    except _H5_ERRORS as exc:  # h5py reports a failed write as any of these
                        with contextlib.suppress(OSError):
                            tmp.unlink()
                        raise self._write_error(exc) from exc
                    except BaseException:
                        with contextlib.suppress(OSError):
                            tmp.unlink()
                        raise
            finally:
                if main is not None:
                    main.close()
            for part in parts:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
            return added

    def _merge_into(
        self,
        writer: _RowWriter,
        main: h5py.File | None,
        main_keys: np.ndarray,
        parts: list[tuple[Path, np.ndarray, np.ndarray]],
    ) -> None:
        """Write compaction's rows into its new file: the consolidated file's rows (if any, under
        ``main_keys``), then the kept rows (``(path, keys, keep mask)``) of each journal part,
        block by block, so that memory stays at about a block however many rows are merged.
        Every block is checked as it is read: a damaged file raises StoreCorruptError."""
        buf: np.ndarray | None = None
        if main is not None:
            rows = _Rows(main, self.path, self._corrupt)
            keys = main_keys
            for start in range(0, rows.n, rows.step):
                stop = min(rows.n, start + rows.step)
                buf = rows.read_block(start, stop, buf)
                writer.add(keys[start:stop], buf[: stop - start])
        for part, pkeys, keep in parts:
            if not keep.any():
                continue  # every row already merged: its rows are not even read
            with self._open(part) as pf:
                rows = _Rows(pf, part, self._corrupt)
                for start in range(0, rows.n, rows.step):
                    stop = min(rows.n, start + rows.step)
                    # every block, even one without new rows: checks the whole part
                    buf = rows.read_block(start, stop, buf)
                    mask = keep[start:stop]
                    block = buf[: stop - start]
                    writer.add(pkeys[start:stop][mask], block if mask.all() else block[mask])

    def _verify_features(self, f: h5py.File, where: Path) -> None:
        try:
            bad = _unreadable_chunks(f["features"], _chunk_crcs(f, where))
        except StoreCorruptError as exc:
            raise self._corrupt(where, str(exc).removeprefix(f"{where}: ")) from exc
        except _H5_ERRORS as exc:
            raise self._corrupt(where, f"features dataset unreadable ({exc})") from exc
        if bad:
            raise self._corrupt(
                where,
                f"{len(bad)} feature chunk(s) fail their checksum (rows {bad[0][0]}..{bad[0][1]} "
                "first)",
            )

    def _corrupt(self, where: Path, what: str) -> StoreCorruptError:
        return StoreCorruptError(f"{where}: {what}. {rebuild_hint(self.path, where)}", file=where)

    # ------------------------------------------------------------------ reading
    def check(self) -> None:
        """Health check before appending: raises :class:`StoreCorruptError` if damaged.

        Every file must open with valid attributes and readable keys; every journal part and a
        consolidated file up to 256 MiB must also pass every feature chunk's checksum (a larger
        one is checked in full when compaction copies it). The error names the damaged file and
        says how to rebuild.
        """

        def run() -> None:
            with self._locked(exclusive=False):
                for path in self._sources():
                    with self._open(path) as f:
                        self._read_keys(f, path)
                        if path != self.path or path.stat().st_size <= _CHECK_FULL_BYTES:
                            self._verify_features(f, path)

        try:
            self._retrying(run)
        except StoreCorruptError as exc:
            msg = str(exc)
            if exc.file is not None and "featurestore verify" not in msg:
                msg = f"{msg}. {rebuild_hint(self.path, exc.file)}"
            raise StoreCorruptError(msg, file=exc.file) from exc

    def keys(self) -> set[str]:
        """Every key held, consolidated or in the journal."""

        def run() -> set[str]:
            out: set[str] = set()
            with self._locked(exclusive=False):
                for path in self._sources():
                    with self._open(path) as f:
                        out.update(k.decode() for k in self._read_keys(f, path).tolist())
            return out

        return self._retrying(run)

    def _sources(self) -> list[Path]:
        return ([self.path] if self.path.exists() else []) + self._part_paths()

    def read(self, keys: Sequence[str]) -> np.ndarray:
        """Rows for ``keys`` in that order, as float32 (n, D). Raises KeyError for missing keys."""
        want = _as_key_array(keys)
        return self._retrying(lambda: self._read_locked(want))

    def _read_locked(self, want: np.ndarray) -> np.ndarray:
        out: np.ndarray | None = None
        pending = np.arange(len(want))  # positions in ``want`` not found in an earlier file
        dim: int | None = None
        with self._locked(exclusive=False):
            for path in self._sources():
                if not len(pending) and dim is not None:
                    break
                with self._open(path) as f:
                    ds = f["features"]
                    dim = int(ds.shape[1]) if dim is None else dim
                    if ds.shape[1] != dim:
                        raise StoreCorruptError(f"{path}: width {ds.shape[1]} != {dim}", file=path)
                    src = _first_match(self._read_keys(f, path), want[pending])
                    hit = src >= 0
                    if not hit.any():
                        continue
                    if out is None:
                        out = np.empty((len(want), dim), dtype=np.float32)
                    _Rows(f, path, self._corrupt).read_into(src[hit], pending[hit], out)
                    pending = pending[~hit]
        if len(pending):
            raise KeyError(f"{len(pending)} of {len(want)} keys are not in {self.path.name}")
        if out is None:
            return np.empty((0, dim or 0), dtype=np.float32)
        return out

    def read_all(self) -> tuple[list[str], np.ndarray]:
        """Every (key, row) pair, sorted by key, duplicates dropped (the first occurrence wins:
        the consolidated file's row, else the earliest journal part's)."""

        def run() -> tuple[list[str], np.ndarray]:
            with self._locked(exclusive=False):  # one consistent snapshot for keys and rows
                return self._read_all_locked()

        return self._retrying(run)

    def _read_all_locked(self) -> tuple[list[str], np.ndarray]:
        files: list[tuple[Path, np.ndarray]] = []
        dim: int | None = None
        for path in self._sources():
            with self._open(path) as f:
                files.append((path, self._read_keys(f, path)))
                width = int(f["features"].shape[1])
                dim = width if dim is None else dim
                if width != dim:
                    raise StoreCorruptError(f"{path}: width {width} != {dim}", file=path)
        if not files:
            return [], np.empty((0, 0), dtype=np.float32)
        every = np.concatenate([k for _, k in files])
        if len(files) == 1 and np.all(every[1:] > every[:-1]):  # sorted, no duplicates
            keys, origin = every, np.arange(len(every))
        else:  # sort; of equal keys (kept in file order by the stable sort) the first wins
            order = np.argsort(every, kind="stable")
            ordered = every[order]
            first = np.ones(len(ordered), dtype=bool)
            first[1:] = ordered[1:] != ordered[:-1]
            keys, origin = ordered[first], order[first]
        out = np.empty((len(keys), dim or 0), dtype=np.float32)
        start = 0
        for path, fkeys in files:
            stop = start + len(fkeys)
            dst = np.flatnonzero((origin >= start) & (origin < stop))
            if len(dst):
                with self._open(path) as f:
                    if not np.array_equal(self._read_keys(f, path), fkeys):
                        raise _VanishedError(f"{path} was replaced while reading; run again")
                    _Rows(f, path, self._corrupt).read_into(origin[dst] - start, dst, out)
            start = stop
        return [k.decode() for k in keys.tolist()], out

    def feature_dim(self) -> int | None:
        def run() -> int | None:
            with self._locked(exclusive=False):
                for path in self._sources():
                    with self._open(path) as f:
                        return int(f["features"].shape[1])
            return None

        return self._retrying(run)

    def info(self) -> StoreInfo:
        """Summary of the store (consolidated rows plus journal parts)."""

        def run() -> StoreInfo:
            with self._locked(exclusive=False):
                sources = self._sources()
                if not sources:
                    raise StoreError(f"no store at {self.path}")
                with self._open(sources[0]) as f:
                    spec = json.loads(_attr_text(f, "spec"))
                    fp = _attr_text(f, "fingerprint")
                    dim = int(f["features"].shape[1])
                    prov = _json_attr(f, "provenance", sources[0])
                n_parts = len(self._part_paths())
                size = sum(p.stat().st_size for p in sources)
                n_rows = len(self.keys())
            return StoreInfo(
                path=self.path,
                fingerprint=fp,
                backbone=str(spec.get("backbone", "")),
                spec=spec,
                n_rows=n_rows,
                feature_dim=dim,
                n_parts=n_parts,
                size_bytes=size,
                provenance=prov,
            )

        return self._retrying(run)


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


def _json_attr(f: h5py.File, name: str, where: Path) -> dict[str, Any]:
    try:
        value = json.loads(_attr_text(f, name, "{}"))
    except _H5_ERRORS as exc:
        raise StoreCorruptError(
            f"{where}: attribute {name!r} unreadable ({exc})", file=where
        ) from exc
    if not isinstance(value, dict):
        raise StoreCorruptError(f"{where}: attribute {name!r} is not a JSON object", file=where)
    return value


def _unreadable_chunks(ds: h5py.Dataset, crcs: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Row ranges of ``ds`` whose chunks fail to read (checksum or I/O errors) or, given the
    chunks' ``crcs``, fail their CRC32."""
    bad = []
    step = ds.chunks[0] if ds.chunks else max(1, ds.shape[0])
    for start in range(0, ds.shape[0], step):
        stop = min(ds.shape[0], start + step)
        try:
            block = ds[start:stop]
        except _H5_ERRORS:
            bad.append((start, stop))
            continue
        if crcs is not None and _crc32(block) != int(crcs[start // step]):
            bad.append((start, stop))
    return bad


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
    """Check a store fully: attributes, shapes, every chunk's checksum, keys, duplicates.

    Runs under the shared lock, so a compaction running meanwhile is never mistaken for damage.
    """
    try:
        store = FeatureStore(path)
    except StoreError as exc:
        report = VerifyReport(path=Path(path))
        report.problems.append(str(exc))
        return report
    for attempt in range(_RETRIES):
        report = VerifyReport(path=store.path)
        try:
            with store._locked(exclusive=False):
                _verify_into(store, report)
            return report
        except _VanishedError:
            if attempt == _RETRIES - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _verify_into(store: FeatureStore, report: VerifyReport) -> None:
    sources = store._sources()
    if not sources:
        report.problems.append(f"no store at {store.path} (and no journal parts)")
        return
    all_keys: list[bytes] = []
    fps: set[str] = set()
    for src in sources:
        report.files_checked += 1
        try:
            f = store._open(src)
        except _VanishedError:
            raise
        except StoreError as exc:
            report.problems.append(str(exc))
            continue
        with f:
            try:
                fps.add(_attr_text(f, "fingerprint"))
                width = int(f["features"].shape[1])
                report.feature_dim = report.feature_dim or width
                if width != report.feature_dim:
                    report.problems.append(f"{src}: width {width} differs")
                crcs = _chunk_crcs(f, src)
                for name, sums in (("features", crcs), ("keys", None)):
                    for start, stop in _unreadable_chunks(f[name], sums):
                        report.problems.append(f"{src}: {name} rows {start}..{stop} unreadable")
                keys = f["keys"][...].tolist()
            except _H5_ERRORS as exc:
                report.problems.append(f"{src}: unreadable ({exc})")
                continue
            bad = [k for k in keys if not _HEX.match(k)]
            if bad:
                report.problems.append(f"{src}: {len(bad)} malformed key(s)")
            if src == store.path and len(set(keys)) != len(keys):
                report.problems.append(
                    f"{src}: {len(keys) - len(set(keys))} duplicate key(s) in consolidated rows"
                )
            all_keys.extend(keys)
    if len(fps) > 1:
        report.problems.append(f"files disagree on the fingerprint: {sorted(fps)}")
    report.n_rows = len(set(all_keys))
    stale = store._main_temps() + store._part_temps()
    if stale:
        log.info(
            "%d temporary file(s) of interrupted or running writers next to %s (never "
            "read; the next compaction deletes those whose writer is gone)",
            len(stale),
            store.path,
        )


def list_stores(root: Path | str) -> list[StoreInfo]:
    """Every store under cache root ``root``, sorted by file name."""
    root = Path(root)
    if not root.is_dir():
        return []
    paths = {p for p in root.glob("*.h5")}
    paths.update(d.with_name(d.name[: -len(".parts")] + ".h5") for d in root.glob("*.parts"))
    infos = []
    for path in sorted(paths):
        try:
            infos.append(FeatureStore(path).info())
        except StoreError as exc:
            log.warning("skipping %s: %s", path, exc)
    return infos
