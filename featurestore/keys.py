"""Pure functions for content keys and extractor fingerprints.

An *image key* is the sha256 hex digest of an image's bytes (for images stored as arrays, of a
short header naming dtype and shape followed by the array's bytes). Moving or renaming a file
keeps its key; editing the image gives it a new one.

An *extractor fingerprint* is the sha256 hex digest of the canonical JSON of everything that
changes the feature numbers (see :func:`fingerprint`). Nothing else goes in: batch size,
workers, device and library versions are provenance, not identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

KEY_LENGTH = 64  # sha256 hex digest
_CHUNK = 1 << 20


def bytes_key(data: bytes) -> str:
    """Return the image key of raw file bytes."""
    return hashlib.sha256(data).hexdigest()


def file_key(path: Path) -> str:
    """Return the image key of a file, reading it in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def array_key(array: np.ndarray) -> str:
    """Return the image key of an image held as an array.

    The digest covers ``"array:<dtype>:<shape>\\n"`` followed by the C-contiguous bytes, so two
    arrays with equal bytes but different shapes or dtypes never share a key.
    """
    arr = np.ascontiguousarray(array)
    header = f"array:{arr.dtype.str}:{'x'.join(map(str, arr.shape))}\n".encode()
    digest = hashlib.sha256(header)
    digest.update(arr.tobytes())
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal structures give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint(spec: dict[str, Any]) -> str:
    """Return the sha256 hex digest of ``spec``'s canonical JSON.

    ``spec`` must contain only what changes the numbers: backbone, weights identity, nodes,
    pooling, input size and preprocessing, precision and the extractor version.
    """
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()
