"""One leaderboard row per sweep result: scores, the test accuracy's 95% interval, row notes.

Fields a newer ``classifiers`` may put on a :class:`~classifiers.sweep.SweepResult` are read
when present and computed here otherwise: ``cv_std`` (spread of the fold scores), ``scoring``
(what the CV score measures), ``notes`` (grid edge, imbalance, ...), and
``evaluation.summary["accuracy_ci95"]`` (Wilson 95% interval of the test accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classifiers.heads import HEADS
from featurestore.report.selection import cv_spread

__all__ = [
    "SCORINGS",
    "FailedHead",
    "accuracy_interval",
    "grid_edge_notes",
    "json_safe",
    "one_answer_warning",
    "params_text",
    "result_row",
    "row_notes",
    "scoring_label",
    "scoring_of",
    "test_score",
    "wilson_interval",
]

#: CV scoring name -> the evaluation summary's key for the same metric on the test split.
SCORINGS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "f1_macro": "macro_f1",
}
_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1_macro": "macro-F1"}
#: The 0.975 quantile of the standard normal distribution.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class FailedHead:
    """A (feature set, head) fit that raised: the report lists it with its error."""

    feature_set: str
    head: str
    error: str
    seconds: float = 0.0


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95% with the default ``z``).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n
    successes and for small ``n``.

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``0..n``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(result: Any) -> tuple[float, float] | None:
    """95% interval of the test accuracy: the sweep's own (``accuracy_ci95`` in the
    evaluation summary) when present, else the Wilson interval computed here."""
    summary = result.evaluation.summary
    given = summary.get("accuracy_ci95")
    if isinstance(given, dict):
        given = (given.get("low"), given.get("high"))
    if given is not None and len(given) == 2 and None not in given:
        return float(given[0]), float(given[1])
    n = int(summary.get("n_samples") or result.n_test)
    accuracy = summary.get("accuracy")
    if accuracy is None or n < 1:
        return None
    return wilson_interval(round(accuracy * n), n)


def scoring_of(result: Any, default: str = "accuracy") -> str:
    """What the result's CV score measures (``accuracy`` unless the sweep says otherwise)."""
    return str(getattr(result, "scoring", None) or default)


def scoring_label(scoring: str) -> str:
    """``balanced_accuracy`` -> ``balanced accuracy`` (for titles and table headers)."""
    return _LABELS.get(scoring, scoring)


def test_score(result: Any, scoring: str) -> float | None:
    """The test split's value of the metric the CV score measures."""
    return result.evaluation.summary.get(SCORINGS.get(scoring, "accuracy"))


def _short(param: str) -> str:
    return param.split("__")[-1]


def params_text(params: dict[str, Any]) -> str:
    """``{"clf__C": 0.01}`` -> ``C=0.01`` (``defaults`` when empty)."""
    if not params:
        return "defaults"
    return ", ".join(f"{_short(k)}={v}" for k, v in sorted(params.items()))


def _numeric(values: Sequence[Any]) -> bool:
    return (
        all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
        and len(set(values)) >= 2
    )


def grid_edge_notes(result: Any) -> list[str]:
    """A note for each chosen numeric parameter that is the smallest or largest value of the
    grid searched (the result's ``grid`` when it has one, else the registered head's)."""
    grid = getattr(result, "grid", None)
    if grid is None:
        spec = HEADS.get(result.head)
        grid = spec.grid if spec is not None else {}
    notes = []
    for param, value in sorted(result.best_params.items()):
        values = list(grid.get(param, ()))
        if not _numeric(values) or value not in values:
            continue
        low, high = min(values), max(values)
        if value not in (low, high):
            continue
        side = "smallest" if value == low else "largest"
        tried = ", ".join(str(v) for v in sorted(values))
        text = f"{_short(param)}={value} is the {side} value its grid tried ({tried})"
        if isinstance(value, float):
            text += f": a {'smaller' if side == 'smallest' else 'larger'} one might do better"
        notes.append(text)
    return notes


def row_notes(result: Any) -> list[str]:
    """The sweep's own notes on a result when it records them, else the grid-edge notes."""
    given = getattr(result, "notes", None)
    return [str(n) for n in given] if given is not None else grid_edge_notes(result)


def one_answer_warning(summary: dict[str, Any], scoring: str) -> str | None:
    """A warning when the row gave every held-out image the same class while the held-out
    split has several: it tells the classes apart no better than a constant. Scored on
    accuracy, a constant earns the largest class's share of the training split, so the hint
    names the scoring that gives it chance."""
    matrix = np.asarray(summary["confusion_matrix"])
    if matrix.ndim != 2 or np.count_nonzero(matrix.sum(axis=1)) < 2:
        return None
    predicted = np.flatnonzero(matrix.sum(axis=0))
    if len(predicted) != 1:
        return None
    name = summary["class_names"][predicted[0]]
    text = f"predicts one class, '{name}', for all {int(matrix.sum())} held-out images"
    if scoring == "accuracy":
        text += (
            ": on accuracy a constant answer scores the largest class's share; "
            "`--scoring balanced_accuracy` scores it at chance"
        )
    return text


def result_row(rank: int, result: Any, *, chosen: bool, scoring: str) -> dict[str, Any]:
    """The JSON-safe row of one result (``rank`` by the selection rule)."""
    summary = result.evaluation.summary
    interval = accuracy_interval(result)
    one_answer = one_answer_warning(summary, scoring_of(result, scoring))
    return {
        "rank": rank,
        "chosen": chosen,
        "feature_set": result.feature_set,
        "head": result.head,
        "params": json_safe(result.best_params),
        "scoring": scoring_of(result, scoring),
        "cv_score": result.cv_score,
        "cv_std": cv_spread(result),
        "cv_folds": result.cv_folds,
        "cv_note": result.cv_note,
        "accuracy": summary["accuracy"],
        "accuracy_ci95": None if interval is None else list(interval),
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
        "notes": row_notes(result),
        "warnings": list(result.warnings) + ([one_answer] if one_answer else []),
    }


def json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats to plain JSON values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return repr(value)
