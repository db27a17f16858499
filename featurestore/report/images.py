"""The per-image report of the chosen row: ``predictions.csv`` (every held-out image with its
true label, prediction and class probabilities) and a contact sheet of its most confident
mistakes, drawn from the images themselves (the source's own loader)."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["EvaluatedImages", "mistakes_figure", "predictions_csv", "worst_mistakes"]

log = logging.getLogger(__name__)

#: The contact sheet shows at most this many mistakes.
SHEET_LIMIT = 16
SHEET_COLUMNS = 4
THUMBNAIL = 256


@dataclass
class EvaluatedImages:
    """The chosen row's predictions on the held-out images, one entry per image.

    ``true`` and ``predicted``: class indices into ``class_names``; ``probabilities``:
    ``(n, len(class_names))``, columns in ``class_names`` order (0 for a class the head never
    saw in training), or ``None``; ``load(i)``: the ``i``-th image (for the contact sheet).
    """

    feature_set: str
    head: str
    paths: list[str]
    keys: list[str]
    true: np.ndarray
    predicted: np.ndarray
    class_names: list[str]
    probabilities: np.ndarray | None = None
    load: Callable[[int], Image.Image] | None = None

    def confidence(self) -> np.ndarray:
        """The probability the head gave its own prediction (NaN without probabilities)."""
        if self.probabilities is None:
            return np.full(len(self.paths), np.nan)
        return self.probabilities[np.arange(len(self.paths)), self.predicted]


def predictions_csv(images: EvaluatedImages) -> str:
    """CSV text: ``path, key, label, predicted, correct, probability`` (of the prediction),
    then ``p_<class>`` for every class, one row per held-out image in evaluation order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = images.class_names
    writer.writerow(
        ["path", "key", "label", "predicted", "correct", "probability"]
        + [f"p_{name}" for name in names]
    )
    confidence = images.confidence()
    for i, path in enumerate(images.paths):
        t, p = int(images.true[i]), int(images.predicted[i])
        probs = (
            [""] * len(names)
            if images.probabilities is None
            else [f"{q:.6f}" for q in images.probabilities[i]]
        )
        conf = "" if math.isnan(confidence[i]) else f"{confidence[i]:.6f}"
        writer.writerow([path, images.keys[i], names[t], names[p], int(t == p), conf, *probs])
    return buffer.getvalue()


def worst_mistakes(images: EvaluatedImages, limit: int = SHEET_LIMIT) -> list[int]:
    """Indices of the misclassified images, most confident first (ties: evaluation order)."""
    wrong = np.flatnonzero(images.true != images.predicted)
    confidence = np.nan_to_num(images.confidence()[wrong], nan=0.0)
    order = np.argsort(-confidence, kind="stable")
    return [int(i) for i in wrong[order][:limit]]


def _thumbnail(images: EvaluatedImages, i: int) -> tuple[np.ndarray | None, str | None]:
    if images.load is None:
        return None, "no loader"
    try:
        img = images.load(i).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - one unreadable image must not lose the sheet
        log.warning("contact sheet: cannot load %s: %s", images.paths[i], exc)
        return None, f"cannot load: {exc}"
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(img), None


def _short_path(path: str, width: int = 40) -> str:
    """The file name and its folder (``bees/2709775832.jpg``), cut from the left to ``width``."""
    parts = path.replace("\\", "/").split("/")
    tail = "/".join(parts[-2:])
    return tail if len(tail) <= width else "..." + tail[-(width - 3) :]


def mistakes_figure(images: EvaluatedImages, limit: int = SHEET_LIMIT) -> Figure:
    """A contact sheet of the most confident mistakes: each image with its true label, the
    predicted label and the probability the head gave it, and its file name."""
    chosen = worst_mistakes(images, limit)
    n_wrong = int((images.true != images.predicted).sum())
    where = f"{images.feature_set} / {images.head}"
    if not chosen:
        fig = Figure(figsize=(6, 2.5), layout="constrained")
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            f"All {len(images.paths)} held-out images are predicted right.",
            ha="center",
            va="center",
            fontsize=11,
        )
        fig.suptitle(f"Most confident mistakes: {where}\nnone", fontsize=11)
        return fig
    cols = min(SHEET_COLUMNS, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = Figure(figsize=(3.0 * cols, 3.3 * rows + 0.9), layout="constrained")
    names = images.class_names
    confidence = images.confidence()
    for k, i in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, k + 1)
        pixels, problem = _thumbnail(images, i)
        if pixels is None:
            ax.text(0.5, 0.5, problem or "", ha="center", va="center", fontsize=7, wrap=True)
        else:
            small = max(pixels.shape[:2]) < 64
            ax.imshow(pixels, interpolation="nearest" if small else "antialiased")
        ax.set_xticks([])
        ax.set_yticks([])
        prob = "" if math.isnan(confidence[i]) else f" (p={confidence[i]:.2f})"
        ax.set_title(
            f"true: {names[int(images.true[i])]}\npredicted: {names[int(images.predicted[i])]}"
            f"{prob}",
            fontsize=9,
        )
        ax.set_xlabel(_short_path(images.paths[i]), fontsize=7)
    fig.suptitle(
        f"Most confident mistakes: {where}\n{len(chosen)} shown of {n_wrong} wrong among "
        f"{len(images.paths)} held-out images (p = the head's probability for its prediction)",
        fontsize=11,
    )
    return fig
