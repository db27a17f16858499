"""The store's file format: layout constants, dtypes, chunk sizing, CRC32s, attributes, and the
writers of new files (format 3) and of the older formats still read (1-2, for tests and
benchmarks).

One store file (consolidated or journal part) holds, in HDF5's v110 format:

* ``features`` (N, D) little-endian float32, chunked by whole rows (about 256 KiB a chunk),
  resizable (``maxshape=(None, D)``). Format 3: unfiltered; formats 1-2: HDF5's fletcher32.
* ``keys`` (N,) fixed-width ASCII (sha256 hex digests), fletcher32.
* ``features_crc32`` (format 3 only): the CRC32 of each feature chunk as stored, fletcher32.
* attributes ``format``, ``format_version``, ``fingerprint``, ``backbone``, ``spec`` (canonical
  JSON), ``provenance`` (JSON), ``n_rows``, ``feature_dim``. Formats 2-3 store strings as
  fixed-length UTF-8 bytes (inside the checksummed object header); format 1 as variable-length
  strings (HDF5's unchecksummed global heap).

HDF5 writes go through :class:`Sink`, which never lets a write fail under HDF5 (on a full disk
HDF5's own error path crashes the process); the error is raised once HDF5 has finished.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featurestore.errors import StoreCorruptError
from featurestore.keys import KEY_LENGTH, canonical_json, fingerprint

FORMAT = "featurestore-hdf5"
# 3: feature chunks are checked by the CRC32s in `features_crc32` (2: by HDF5's fletcher32
# filter); 2: string attributes are fixed-length UTF-8 bytes (1: variable-length). All are read.
FORMAT_VERSION = 3
LEGACY_FORMATS = (1, 2)
CRC = "features_crc32"
# Feature rows as stored; a chunk's CRC32 is over these bytes, so it holds on any machine.
STORED = np.dtype("<f4")
KEY_DTYPE = f"S{KEY_LENGTH}"
TARGET_CHUNK_BYTES = 256 * 1024
# Reads that are not one straight run of stored rows, and compaction's copies, go block by block
# (about this many bytes): memory stays bounded whatever the number of rows.
BLOCK_BYTES = 4 * 1024 * 1024
# h5py raises these (not only OSError) on damaged files: e.g. RuntimeError for a bad metadata
# checksum, KeyError for a damaged link, ValueError/TypeError for a garbled attribute.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def chunk_rows(dim: int) -> int:
    """Rows per feature chunk of a file of width ``dim`` (about TARGET_CHUNK_BYTES)."""
    return max(1, TARGET_CHUNK_BYTES // (4 * max(1, dim)))


def block_rows(dim: int, chunk: int) -> int:
    """Rows per block of a piecewise read or copy: about BLOCK_BYTES, whole ``chunk``s."""
    return max(1, BLOCK_BYTES // (4 * max(1, dim) * chunk)) * chunk


def crc32(rows: np.ndarray) -> int:
    """CRC32 of float32 ``rows`` as stored (little-endian; no copy on a little-endian CPU)."""
    return zlib.crc32(np.ascontiguousarray(rows, dtype=STORED))


def nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """Indices of the rows of (n, D) ``rows`` that hold NaN or an infinity (featurestore never
    stores those: they are not features, and every head fails on them or learns nothing)."""
    finite = np.isfinite(rows)
    if finite.all():
        return np.empty(0, dtype=np.intp)
    return np.flatnonzero(~finite.reshape(len(rows), -1).all(axis=1))


def fixed_text(text: str) -> np.ndarray:
    """A string attribute as fixed-length UTF-8 bytes: stored inside the (checksummed) object
    header. h5py's default, a variable-length string, lives in the global heap, which HDF5 does
    not checksum: a flipped byte there can change an attribute or make reading it hang."""
    data = text.encode("utf-8")
    return np.array(data, dtype=f"S{max(1, len(data))}")


def attr_text(f: h5py.File, name: str, default: str | None = None) -> str:
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


def json_attr(f: h5py.File, name: str, where: Path) -> dict[str, Any]:
    """A JSON-object attribute (``{}`` when absent); StoreCorruptError when it is not one."""
    try:
        value = json.loads(attr_text(f, name, "{}"))
    except H5_ERRORS as exc:
        raise StoreCorruptError(
            f"{where}: attribute {name!r} unreadable ({exc})", file=where
        ) from exc
    if not isinstance(value, dict):
        raise StoreCorruptError(f"{where}: attribute {name!r} is not a JSON object", file=where)
    return value


def store_attrs(spec: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a new file holding rows of extractor ``spec`` (format 3)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint(spec),
        "backbone": str(spec.get("backbone", "")),
        "spec": canonical_json(spec),
        "provenance": json.dumps(provenance, sort_keys=True),
    }


class Sink:
    """The file h5py writes through (its ``fileobj`` driver) that never fails a write.

    HDF5 cannot recover from a failed write: on a full disk its close fails and freeing the
    objects afterwards crashes the process (segfault). So the first OSError is kept, later writes
    are dropped, HDF5 finishes normally, and :func:`write_file` raises the kept error (the
    caller deletes the half-written temp file).
    """

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w+b", buffering=0)  # closed by write_file
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
        pass  # unbuffered; durability comes from the fsync in write_file


class RowWriter:
    """Fills a new file's ``features`` and ``keys`` in order, a block of whole chunks at a time,
    and records the CRC32 of each feature chunk (as stored: float32 rows, C order)."""

    def __init__(self, feats: h5py.Dataset, kds: h5py.Dataset, crc_ds: h5py.Dataset) -> None:
        self.feats, self.kds, self.crc_ds = feats, kds, crc_ds
        self.n, self.dim = int(feats.shape[0]), int(feats.shape[1])
        self.chunk = int(feats.chunks[0])
        self.step = block_rows(self.dim, self.chunk)
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
            self.crcs[(lo + i) // self.chunk] = crc32(rows[i : i + self.chunk])
        self.done = hi

    def finish(self) -> None:
        self._flush()
        if self.done != self.n:
            raise ValueError(f"{self.done} rows written to a file of {self.n}")
        self.crc_ds[...] = self.crcs


def write_file(
    path: Path,
    n: int,
    dim: int,
    attrs: dict[str, Any],
    fill: Callable[[RowWriter], None],
) -> None:
    """Write a new file at ``path`` with ``n`` rows of width ``dim``, fsynced: ``fill(writer)``
    adds the keys and rows in order. Raises OSError (e.g. ENOSPC) if any byte could not be
    written."""
    chunk = min(chunk_rows(dim), max(1, n))
    n_chunks = -(-n // chunk)
    sink = Sink(path)
    try:
        with h5py.File(sink, "w", libver="v110") as f:
            feats = f.create_dataset(
                "features",
                shape=(n, dim),
                maxshape=(None, dim),
                dtype=STORED,
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
                CRC,
                shape=(n_chunks,),
                maxshape=(None,),
                dtype="uint32",
                chunks=(max(1, min(n_chunks, 4096)),),
                fletcher32=True,
            )
            writer = RowWriter(feats, kds, crc_ds)
            fill(writer)
            writer.finish()
            for name, value in attrs.items():
                f.attrs[name] = fixed_text(value) if isinstance(value, str) else value
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


def write_rows(path: Path, keys: np.ndarray, rows: np.ndarray, attrs: dict[str, Any]) -> None:
    """Write ``keys``/``rows`` to a new file at ``path`` (see :func:`write_file`)."""

    def fill(writer: RowWriter) -> None:
        writer.add(keys, rows)

    write_file(path, len(keys), int(rows.shape[1]), attrs, fill)


def write_legacy(
    path: Path | str,
    keys: Sequence[str] | np.ndarray,
    rows: Any,
    *,
    format_version: int,
    spec: dict[str, Any],
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a store file of an older format (1 or 2), laid out as featurestore wrote them.

    For tests and benchmarks that check that old stores are still read, verified and rewritten
    as format 3 by the next compaction. Both formats check the feature chunks with HDF5's
    fletcher32 filter and have no ``features_crc32``; format 1 stores string attributes as
    variable-length strings, format 2 as fixed-length UTF-8 bytes. Chunks, resizable shapes and
    the other attributes are those of format 3.

    ``rows`` is (len(keys), D) float32, or anything that slices like it (an h5py dataset): it is
    copied a block at a time, so memory stays bounded. The file is written in place (not
    atomically, not fsynced). Returns ``path``.
    """
    if format_version not in LEGACY_FORMATS:
        raise ValueError(f"format_version must be one of {LEGACY_FORMATS}, got {format_version}")
    path = Path(path)
    karr = np.asarray(keys).astype(KEY_DTYPE)
    n, dim = (int(x) for x in rows.shape)
    if n != len(karr):
        raise ValueError(f"rows must be (len(keys), D), got {rows.shape} for {len(karr)} keys")
    chunk = min(chunk_rows(dim), max(1, n))
    attrs = {**store_attrs(spec, provenance or {}), "format_version": format_version}
    with h5py.File(path, "w", libver="v110") as f:
        feats = f.create_dataset(
            "features",
            shape=(n, dim),
            maxshape=(None, dim),
            dtype="float32",
            chunks=(chunk, dim),
            fletcher32=True,
        )
        step = block_rows(dim, chunk)
        for lo in range(0, n, step):
            feats[lo : lo + step] = np.asarray(rows[lo : lo + step], dtype=np.float32)
        f.create_dataset(
            "keys", data=karr, maxshape=(None,), chunks=(max(1, min(n, 4096)),), fletcher32=True
        )
        for name, value in attrs.items():
            text = isinstance(value, str) and format_version > 1
            f.attrs[name] = fixed_text(value) if text else value
        f.attrs["n_rows"] = n
        f.attrs["feature_dim"] = dim
    return path
