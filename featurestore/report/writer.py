"""Write a sweep's report folder, all or nothing: :func:`write_report`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featurestore import atomic
from featurestore.errors import HeadError
from featurestore.headfile import save_head, sidecar_path
from featurestore.provenance import machine as machine_facts
from featurestore.provenance import package_versions
from featurestore.report import tables
from featurestore.report.folder import check_output, staged
from featurestore.report.images import EvaluatedImages, mistakes_figure, predictions_csv
from featurestore.report.notes import Anchor, DataFacts, collect, test_best_note
from featurestore.report.plots import confusion_figure, leaderboard_figure, roc_figure, save_png
from featurestore.report.rows import FailedHead, result_row, row_notes
from featurestore.report.selection import SELECTION_RULE, rank

__all__ = ["HeadToSave", "environment", "write_report"]

logger = logging.getLogger(__name__)

_PACKAGES = ("numpy", "scikit-learn", "joblib", "matplotlib")


@dataclass(frozen=True)
class HeadToSave:
    """The chosen row's head (with probabilities) and its sidecar metadata (a HeadCard's)."""

    estimator: Any
    metadata: dict[str, Any]


def environment() -> dict[str, Any]:
    """Python, platform and package versions, for provenance."""
    machine = machine_facts()
    return {
        "python": machine["python"],
        "platform": machine["platform"],
        "packages": {k: v for k, v in package_versions(_PACKAGES).items() if k != "python"},
    }


def _document(
    ranked: list[Any],
    rows: list[dict[str, Any]],
    *,
    title: str,
    provenance: dict[str, Any],
    notes: Sequence[str],
    warnings: Sequence[str],
    facts: DataFacts | None,
    anchors: Sequence[Anchor],
    failures: Sequence[FailedHead],
    scoring: str,
    roc_per_class: dict[str, float],
    files: Sequence[str],
) -> dict[str, Any]:
    chosen = None
    if ranked:
        extra = test_best_note(ranked)
        chosen = {
            **rows[0],
            "notes": row_notes(ranked[0]) + ([extra] if extra else []),
            "roc_auc_per_class": roc_per_class,
        }
    all_warnings, all_notes = collect(
        ranked,
        facts=facts,
        anchors=anchors,
        n_failed=len(failures),
        notes=notes,
        warnings=warnings,
    )
    return {
        "title": title,
        "selection": {
            "rule": SELECTION_RULE,
            "scoring": scoring,
            "cv_folds": ranked[0].cv_folds if ranked else None,
        },
        "chosen": chosen,
        "rows": rows,
        "failures": [asdict(f) for f in failures],
        "warnings": all_warnings,
        "notes": all_notes,
        "data": None if facts is None else asdict(facts),
        "anchors": [asdict(a) for a in anchors],
        "files": {name: tables.FILES[name] for name in files},
        "provenance": {
            **environment(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "feature_sets": {r.feature_set: r.provenance for r in ranked},
            **provenance,
        },
    }


def write_report(
    results: Sequence[Any],
    out_dir: Path,
    *,
    title: str,
    provenance: dict[str, Any],
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
    facts: DataFacts | None = None,
    anchors: Sequence[Anchor] = (),
    failures: Sequence[FailedHead] = (),
    scoring: str = "accuracy",
    images: EvaluatedImages | None = None,
    head: HeadToSave | None = None,
) -> dict[str, Path]:
    """Write the report of a sweep to ``out_dir``, all or nothing.

    ``results`` are ranked by :data:`SELECTION_RULE` (a stable sort: pass them in sweep
    order); rank 1 is the chosen row, and ``images`` and ``head`` must belong to it. Files:
    ``leaderboard.{md,csv,json}``; with at least one result ``leaderboard.png``, ``roc.png``
    and ``confusion_best.png``; with ``images`` ``predictions.csv`` and ``mistakes.png``; with
    ``head`` ``best_head.joblib`` and its sidecar. Everything is written into a folder beside
    ``out_dir`` that replaces it only once complete (:mod:`featurestore.report.folder`).

    ``provenance`` is merged over the environment (python, platform, package versions) and
    each feature set's own provenance (under ``feature_sets``).

    Returns:
        The final paths, keyed ``markdown``, ``csv``, ``json``, ``leaderboard_plot``, ``roc``,
        ``confusion``, ``predictions``, ``mistakes``, ``head`` and ``sidecar`` (those written).

    Raises:
        ValueError: no results and no failures.
        HeadError: ``images`` or ``head`` given without results, or ``images`` of another row.
        OutputError: ``out_dir`` cannot hold a report, or writing failed (then nothing
            changed there).
    """
    ranked = rank(results)
    if not ranked and not failures:
        raise ValueError("results is empty; run a sweep with at least one head first")
    if images is not None and (
        not ranked or (images.feature_set, images.head) != (ranked[0].feature_set, ranked[0].head)
    ):
        raise HeadError("the per-image report must be the chosen row's (rank 1)")
    if head is not None and not ranked:
        raise HeadError("no row to save: every head failed")
    out_dir = Path(out_dir)
    check_output(out_dir)
    names = ["leaderboard.md", "leaderboard.csv", "leaderboard.json"]
    figures: dict[str, Any] = {}
    roc_per_class: dict[str, float] = {}
    rows = [result_row(i, r, chosen=i == 1, scoring=scoring) for i, r in enumerate(ranked, 1)]
    if ranked:
        roc, curves = roc_figure(ranked[0])
        roc_per_class = {name: area for name, _, _, area in curves.curves}
        if curves.positive is not None and curves.auc is not None:  # binary: one AUC for both
            roc_per_class = dict.fromkeys(ranked[0].evaluation.summary["class_names"], curves.auc)
        figures = {
            "leaderboard.png": leaderboard_figure(rows, scoring=scoring, anchors=anchors),
            "roc.png": roc,
            "confusion_best.png": confusion_figure(ranked[0]),
        }
    if images is not None:
        figures["mistakes.png"] = mistakes_figure(images)
    names += list(figures) + (["predictions.csv"] if images is not None else [])
    names += ["best_head.joblib", "best_head.joblib.json"] if head is not None else []
    document = _document(
        ranked,
        rows,
        title=title,
        provenance=provenance,
        notes=notes,
        warnings=warnings,
        facts=facts,
        anchors=anchors,
        failures=failures,
        scoring=scoring,
        roc_per_class=roc_per_class,
        files=sorted(names, key=list(tables.FILES).index),
    )
    with staged(out_dir) as tmp:
        atomic.write_text(tmp / "leaderboard.json", tables.json_text(document))
        atomic.write_text(tmp / "leaderboard.csv", tables.csv_text(document))
        atomic.write_text(tmp / "leaderboard.md", tables.markdown(document))
        for name, fig in figures.items():
            save_png(fig, tmp / name)
        if images is not None:
            atomic.write_text(tmp / "predictions.csv", predictions_csv(images))
        if head is not None:
            save_head(head.estimator, tmp / "best_head.joblib", metadata=head.metadata)
    logger.info("wrote report of %d rows to %s", len(ranked), out_dir)
    keys = {
        "leaderboard.md": "markdown",
        "leaderboard.csv": "csv",
        "leaderboard.json": "json",
        "leaderboard.png": "leaderboard_plot",
        "roc.png": "roc",
        "confusion_best.png": "confusion",
        "predictions.csv": "predictions",
        "mistakes.png": "mistakes",
        "best_head.joblib": "head",
    }
    paths = {keys[name]: out_dir / name for name in names if name in keys}
    if head is not None:
        paths["sidecar"] = sidecar_path(out_dir / "best_head.joblib")
    return paths
