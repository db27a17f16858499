"""The report's text files, all rendered from one JSON document (so they cannot disagree):
``leaderboard.json`` (the document), ``leaderboard.md`` and ``leaderboard.csv``."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from featurestore.report.notes import interval_text
from featurestore.report.rows import json_safe, params_text, scoring_label

__all__ = ["CSV_COLUMNS", "FILES", "csv_text", "json_text", "markdown"]

CSV_COLUMNS = (
    "rank",
    "chosen",
    "feature_set",
    "head",
    "scoring",
    "cv_score",
    "cv_std",
    "cv_folds",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "balanced_accuracy",
    "macro_f1",
    "roc_auc",
    "fit_seconds",
    "predict_seconds",
    "n_train",
    "n_test",
    "n_features",
    "params",
    "notes",
    "error",
)

#: What each file of a report folder holds (listed in the Markdown's "Files" section).
FILES = {
    "leaderboard.md": "this report",
    "leaderboard.csv": "one line per row (failed heads too, with their error)",
    "leaderboard.json": "everything here, with per-class metrics and confusion matrices of "
    "every row, and the provenance",
    "leaderboard.png": "CV score beside held-out test score (95% interval) of every row, "
    "anchors as lines",
    "roc.png": "ROC curves of the chosen row, one-vs-rest per class (binary: the positive "
    "class); the AUC in its title is the table's",
    "confusion_best.png": "confusion matrix of the chosen row, every class named",
    "predictions.csv": "every held-out image with its true label, the chosen row's "
    "prediction and its probability for each class",
    "mistakes.png": "the chosen row's most confident mistakes, with true and predicted labels",
    "best_head.joblib": "the chosen row refitted on the training split (a pickle: load only "
    "from trusted sources), for `featurestore predict`",
    "best_head.joblib.json": "its sidecar: extractor options and fingerprints, class names, "
    "the head file's sha256",
}


def json_text(document: dict[str, Any]) -> str:
    """The document as indented JSON, each list of numbers on one line (a confusion matrix
    one line per class, not one per cell: at 1,000 classes 4.6 MB a row instead of 18)."""
    flat: list[str] = []
    mark = uuid.uuid4().hex  # placeholders no string in the document can match

    def fold(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fold(v) for k, v in value.items()}
        if isinstance(value, list):
            if value and all(_number(v) for v in value):
                flat.append(json.dumps(value, allow_nan=False))
                return f"{mark}{len(flat) - 1}"
            return [fold(v) for v in value]
        return value

    text = json.dumps(fold(json_safe(document)), indent=2, allow_nan=False)
    return re.sub(f'"{mark}(\\d+)"', lambda m: flat[int(m.group(1))], text) + "\n"


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(
    header: Sequence[str], numeric: Sequence[bool], lines: Sequence[Sequence[str]]
) -> list[str]:
    """A Markdown table; ``numeric`` columns are right-aligned."""
    align = ["---:" if right else "---" for right in numeric]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in line) + " |" for line in lines]
    return [*out, ""]


def _chosen_section(document: dict[str, Any]) -> list[str]:
    chosen, selection = document.get("chosen"), document["selection"]
    if chosen is None:
        return ["## Chosen model", "", "None: every head failed (see Failed heads).", ""]
    label = scoring_label(chosen["scoring"])
    spread = "" if chosen["cv_std"] is None else f" ± {chosen['cv_std']:.4f} (fold spread)"
    lines = [
        "## Chosen model",
        "",
        f"**{chosen['feature_set']} / {chosen['head']}** ({params_text(chosen['params'])}), "
        f"rank 1 of {len(document['rows'])} rows.",
        "",
        f"- Chosen by {chosen['cv_folds']}-fold cross-validated {label} on the training "
        f"split: **{_fmt(chosen['cv_score'])}**{spread}.",
        f"- Held-out evaluation ({chosen['n_test']} images; every row is evaluated once and "
        f"this split never chooses): accuracy **{_fmt(chosen['accuracy'])}** "
        f"({interval_text(chosen['accuracy_ci95'])}, Wilson), balanced accuracy "
        f"{_fmt(chosen['balanced_accuracy'])}, macro-F1 {_fmt(chosen['macro_f1'])}, "
        f"ROC-AUC {_fmt(chosen['roc_auc'])}"
        + (f" ({chosen['roc_auc_average']})" if chosen.get("roc_auc_average") else "")
        + ".",
        f"- Selection rule: {selection['rule']}.",
    ]
    lines += [f"- {note}" for note in chosen["notes"]]
    if "best_head.joblib" in document["files"]:
        lines.append(
            "- Saved as `best_head.joblib` (sidecar `best_head.joblib.json`); its per-image "
            "predictions are in `predictions.csv`."
        )
    return [*lines, ""]


def _leaderboard(document: dict[str, Any]) -> list[str]:
    rows = document["rows"]
    if not rows:
        return []
    label = scoring_label(document["selection"]["scoring"])
    header = [
        "rank",
        "feature set",
        "head",
        f"CV {label}",
        "CV spread",
        "test acc",
        "test acc 95% CI",
        "balanced acc",
        "macro-F1",
        "ROC-AUC",
        "fit s",
        "params",
    ]
    lines = []
    for row in rows:
        interval = row["accuracy_ci95"]
        lines.append(
            [
                f"**{row['rank']}**" if row["chosen"] else str(row["rank"]),
                row["feature_set"],
                row["head"],
                _fmt(row["cv_score"]),
                "n/a" if row["cv_std"] is None else f"± {row['cv_std']:.4f}",
                _fmt(row["accuracy"]),
                "n/a" if interval is None else f"{interval[0]:.4f}-{interval[1]:.4f}",
                _fmt(row["balanced_accuracy"]),
                _fmt(row["macro_f1"]),
                _fmt(row["roc_auc"]),
                _fmt(row["fit_seconds"], 2),
                params_text(row["params"]),
            ]
        )
    title = f"## Leaderboard (ranked by CV {label}; the held-out columns only report)"
    numeric = [True, False, False, *[True] * 8, False]
    return [title, "", *_table(header, numeric, lines)]


def _per_class(document: dict[str, Any]) -> list[str]:
    chosen = document.get("chosen")
    if chosen is None:
        return []
    data = document.get("data") or {}
    train = dict(zip(data.get("class_names", []), data.get("train_counts", []), strict=True))
    aucs = chosen.get("roc_auc_per_class") or {}
    lines = []
    for name, m in chosen["per_class"].items():
        lines.append(
            [
                name,
                str(train.get(name, "n/a")),
                str(m["support"]),
                _fmt(m["precision"]),
                _fmt(m["recall"]) if m["support"] else "n/a",
                _fmt(m["f1"]),
                _fmt(aucs.get(name)),
            ]
        )
    header = ["class", "train images", "test images", "precision", "recall", "F1", "ROC-AUC"]
    return [
        "## Per-class results of the chosen model (held-out split)",
        "",
        *_table(header, [False, *[True] * 6], lines),
    ]


def _failures(document: dict[str, Any]) -> list[str]:
    failures = document["failures"]
    if not failures:
        return []
    lines = [[f["feature_set"], f["head"], f["error"]] for f in failures]
    return [
        "## Failed heads",
        "",
        "These fits raised an error; every other row is complete.",
        "",
        *_table(["feature set", "head", "error"], [False] * 3, lines),
    ]


def _bullets(title: str, items: Sequence[str]) -> list[str]:
    return [f"## {title}", "", *[f"- {item}" for item in items], ""] if items else []


def _caveats(document: dict[str, Any]) -> list[str]:
    rows = document["rows"]
    items = sorted({f"{r['feature_set']}: {r['cv_note']}" for r in rows if r["cv_note"]})
    for r in rows:
        where = f"{r['feature_set']} / {r['head']}"
        items += [f"{where}: {n}" for n in (r["notes"] if not r["chosen"] else [])]
        items += [f"{where}: {w}" for w in r["warnings"]]
    return _bullets("Caveats", items)


def markdown(document: dict[str, Any]) -> str:
    """The Markdown report: chosen model, warnings, leaderboard, per-class results, failed
    heads, notes, caveats, files and provenance."""
    lines = [f"# {document['title']}", ""]
    lines += _chosen_section(document)
    lines += _bullets("Warnings", document["warnings"])
    lines += _leaderboard(document)
    lines += _per_class(document)
    lines += _failures(document)
    lines += _bullets("Notes", document["notes"])
    lines += _caveats(document)
    lines += _bullets("Files", [f"`{name}`: {text}" for name, text in document["files"].items()])
    lines += [
        "## Provenance",
        "",
        "```json",
        json.dumps(json_safe(document["provenance"]), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def csv_text(document: dict[str, Any]) -> str:
    """One line per row in rank order, then one per failed head (rank empty, error set)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in document["rows"]:
        interval = row["accuracy_ci95"] or [None, None]
        writer.writerow(
            {
                **row,
                "chosen": int(row["chosen"]),
                "accuracy_ci_low": interval[0],
                "accuracy_ci_high": interval[1],
                "params": json.dumps(row["params"], sort_keys=True),
                "notes": " | ".join(row["notes"]),
                "error": "",
            }
        )
    for failure in document["failures"]:
        writer.writerow({**failure, "rank": "", "chosen": 0})
    return buffer.getvalue()
