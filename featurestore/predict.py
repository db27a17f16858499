"""Predict with a saved head: extract through the cache with the head's own extractor(s).

The head's sidecar records the extractor options and fingerprint of every feature block it was
trained on (in column order). A head whose extractor fingerprint differs from what those options
resolve to on this machine (other weights, preprocessing, version) is refused.

A :class:`Prediction` holds, for every image that could be decoded, the predicted class name
and (when the head gives probabilities) the probability of every class. It writes a CSV of
``path, predicted, probability, label`` followed by one ``p_<class>`` column per class, or, with
``top_k``, the ``k`` most probable classes and their probabilities (``top1, p_top1, ...``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from featurestore.api import rows_for_records
from featurestore.errors import HeadError, HeadMismatchError, OptionError
from featurestore.headfile import HeadCard, load_head_card, sidecar_path
from featurestore.output import open_output
from featurestore.pixels import pixel_rows
from featurestore.sources import Skipped, SkippedFiles, Source, open_source

__all__ = ["Prediction", "check_extractors", "head_inputs", "predict"]


@dataclass
class Prediction:
    """Predictions for the images of a source that could be decoded (``skipped``: the others).

    ``probabilities`` is ``(n_images, n_classes)`` with columns in ``class_names`` order (a
    class the head never saw in training has probability 0), or ``None`` when the head gives
    no probabilities. ``inputs`` are the files the prediction was made from (the source, the
    head, its sidecar, the images): :meth:`write_csv` refuses to write over any of them.
    """

    paths: list[str]
    labels: list[str | None]
    predicted: list[str]
    probabilities: np.ndarray | None
    skipped: list[Skipped]
    class_names: list[str]
    inputs: list[Path] = field(default_factory=list)

    @property
    def probability(self) -> list[float | None]:
        """The probability of each predicted class (``None`` without probabilities)."""
        if self.probabilities is None:
            return [None] * len(self.predicted)
        column = {name: i for i, name in enumerate(self.class_names)}
        return [float(self.probabilities[i, column[p]]) for i, p in enumerate(self.predicted)]

    @property
    def accuracy(self) -> float | None:
        pairs = [(t, p) for t, p in zip(self.labels, self.predicted, strict=True) if t is not None]
        if not pairs:
            return None
        return sum(t == p for t, p in pairs) / len(pairs)

    def header(self, *, top_k: int | None = None) -> list[str]:
        """The CSV's column names (see :meth:`rows`)."""
        head = ["path", "predicted", "probability", "label"]
        if self.probabilities is None:
            return head
        if top_k is None:
            return head + [f"p_{name}" for name in self.class_names]
        k = min(_check_top_k(top_k), len(self.class_names))
        return head + [c for i in range(1, k + 1) for c in (f"top{i}", f"p_top{i}")]

    def rows(self, *, top_k: int | None = None) -> Iterator[list[str]]:
        """The CSV's rows: path, predicted class, its probability, true label (empty when
        unknown), then every class's probability in ``class_names`` order, or with ``top_k``
        the ``k`` most probable classes, each followed by its probability (ties: the class
        listed first in ``class_names`` first). Without probabilities: the first four only."""
        if top_k is not None and self.probabilities is None:
            raise HeadError("--top-k needs probabilities, and this head gives none")
        probs = self.probabilities
        k = min(_check_top_k(top_k), len(self.class_names)) if top_k is not None else 0
        chosen = _fmt(self.probability)
        for i, (path, pred, label) in enumerate(
            zip(self.paths, self.predicted, self.labels, strict=True)
        ):
            row = [path, pred, chosen[i], label or ""]
            if probs is not None and top_k is None:
                row += [f"{p:.6f}" for p in probs[i]]
            elif probs is not None:
                best = np.argsort(-probs[i], kind="stable")[:k]
                row += [v for j in best for v in (self.class_names[j], f"{probs[i, j]:.6f}")]
            yield row

    def to_csv(self, fh: IO[str], *, top_k: int | None = None) -> None:
        """Write the CSV (:meth:`header`, :meth:`rows`) to text stream ``fh``."""
        rows = self.rows(top_k=top_k)
        w = csv.writer(fh)
        w.writerow(self.header(top_k=top_k))
        w.writerows(rows)

    def write_csv(self, path: Path | str, *, top_k: int | None = None) -> Path:
        """Write the CSV to ``path`` atomically; refuses to write over one of ``inputs``.

        Raises:
            OutputError: ``path`` is an input or a folder, or cannot be written.
        """
        rows = list(self.rows(top_k=top_k))  # a bad top_k fails before the file is touched
        with open_output(path, inputs=self.inputs) as fh:
            w = csv.writer(fh)
            w.writerow(self.header(top_k=top_k))
            w.writerows(rows)
        return Path(path)


