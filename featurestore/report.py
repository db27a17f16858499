"""Leaderboard reports of a sweep: Markdown, CSV, JSON and PNG plots."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from classifiers.metrics import roc_points
from classifiers.sweep import SweepResult, rank_key
from featurestore import atomic
from featurestore.provenance import machine as machine_facts
from featurestore.provenance import package_versions

__all__ = ["environment", "write_report"]

logger = logging.getLogger(__name__)

_PACKAGES = ("numpy", "scikit-learn", "joblib", "matplotlib")
_CSV_COLUMNS = (
    "rank",
    "feature_set",
    "head",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "roc_auc",
    "cv_score",
    "cv_folds",
    "fit_seconds",
    "predict_seconds",
    "n_train",
    "n_test",
    "n_features",
    "params",
)


def environment() -> dict[str, Any]:
    """Python, platform and package versions, for provenance."""
    machine = machine_facts()
    return {
        "python": machine["python"],
        "platform": machine["platform"],
        "packages": {k: v for k, v in package_versions(_PACKAGES).items() if k != "python"},
    }


def _json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats to plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return repr(value)


def _save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic.write_bytes(path, buffer.getvalue())


def _row(rank: int, result: SweepResult) -> dict[str, Any]:
    summary = result.evaluation.summary
    return {
        "rank": rank,
        "feature_set": result.feature_set,
        "head": result.head,
        "params": _json_safe(result.best_params),
        "cv_score": result.cv_score,
        "cv_folds": result.cv_folds,
        "cv_note": result.cv_note,
        "accuracy": summary["accuracy"],
        "balanced_accuracy": summary["balanced_accuracy"],
        "macro_f1": summary["macro_f1"],
        "roc_auc": summary["roc_auc"],
        "roc_auc_average": summary["roc_auc_average"],
        "roc_auc_reason": summary["roc_auc_reason"],
        "fit_seconds": result.fit_seconds,
        "predict_seconds": result.predict_seconds,
        "n_train": result.n_train,
        "n_test": result.n_test,
        "n_features": result.n_features,
        "class_names": summary["class_names"],
        "per_class": summary["per_class"],
        "confusion_matrix": summary["confusion_matrix"],
        "warnings": list(result.warnings),
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _params_text(params: dict[str, Any]) -> str:
    if not params:
        return "defaults"
    return ", ".join(f"{k.split('__')[-1]}={v}" for k, v in sorted(params.items()))


def _markdown(title: str, rows: list[dict], provenance: dict, notes: Sequence[str]) -> str:
    lines = [f"# {title}", ""]
    lines += [
        "| rank | feature set | head | test acc | balanced acc | macro-F1 | ROC-AUC | CV acc "
        "| fit s | params |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        cells = [
            str(row["rank"]),
            row["feature_set"],
            row["head"],
            _fmt(row["accuracy"]),
            _fmt(row["balanced_accuracy"]),
            _fmt(row["macro_f1"]),
            _fmt(row["roc_auc"]),
            _fmt(row["cv_score"]),
            _fmt(row["fit_seconds"], 2),
            _params_text(row["params"]),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    cv_notes = sorted({f"{r['feature_set']}: {r['cv_note']}" for r in rows if r["cv_note"]})
    warned = [r for r in rows if r["warnings"]]
    if cv_notes or warned:
        lines += ["## Caveats", ""]
        lines += [f"- {note}" for note in cv_notes]
        lines += [f"- {r['feature_set']} / {r['head']}: {w}" for r in warned for w in r["warnings"]]
        lines.append("")
    lines += [
        "## Plots",
        "",
        "- `confusion_best.png`: confusion matrix of the best model on the test split",
        "- `roc.png`: ROC curves of the best and the worst model "
        "(multiclass: micro-averaged one-vs-rest)",
        "- `leaderboard.png`: test accuracy of every row",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(provenance, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "params": json.dumps(row["params"], sort_keys=True)})
    return buffer.getvalue()


def _plot_confusion(result: SweepResult, path: Path) -> None:
    summary = result.evaluation.summary
    matrix = np.asarray(summary["confusion_matrix"])
    names = summary["class_names"]
    size = min(4 + 0.45 * len(names), 20)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(names)), labels=names, rotation=90 if len(names) > 4 else 0)
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"{result.feature_set} / {result.head}\ntest accuracy {_fmt(result.accuracy)}",
        fontsize=10,
    )
    if len(names) <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            colour = "white" if count > threshold else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def _plot_roc(results: list[SweepResult], path: Path) -> None:
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    chosen = [("best", results[0])] + ([("worst", results[-1])] if len(results) > 1 else [])
    multiclass = False
    missing = []
    for role, result in chosen:
        points = roc_points(result.evaluation)
        if points is None:
            missing.append(f"{role} ({result.feature_set}/{result.head}): not computable")
            continue
        fpr, tpr, area = points
        multiclass |= result.evaluation.scores is not None and result.evaluation.scores.ndim == 2
        ax.plot(fpr, tpr, label=f"{role}: {result.feature_set}/{result.head} (AUC {area:.3f})")
    if missing:
        ax.text(0.5, 0.3, "\n".join(missing), ha="center", fontsize=8, transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    kind = "micro-averaged one-vs-rest ROC" if multiclass else "ROC"
    ax.set_title(f"Test split {kind}", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def _plot_leaderboard(rows: list[dict], path: Path) -> None:
    labels = [f"{r['feature_set']}/{r['head']}" for r in rows]
    values = [r["accuracy"] or 0.0 for r in rows]
    fig = Figure(figsize=(8, 1.5 + 0.35 * len(rows)))
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    ax.barh(positions, values, color="tab:blue")
    ax.set_yticks(positions, labels=labels, fontsize=8)
    ax.invert_yaxis()  # rank 1 on top
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("test accuracy")
    for y, value in zip(positions, values, strict=True):
        ax.text(value + 0.005, y, f"{value:.3f}", va="center", fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)


def write_report(
    results: Sequence[SweepResult],
    out_dir: Path,
    *,
    title: str,
    provenance: dict[str, Any],
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the leaderboard of a sweep to ``out_dir`` (created if needed).

    Files (each written to a temporary name and renamed into place):
    ``leaderboard.md`` (table, then ``notes``, caveats, plots and provenance),
    ``leaderboard.csv`` (one row per result), ``leaderboard.json`` (every row with per-class
    metrics and confusion matrix, plus ``provenance`` and ``notes``), ``confusion_best.png``,
    ``roc.png`` (best and worst model; multiclass curves are micro-averaged one-vs-rest) and
    ``leaderboard.png`` (test accuracy per row). Rows are ranked as in :func:`run_sweep`.

    ``provenance`` is merged over the environment (python, platform, package versions) and
    each feature set's own provenance (under ``feature_sets``). It should be JSON-safe; numpy
    values are converted and anything else is written as its ``repr()``.

    Returns:
        Paths keyed ``markdown``, ``csv``, ``json``, ``confusion``, ``roc``, ``leaderboard_plot``.

    Raises:
        ValueError: ``results`` is empty.
    """
    results = sorted(results, key=rank_key)
    if not results:
        raise ValueError("results is empty; run a sweep with at least one head first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = [str(note) for note in notes]
    rows = [_row(rank, result) for rank, result in enumerate(results, start=1)]
    feature_sets = {r.feature_set: r.provenance for r in results}
    full_provenance = _json_safe(
        {
            **environment(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "feature_sets": feature_sets,
            **provenance,
        }
    )

    paths = {
        "markdown": out_dir / "leaderboard.md",
        "csv": out_dir / "leaderboard.csv",
        "json": out_dir / "leaderboard.json",
        "confusion": out_dir / "confusion_best.png",
        "roc": out_dir / "roc.png",
        "leaderboard_plot": out_dir / "leaderboard.png",
    }
    document = {"title": title, "provenance": full_provenance, "notes": notes, "rows": rows}
    atomic.write_text(
        paths["json"], json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n"
    )
    atomic.write_text(paths["csv"], _csv(rows))
    atomic.write_text(paths["markdown"], _markdown(title, rows, full_provenance, notes))
    _plot_confusion(results[0], paths["confusion"])
    _plot_roc(results, paths["roc"])
    _plot_leaderboard(rows, paths["leaderboard_plot"])
    logger.info("wrote report of %d rows to %s", len(rows), out_dir)
    return paths
