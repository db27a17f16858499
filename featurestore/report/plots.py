"""The report's plots, each built as a matplotlib :class:`Figure` (so tests can read its titles,
labels and drawn values) and saved as PNG through :func:`save_png`.

* :func:`leaderboard_figure`: every row's CV score beside its test score (with the 95%
  interval), on an axis zoomed to the data, published anchors drawn as lines;
* :func:`roc_figure`: one-vs-rest ROC curves of the chosen row, one per class (binary: the
  positive class named); the AUC in its title is the table's;
* :func:`confusion_figure`: the chosen row's confusion matrix with class names, sized so that
  every name stays readable (17 or 101 classes alike).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from featurestore import atomic
from featurestore.report.notes import Anchor
from featurestore.report.rows import scoring_label

__all__ = [
    "CONFUSION_NAMED_MAX",
    "RocCurves",
    "axis_ranges",
    "confusion_figure",
    "leaderboard_figure",
    "roc_curves",
    "roc_figure",
    "save_png",
]

DPI = 100
#: At most this many classes get a legend entry of their own in the ROC plot; beyond it the
#: lowest-AUC classes are named and the others drawn in grey.
ROC_NAMED = 10
ROC_WORST = 5
#: Confusion matrices with at most this many classes show the count in every cell.
ANNOTATE_MAX = 30
#: Confusion matrices with at most this many classes name every class (at 200: a figure about
#: 3,700 px square); beyond, the matrix is drawn in that size with its classes unnamed, since
#: a figure growing with the classes would take minutes and gigabytes (1,000 classes: 17,000
#: px square, 45 s to draw).
CONFUSION_NAMED_MAX = 200


def save_png(fig: Figure, path: Path) -> Path:
    """Render ``fig`` and write it atomically to ``path`` as PNG."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic.write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- leaderboard
#: The leaderboard's x axis breaks in two when the widest empty stretch between the drawn values
#: is more than this share of their whole range (e.g. raw pixels far below pretrained features).
BREAK_SHARE = 0.25


def _padded(low: float, high: float) -> tuple[float, float]:
    pad = max(0.01, 0.06 * (high - low))
    return max(0.0, low - pad), min(1.0, high + pad) + (0.005 if high + pad >= 1.0 else 0.0)


