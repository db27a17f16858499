"""Save and load fitted heads: a joblib file plus a JSON sidecar with its sha256.

Security: a saved head is a pickle. Loading a pickle can run arbitrary code, and the sha256
check only proves that the file matches its sidecar, not who wrote either. Only load heads
from sources you trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import joblib
from sklearn.base import BaseEstimator

__all__ = ["FORMAT", "HeadIntegrityError", "load_head", "save_head", "sidecar_path"]

logger = logging.getLogger(__name__)

#: Written to and required in every sidecar.
FORMAT = "classifiers.saved-head/1"

_PACKAGES = ("numpy", "scikit-learn", "joblib")


class HeadIntegrityError(Exception):
    """A saved head cannot be trusted: sidecar missing or unreadable, or sha256 mismatch."""


def sidecar_path(path: Path) -> Path:
    """The sidecar of ``path``: the same name plus ``.json`` (``best.joblib.json``)."""
    path = Path(path)
    return path.with_suffix(path.suffix + ".json")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_head(estimator: BaseEstimator, path: Path, *, metadata: dict[str, Any]) -> Path:
    """Write ``estimator`` to ``path`` with joblib and a JSON sidecar next to it.

    Both files are written to temporary names in the target folder and renamed into place,
    the head first, then the sidecar; a crash in between leaves a head whose sha256 does not
    match its sidecar, which :func:`load_head` refuses. Parent folders are created.

    The sidecar (:func:`sidecar_path`) holds ``format``, ``file`` (the head's file name),
    ``sha256`` (of the head file's bytes), ``created`` (UTC, ISO 8601), ``versions``
    (python and packages) and ``metadata`` (what the caller passed: class names, extractor
    fingerprints, ...).

    Raises:
        TypeError: ``metadata`` is not a dict or is not JSON-serialisable (checked before any
            file is written).
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"metadata must be JSON-serialisable (plain str/int/float/list/dict): {exc}"
        ) from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    data = buffer.getvalue()
    sidecar = {
        "format": FORMAT,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "metadata": metadata,
    }
    _write_atomic(path, data)
    _write_atomic(sidecar_path(path), (json.dumps(sidecar, indent=2) + "\n").encode())
    logger.info("saved head %s (sha256 %s)", path, sidecar["sha256"][:12])
    return path


def load_head(path: Path) -> tuple[BaseEstimator, dict[str, Any]]:
    """Load a head written by :func:`save_head`, after checking it against its sidecar.

    The head file is read once into memory, its sha256 is compared with the sidecar's, and
    only then are those same bytes unpickled, so a file changed after the check is never
    loaded.

    Warning:
        Heads are pickles: unpickling can run arbitrary code. The sha256 check catches
        corruption and accidental edits, not a malicious sidecar. Only load heads from trusted
        sources.

    Returns:
        ``(estimator, sidecar)``; the caller's metadata is ``sidecar["metadata"]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        HeadIntegrityError: The sidecar is missing, unreadable or of another format, or the
            sha256 of the file differs from the sidecar's.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved head at {path}")
    if not side.is_file():
        raise HeadIntegrityError(
            f"sidecar {side} is missing, so {path} cannot be verified; refusing to load it. "
            "Save the head again with save_head()."
        )
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadIntegrityError(f"sidecar {side} is unreadable: {exc}") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        found = sidecar.get("format") if isinstance(sidecar, dict) else None
        raise HeadIntegrityError(
            f"sidecar {side} has format {found!r}, expected {FORMAT!r}; refusing to load {path}"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.get("sha256"):
        raise HeadIntegrityError(
            f"sha256 of {path} is {digest} but its sidecar records {sidecar.get('sha256')}; "
            "the file was changed or damaged after saving. Refusing to load it; save the head "
            "again."
        )
    versions = sidecar.get("versions") or {}
    current = _versions()
    for name, saved in versions.items():
        if name in current and saved != current[name]:
            logger.warning(
                "head %s was saved with %s %s, this environment has %s",
                path,
                name,
                saved,
                current[name],
            )
    estimator = joblib.load(io.BytesIO(data))
    return estimator, sidecar
