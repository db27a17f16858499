"""Saved heads: a joblib file, a JSON sidecar with its sha256, and the sidecar's schema.

:func:`save_head` / :func:`load_head` write and check the pair for any metadata; a head saved
by a sweep carries a :class:`HeadCard` as its metadata (the feature set, the head and its
parameters, the class names, and the :class:`~featurestore.extractor.ExtractorRecord` of every
feature block in column order). The card is written and read here and nowhere else.

:func:`save_head_card` saves the head wrapped in a
:class:`~classifiers.labelled.LabelledClassifier` that carries the card's class names, so a head
loaded with plain ``joblib.load`` predicts class names, not indices. :func:`load_head_card`
gives that wrapper for every head, wrapping heads saved before it existed.

Security: a saved head is a pickle. Loading a pickle can run arbitrary code, and the sha256
check only proves that the file matches its sidecar, not who wrote either. Only load heads
from sources you trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib

from classifiers.labelled import LabelledClassifier
from featurestore import atomic, provenance
from featurestore.errors import (
    FeatureStoreError,
    HeadError,
    HeadIntegrityError,
    HeadMismatchError,
)
from featurestore.extractor import ExtractorRecord

__all__ = [
    "FORMAT",
    "HeadCard",
    "HeadIntegrityError",
    "load_head",
    "load_head_card",
    "save_head",
    "save_head_card",
    "sidecar_path",
]

logger = logging.getLogger(__name__)

#: Written to and required in every sidecar.
FORMAT = "classifiers.saved-head/1"


def sidecar_path(path: Path) -> Path:
    """The sidecar of ``path``: the same name plus ``.json`` (``best.joblib.json``)."""
    path = Path(path)
    return path.with_suffix(path.suffix + ".json")


def save_head(estimator: Any, path: Path, *, metadata: dict[str, Any]) -> Path:
    """Write ``estimator`` to ``path`` with joblib and a JSON sidecar next to it.

    Both files are written atomically (:mod:`featurestore.atomic`), the head first, then the
    sidecar; a crash in between leaves a head whose sha256 does not match its sidecar, which
    :func:`load_head` refuses. Parent folders are created.

    The sidecar (:func:`sidecar_path`) holds ``format``, ``file`` (the head's file name),
    ``sha256`` (of the head file's bytes), ``created`` (UTC, ISO 8601), ``versions``
    (python and packages) and ``metadata`` (what the caller passed: a :class:`HeadCard`'s JSON
    for a sweep's head).

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
        "versions": provenance.package_versions(provenance.HEAD_PACKAGES),
        "metadata": metadata,
    }
    atomic.write_bytes(path, data)
    atomic.write_text(sidecar_path(path), json.dumps(sidecar, indent=2) + "\n")
    logger.info("saved head %s (sha256 %s)", path, sidecar["sha256"][:12])
    return path


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise HeadIntegrityError(
            f"sidecar {side} is missing, so {path} cannot be verified; refusing to load it. "
            "Save the head again with save_head()."
        )
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HeadIntegrityError(f"sidecar {side} is unreadable: {exc}") from exc
    if not isinstance(sidecar, dict):
        raise HeadIntegrityError(
            f"sidecar {side} holds a JSON {type(sidecar).__name__}, not an object; refusing "
            f"to load {path}"
        )
    if sidecar.get("format") != FORMAT:
        found = sidecar.get("format")
        raise HeadIntegrityError(
            f"sidecar {side} has format {found!r}, expected {FORMAT!r}; refusing to load {path}"
        )
    return sidecar


def _warn_on_version_changes(path: Path, sidecar: dict[str, Any]) -> None:
    versions = sidecar.get("versions") or {}
    if not isinstance(versions, dict):
        return
    current = provenance.package_versions(provenance.HEAD_PACKAGES)
    for name, saved in versions.items():
        if name in current and saved != current[name]:
            logger.warning(
                "head %s was saved with %s %s, this environment has %s",
                path,
                name,
                saved,
                current[name],
            )


def load_head(path: Path) -> tuple[Any, dict[str, Any]]:
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
        HeadIntegrityError: The sidecar is missing, unreadable or of another format, the
            sha256 of the file differs from the sidecar's, or the matching bytes do not
            unpickle (a file that was never a saved head, with a sidecar made to match).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved head at {path}")
    sidecar = _read_sidecar(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HeadIntegrityError(f"cannot read the head {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.get("sha256"):
        raise HeadIntegrityError(
            f"sha256 of {path} is {digest} but its sidecar records {sidecar.get('sha256')}; "
            "the file was changed or damaged after saving. Refusing to load it; save the head "
            "again."
        )
    _warn_on_version_changes(path, sidecar)
    try:
        estimator = joblib.load(io.BytesIO(data))
    except Exception as exc:  # any bytes can reach here: unpickling raises anything
        raise HeadIntegrityError(
            f"{path} matches its sidecar's sha256 but does not load as a saved head "
            f"({type(exc).__name__}: {exc}); it was not written by save_head(). Save the head "
            "again."
        ) from exc
    return estimator, sidecar


@dataclass(frozen=True)
class HeadCard:
    """What a sweep's saved head was trained on: the metadata of its sidecar.

    ``extractors`` lists the feature blocks in column order; ``pixels`` is the side of the
    raw-pixel baseline's image when the head was trained on pixels (``None`` otherwise).
    """

    feature_set: str
    head: str
    class_names: list[str]
    extractors: list[ExtractorRecord] = field(default_factory=list)
    pixels: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "feature_set": self.feature_set,
            "head": self.head,
            "params": dict(self.params),
            "class_names": list(self.class_names),
            "extractors": [e.to_json() for e in self.extractors],
            "pixels": self.pixels,
            "sweep": dict(self.sweep),
        }

    @classmethod
    def from_json(cls, data: Any, *, where: Path | str = "the sidecar") -> HeadCard:
        """Read a card back; anything malformed is a :class:`HeadIntegrityError` naming it."""
        if not isinstance(data, dict):
            raise HeadIntegrityError(f"{where}: metadata must be a JSON object, got {data!r}")
        names = data.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise HeadIntegrityError(f"{where}: class_names must be a list of names")
        extractors = data.get("extractors") or []
        if not isinstance(extractors, list):
            raise HeadIntegrityError(f"{where}: extractors must be a list")
        pixels = data.get("pixels")
        if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int)):
            raise HeadIntegrityError(f"{where}: pixels must be an integer side, got {pixels!r}")
        try:
            records = [ExtractorRecord.from_json(e) for e in extractors]
        except FeatureStoreError as exc:
            raise HeadIntegrityError(f"{where}: {exc}") from None
        if not records and pixels is None:
            raise HeadMismatchError(f"{where}: the sidecar names no extractor and no pixel size")
        return cls(
            feature_set=str(data.get("feature_set", "")),
            head=str(data.get("head", "")),
            class_names=list(names),
            extractors=records,
            pixels=pixels,
            params=dict(data.get("params") or {}),
            sweep=dict(data.get("sweep") or {}),
        )


def save_head_card(estimator: Any, path: Path, card: HeadCard) -> Path:
    """Save a sweep's head with its :class:`HeadCard` (see :func:`save_head`).

    ``estimator`` predicts indices into ``card.class_names`` (as a sweep's heads do); it is
    saved wrapped in a :class:`~classifiers.labelled.LabelledClassifier` carrying those names,
    so that ``joblib.load(path).predict(X)`` gives class names.
    """
    return save_head(labelled(estimator, card), path, metadata=card.to_json())


def labelled(estimator: Any, card: HeadCard) -> LabelledClassifier:
    """``estimator`` (predicting indices into ``card.class_names``) wrapped so that it predicts
    the class names; a head already wrapped must carry the card's names."""
    if not isinstance(estimator, LabelledClassifier):
        return LabelledClassifier.from_fitted(estimator, card.class_names)
    if [str(n) for n in estimator.class_names_] != card.class_names:
        raise HeadError(
            f"the head carries class names {list(estimator.class_names_)}, its card "
            f"{card.class_names}"
        )
    return estimator


def load_head_card(path: Path) -> tuple[LabelledClassifier, HeadCard]:
    """:func:`load_head` for a sweep's head: the estimator and its :class:`HeadCard`, checked
    against each other (the head predicts only the card's classes).

    The estimator is a :class:`~classifiers.labelled.LabelledClassifier` (its ``predict``
    gives class names); a head saved before heads carried their names is wrapped here.
    """
    estimator, sidecar = load_head(path)
    card = HeadCard.from_json(sidecar.get("metadata"), where=sidecar_path(Path(path)))
    if isinstance(estimator, LabelledClassifier):
        names = [str(n) for n in getattr(estimator, "class_names_", [])]
        if names != card.class_names:
            raise HeadIntegrityError(
                f"{path}: the head carries class names {names[:10]} but its sidecar names "
                f"{card.class_names[:10]}; the two do not belong together"
            )
        return estimator, card
    classes = getattr(estimator, "classes_", None)
    if classes is None or not hasattr(estimator, "predict"):
        raise HeadIntegrityError(f"{path} does not hold a fitted classifier")
    n = len(card.class_names)
    try:
        fits = len(classes) <= n and all(int(c) == c and 0 <= int(c) < n for c in classes)
    except (TypeError, ValueError):
        fits = False
    if not fits:
        raise HeadIntegrityError(
            f"{path}: the head predicts classes {list(classes)[:10]} but its sidecar names "
            f"{n} classes; the two do not belong together"
        )
    try:
        return LabelledClassifier.from_fitted(estimator, card.class_names), card
    except ValueError as exc:  # e.g. classes_ of a float dtype
        raise HeadIntegrityError(f"{path}: {exc}") from exc