def axis_ranges(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The x ranges of the leaderboard: one spanning every ``(low, high)`` drawn (a marker is
    ``(v, v)``, an interval its ends), or two when a gap of more than :data:`BREAK_SHARE` of
    the whole range separates them, so that neither cluster is squeezed."""
    spans = sorted(spans)
    low, high = spans[0][0], max(s[1] for s in spans)
    gap, cut, reach = 0.0, None, spans[0][1]
    for start, stop in spans[1:]:
        if start - reach > gap:
            gap, cut = start - reach, (reach, start)
        reach = max(reach, stop)
    if cut is None or high - low <= 0 or gap <= BREAK_SHARE * (high - low):
        return [_padded(low, high)]
    return [_padded(low, cut[0]), _padded(cut[1], high)]


def _draw_rows(ax: Any, rows: Sequence[dict[str, Any]], test_key: str, legend: bool) -> None:
    for i, row in enumerate(rows):
        cv, std = row["cv_score"], row.get("cv_std")
        spread = " (± fold spread)" if std is not None else ""
        ax.errorbar(
            cv,
            i - 0.15,
            xerr=std,
            fmt="o",
            mfc="white",
            color="tab:orange",
            capsize=2,
            label=f"CV mean on the training split{spread}" if legend and i == 0 else None,
        )
        test = row.get(test_key)
        if test is None:
            continue
        interval = row.get("accuracy_ci95") if test_key == "accuracy" else None
        xerr = None if not interval else [[test - interval[0]], [interval[1] - test]]
        ax.errorbar(
            test,
            i + 0.15,
            xerr=xerr,
            fmt="D",
            color="tab:blue",
            capsize=2,
            label="held-out test" + (" (95% Wilson interval)" if interval else "")
            if legend and i == 0
            else None,
        )


def _spans(rows: Sequence[dict[str, Any]], test_key: str) -> list[tuple[float, float]]:
    spans = []
    for row in rows:
        cv, std = row["cv_score"], row.get("cv_std") or 0.0
        spans.append((cv - std, cv + std))
        test = row.get(test_key)
        if test is not None:
            interval = row.get("accuracy_ci95") if test_key == "accuracy" else None
            spans.append(tuple(interval) if interval else (test, test))
    return spans


def _break_marks(left: Any, right: Any) -> None:
    left.spines["right"].set_visible(False)
    right.spines["left"].set_visible(False)
    right.tick_params(axis="y", left=False)
    mark = {
        "marker": [(-0.5, -1), (0.5, 1)],
        "markersize": 10,
        "linestyle": "none",
        "color": "k",
        "mec": "k",
        "mew": 1,
        "clip_on": False,
    }
    left.plot([1, 1], [0, 1], transform=left.transAxes, **mark)
    right.plot([0, 0], [0, 1], transform=right.transAxes, **mark)


def leaderboard_figure(
    rows: Sequence[dict[str, Any]], *, scoring: str = "accuracy", anchors: Sequence[Anchor] = ()
) -> Figure:
    """Each row (rank 1, the chosen one, on top): its mean CV score (with the fold spread when
    known) and its test score (accuracy: with the Wilson 95% interval). The x axis spans the
    data and the anchors, broken in two when they form two distant clusters
    (:func:`axis_ranges`); anchors are drawn only on an accuracy axis (they are accuracies)."""
    label = scoring_label(scoring)
    test_key = {"balanced_accuracy": "balanced_accuracy", "f1_macro": "macro_f1"}.get(
        scoring, "accuracy"
    )
    drawn = list(anchors) if test_key == "accuracy" else []
    n = len(rows)
    spans = _spans(rows, test_key) + [(a.accuracy, a.accuracy) for a in drawn]
    ranges = axis_ranges(spans)
    fig = Figure(figsize=(9, 2.2 + 0.34 * n), layout="constrained")
    widths = [max(hi - lo, 0.3 * (ranges[-1][1] - ranges[-1][0])) for lo, hi in ranges]
    axes = fig.subplots(1, len(ranges), sharey=True, squeeze=False, width_ratios=widths)[0]
    for k, (ax, limits) in enumerate(zip(axes, ranges, strict=True)):
        _draw_rows(ax, rows, test_key, legend=k == 0)
        for j, anchor in enumerate(drawn):
            ax.axvline(
                anchor.accuracy,
                color="grey",
                linestyle=("--", ":", "-.")[j % 3],
                linewidth=1.2,
                label=f"anchor: {anchor.name} ({anchor.accuracy:.4f})" if k == 0 else None,
            )
        ax.set_xlim(*limits)
        ax.grid(axis="x", alpha=0.3)
    if len(axes) == 2:
        _break_marks(*axes)
    names = [
        f"{r['feature_set']} / {r['head']}" + ("  (chosen)" if r.get("chosen") else "")
        for r in rows
    ]
    first = axes[0]
    first.set_yticks(np.arange(n), labels=names, fontsize=8)
    for tick, row in zip(first.get_yticklabels(), rows, strict=True):
        if row.get("chosen"):
            tick.set_fontweight("bold")
    first.set_ylim(n - 0.5, -0.7)  # rank 1 on top
    first.set_ylabel("row (ranked by CV)")
    broken = ", broken where no row lies" if len(axes) == 2 else ""
    axes[-1].set_xlabel(
        f"{label} (axis zoomed to the data{broken})", loc="right" if broken else "center"
    )
    skipped = "" if len(drawn) == len(anchors) else "; anchors (accuracies) not drawn"
    fig.suptitle(f"Leaderboard: CV {label} vs held-out test, ranked by CV{skipped}", fontsize=10)
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncols=2, frameon=False)
    return fig


# ----------------------------------------------------------------------------- ROC
@dataclass
class RocCurves:
    """One-vs-rest ROC curves of one evaluation.

    ``curves``: (class name, fpr, tpr, AUC) for every class with positive and negative test
    items (binary: one curve, for ``positive``); ``auc``: their mean (the binary AUC for two
    classes), computed exactly as the evaluation summary's ``roc_auc``; ``reason``: why there
    is no curve.
    """

    curves: list[tuple[str, np.ndarray, np.ndarray, float]] = field(default_factory=list)
    positive: str | None = None
    auc: float | None = None
    reason: str | None = None


def roc_curves(evaluation: Any) -> RocCurves:
    """The per-class curves of an :class:`~classifiers.metrics.Evaluation`."""
    names = evaluation.summary["class_names"]
    scores, y_true, classes = evaluation.scores, evaluation.y_true, evaluation.score_classes
    if scores is None:
        return RocCurves(reason=evaluation.summary.get("roc_auc_reason") or "no scores")
    if scores.ndim == 1:
        if len(classes) != 2:
            return RocCurves(reason="one-column scores but not two classes")
        positive = names[int(classes[1])]
        truth = y_true == classes[1]
        if truth.all() or not truth.any():
            return RocCurves(positive=positive, reason="the test split holds one class only")
        fpr, tpr, _ = roc_curve(truth, scores)
        area = float(roc_auc_score(truth, scores))
        return RocCurves([(positive, fpr, tpr, area)], positive=positive, auc=area)
    curves = []
    for column, cls in enumerate(classes):
        truth = y_true == cls
        if truth.any() and not truth.all():
            fpr, tpr, _ = roc_curve(truth, scores[:, column])
            area = float(roc_auc_score(truth, scores[:, column]))
            curves.append((names[int(cls)], fpr, tpr, area))
    if not curves:
        return RocCurves(reason="no class has both positive and negative test items")
    return RocCurves(curves, auc=float(np.mean([c[3] for c in curves])))


def roc_figure(result: Any) -> tuple[Figure, RocCurves]:
    """ROC of ``result`` on the held-out split (one-vs-rest per class), and its curves."""
    found = roc_curves(result.evaluation)
    fig = Figure(figsize=(7, 6.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    kind = result.evaluation.summary.get("score_kind") or "scores"
    where = f"{result.feature_set} / {result.head}"
    if found.auc is None:
        ax.text(0.5, 0.4, f"not computable: {found.reason}", ha="center", fontsize=9)
        title = f"ROC on the held-out split: {where}\nnot computable"
    elif found.positive is not None:
        _, fpr, tpr, area = found.curves[0]
        ax.plot(fpr, tpr, color="tab:blue", label=f"positive class '{found.positive}'")
        title = (
            f"ROC on the held-out split: {where}\npositive class '{found.positive}', "
            f"AUC {area:.4f} (from {kind})"
        )
    else:
        ordered = sorted(found.curves, key=lambda c: c[3])
        named = ordered if len(ordered) <= ROC_NAMED else ordered[:ROC_WORST]
        grey = [] if len(ordered) <= ROC_NAMED else ordered[ROC_WORST:]
        for k, (_, fpr, tpr, _) in enumerate(grey):
            ax.plot(
                fpr,
                tpr,
                color="0.75",
                linewidth=0.7,
                label=f"{len(grey)} other classes" if k == 0 else None,
            )
        for name, fpr, tpr, area in named:
            ax.plot(fpr, tpr, linewidth=1.4, label=f"{name} (AUC {area:.3f})")
        lowest = " (the lowest-AUC classes named)" if grey else ""
        title = (
            f"ROC on the held-out split, one-vs-rest per class{lowest}: {where}\n"
            f"mean AUC over {len(found.curves)} classes {found.auc:.4f} (from {kind})"
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    return fig, found


# ----------------------------------------------------------------------------- confusion
def _confusion_layout(names: Sequence[str]) -> tuple[float, float, float]:
    """(cell side in inches, tick font size in points, label length in inches); past
    :data:`CONFUSION_NAMED_MAX` classes the cells share the side of that many, unnamed."""
    n = len(names)
    if n > CONFUSION_NAMED_MAX:
        return 0.17 * CONFUSION_NAMED_MAX / n, 6.0, 0.0
    cell = max(0.17, min(0.55, 9.0 / max(n, 1)))
    font = max(6.0, min(10.0, cell * 72 * 0.5))
    label = max(len(str(s)) for s in names) * font * 0.62 / 72
    return cell, font, label


def confusion_figure(result: Any) -> Figure:
    """The confusion matrix of ``result`` on the held-out split, every class named.

    Colour is the share of each true class (row-normalised, so small classes show), on a
    square-root scale so that single mistakes stay visible; counts are written in the cells
    up to :data:`ANNOTATE_MAX` classes. The figure grows with the number of classes so that
    tick labels never overlap (at 101 classes: 17 px per class, 6 pt labels), up to
    :data:`CONFUSION_NAMED_MAX` classes; past it the classes are not named (their order is
    ``class_names``) and the figure stops growing.
    """
    summary = result.evaluation.summary
    matrix = np.asarray(summary["confusion_matrix"], dtype=float)
    names = [str(s) for s in summary["class_names"]]
    n = len(names)
    cell, font, label = _confusion_layout(names)
    side = n * cell
    fig = Figure(
        figsize=(max(5.5, side + label + 2.2), max(4.8, side + label + 1.4)),
        layout="constrained",
    )
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    bar = fig.colorbar(image, ax=ax, fraction=0.046 if n > 12 else 0.08, pad=0.02)
    bar.set_label("share of the true class's test images")
    if n <= CONFUSION_NAMED_MAX:
        ticks = np.arange(n)
        ax.set_xticks(ticks, labels=names, rotation=90 if n > 4 else 0, fontsize=font)
        ax.set_yticks(ticks, labels=names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= ANNOTATE_MAX:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if share[i, j] > 0.45 else "black"
                ax.text(
                    j,
                    i,
                    str(int(count)),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=min(font, 9),
                )
    ax.set_title(
        f"Confusion matrix on the held-out split: {result.feature_set} / {result.head}\n"
        f"{int(matrix.sum())} images, accuracy {summary['accuracy']:.4f}"
        + ("" if n <= ANNOTATE_MAX else " (colour only: too many classes for counts)")
        + (
            ""
            if n <= CONFUSION_NAMED_MAX
            else f"\n{n} classes, shown by index (too many to name; the order of class_names)"
        ),
        fontsize=10,
    )
    return fig
