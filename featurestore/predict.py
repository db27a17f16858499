"""Predict with a saved head: extract through the cache with the head's own extractor(s).

The head's sidecar records the extractor options and fingerprint of every feature block it was
trained on (in column order). A head whose extractor fingerprint differs from what those options
resolve to on this machine (other weights, preprocessing, version) is refused.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurestore.api import rows_for_records
from featurestore.errors import HeadMismatchError
from featurestore.headfile import HeadCard, load_head_card
from featurestore.pixels import pixel_rows
from featurestore.sources import Skipped, SkippedFiles, Source, open_source


@dataclass
class Prediction:
    paths: list[str]
    labels: list[str | None]
    predicted: list[str]
    probability: list[float | None]
    skipped: list[Skipped]
    class_names: list[str]

    @property
    def accuracy(self) -> float | None:
        pairs = [(t, p) for t, p in zip(self.labels, self.predicted, strict=True) if t is not None]
        if not pairs:
            return None
        return sum(t == p for t, p in pairs) / len(pairs)

    def write_csv(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "predicted", "probability", "label"])
            for row in zip(self.paths, self.predicted, self.probability, self.labels, strict=True):
                p = "" if row[2] is None else f"{row[2]:.6f}"
                w.writerow([row[0], row[1], p, row[3] or ""])


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
    """Predict labels for ``source``'s images (one split or all) with the saved ``head``."""
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
    pred = estimator.predict(X) if len(kept) else np.empty(0, dtype=int)
    proba: list[float | None] = [None] * len(kept)
    if len(kept) and hasattr(estimator, "predict_proba"):
        try:
            table = estimator.predict_proba(X)
        except AttributeError:  # e.g. a Pipeline whose final step has no predict_proba
            pass
        else:  # the probability of the predicted class (columns follow estimator.classes_)
            column = np.searchsorted(estimator.classes_, pred)
            proba = [float(p) for p in table[np.arange(len(pred)), column]]
    return Prediction(
        paths=[r.path for r in kept],
        labels=[r.label for r in kept],
        predicted=[card.class_names[int(i)] for i in pred],
        probability=proba,
        skipped=list(skipped),
        class_names=card.class_names,
    )
