"""The HDF5 feature store. Imports numpy and h5py only (no torch).

One store per extractor fingerprint: a consolidated HDF5 file plus a journal of part files, one
per written batch, under an advisory lock. One concept per module:

* :mod:`.format`: the file layout (format 3), dtypes, chunk sizing, CRC32s, attributes, the
  writers of new files, and :func:`write_legacy` for files of formats 1-2 (still read, and
  rewritten as format 3 by the next compaction).
* :mod:`.keymatch`: keys as stored, and matching keys between files (first occurrence wins).
* :mod:`.journal`: the files on disk (parts, temporary files and their cleanup), writing a
  part, the lock and the gate, and :meth:`Journal.shared`, the lock-and-retry every read uses.
* :mod:`.reader`: opening a file with its checks, checked reads of its feature rows.
* :mod:`.lookup`: reading the store (consolidated file and parts as one set of rows).
* :mod:`.compaction`: merging the journal into the consolidated file, crash-safely.
* :mod:`.identify`: whether a path is a store at all (before `verify`/`info` open anything),
  and the file-type check of every open.
* :mod:`.checks`: :func:`verify`, the health check before appending, the damage listing, the
  check of a batch before it is appended (finite rows only).
* :mod:`.facade`: :class:`FeatureStore`, the small API the rest of featurestore uses.
* :mod:`.naming`: the naming rule: which store(s) a name (path, file name, backbone,
  fingerprint prefix) means, and the options that tell stores of one backbone apart.
* :mod:`.maintenance`: removing a store or some of its rows, collecting leftovers (``rm``,
  ``gc``).

Crash safety rests on one rule: no HDF5 file is ever modified in place; every file is written
under a temporary name, fsynced and renamed (:func:`featurestore.atomic.atomic_path`). A
SIGKILL at any instant leaves the old good state or the new good state. A flipped byte anywhere
outside unused space is reported as an error on read instead of returning a wrong number.
"""

from featurestore.errors import NotAStoreError, StoreCorruptError, StoreError
from featurestore.store.checks import VerifyReport, verify
from featurestore.store.facade import FeatureStore, list_stores
from featurestore.store.format import FORMAT, FORMAT_VERSION, KEY_DTYPE, write_legacy
from featurestore.store.identify import identify
from featurestore.store.journal import store_name
from featurestore.store.lookup import StoreInfo
from featurestore.store.reader import rebuild_hint

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KEY_DTYPE",
    "FeatureStore",
    "NotAStoreError",
    "StoreCorruptError",
    "StoreError",
    "StoreInfo",
    "VerifyReport",
    "identify",
    "list_stores",
    "rebuild_hint",
    "store_name",
    "verify",
    "write_legacy",
]