def _check_top_k(k: int | None) -> int:
    if k is None or isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise OptionError(f"top_k must be a whole number >= 1, got {k!r}")
    return k


def _fmt(values: list[float | None]) -> list[str]:
    return ["" if v is None else f"{v:.6f}" for v in values]


def head_inputs(source: str | Path | Source, head: str | Path) -> list[Path]:
    """The files a prediction of ``source`` with ``head`` reads, as far as known before the
    source is scanned: the head, its sidecar and the source itself when it is a file."""
    files = [Path(head), sidecar_path(Path(head))]
    if not isinstance(source, Source) and Path(source).is_file():
        files.append(Path(source))
    return files


def check_extractors(card: HeadCard) -> None:
    """Raise HeadMismatchError unless every recorded extractor resolves to its fingerprint."""
    for record in card.extractors:
        got = record.resolve().fingerprint
        if got != record.fingerprint:
            raise HeadMismatchError(
                f"the head was trained on {record.backbone} features with fingerprint "
                f"{record.fingerprint[:16]}, but these options give {got[:16]} on this machine "
                "(different weights, preprocessing or extractor version). Re-run the sweep to "
                "train a head for this extractor."
            )


def predict(
    source: str | Path | Source,
    head: str | Path,
    *,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Prediction:
    """Predict class names for ``source``'s images (one split or all) with the saved ``head``.

    Images that cannot be decoded are left out and listed in the result's ``skipped``.

    Raises:
        HeadIntegrityError: the head or its sidecar cannot be trusted (see
            :func:`featurestore.headfile.load_head_card`).
        HeadMismatchError: this machine's extractor would not reproduce the head's features.
    """
    estimator, card = load_head_card(Path(head))  # verifies the sha256 before unpickling
    check_extractors(card)
    src = source if isinstance(source, Source) else open_source(source)
    records = src.select(split)
    sub = src.subset(records)
    blocks: list[tuple[np.ndarray, np.ndarray]] = []
    skipped = SkippedFiles(src.skipped)
    for record in card.extractors:
        X, ok, feats = rows_for_records(
            sub,
            records,
            backbone=record.options,
            cache_dir=cache_dir,
            class_names=card.class_names,
            progress=progress,
        )
        skipped.update(feats.skipped)
        blocks.append((X, ok))
    if card.pixels:
        X, ok, bad = pixel_rows(records, src.loader, size=card.pixels)
        skipped.update(bad)
        blocks.append((X, ok))
    ok_all = np.logical_and.reduce([ok for _, ok in blocks])
    X = np.hstack([b for b, _ in blocks])[ok_all]
    kept = [r for r, o in zip(records, ok_all, strict=True) if o]
    predicted = [str(p) for p in estimator.predict(X)] if kept else []
    return Prediction(
        paths=[r.path for r in kept],
        labels=[r.label for r in kept],
        predicted=predicted,
        probabilities=_probabilities(estimator, X, card.class_names) if kept else None,
        skipped=list(skipped),
        class_names=card.class_names,
        inputs=[*head_inputs(source, head), *(Path(r.path) for r in records)],
    )


def _probabilities(estimator: object, X: np.ndarray, names: list[str]) -> np.ndarray | None:
    """``(n, len(names))`` probabilities (0 for a class the head does not know), or None."""
    if not hasattr(estimator, "predict_proba"):
        return None
    try:
        table = estimator.predict_proba(X)
    except AttributeError:  # e.g. a Pipeline whose final step has no predict_proba
        return None
    out = np.zeros((len(X), len(names)), dtype=np.float64)
    column = {name: i for i, name in enumerate(names)}
    for j, name in enumerate(estimator.classes_):  # type: ignore[attr-defined]
        out[:, column[str(name)]] = table[:, j]
    return out
