"""Which row of a sweep is chosen, and by what measure: the selection rule (used by the
experiment and the report) and the allowed ``--scoring`` and ``--class-weight`` values.

The held-out split never takes part: rows are ranked by their cross-validation score on the
training split alone. The experiment saves rank 1 as the best head; the report ranks its
leaderboard with the same key, so the head on disk is always the report's rank 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["CLASS_WEIGHTS", "SCORINGS", "SELECTION_RULE", "cv_spread", "rank", "selection_key"]

#: What the CV score may measure (``--scoring``); the first is the default.
SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro")
#: ``--class-weight`` values besides none (unweighted).
CLASS_WEIGHTS = ("balanced",)

#: CV means closer than this are a tie (fold scores are multiples of 1/n; their means can
#: differ in the last bits depending on the order of the additions).
TIE_TOLERANCE_DIGITS = 9

SELECTION_RULE = (
    "rows are ranked by their mean cross-validation score on the training split (the "
    "held-out split is evaluated once per row and never used to choose); means equal to "
    f"{TIE_TOLERANCE_DIGITS} decimals tie, and a tie goes to the smaller spread of the fold "
    "scores when the sweep recorded it, then to the row that came first in the sweep "
    "(backbones in the order given, then combinations, then raw pixels; heads in registry "
    "order)"
)


def cv_spread(result: Any) -> float | None:
    """The standard deviation of the fold scores, when the sweep recorded it."""
    value = getattr(result, "cv_std", None)
    return None if value is None else float(value)


def selection_key(result: Any) -> tuple[float, float]:
    """Sort key of :data:`SELECTION_RULE` (use with a stable sort over the sweep's order)."""
    spread = cv_spread(result)
    return (-round(float(result.cv_score), TIE_TOLERANCE_DIGITS), 0.0 if spread is None else spread)


def rank(results: Iterable[Any]) -> list[Any]:
    """``results`` (in sweep order) ranked by :data:`SELECTION_RULE`; the first is chosen."""
    return sorted(results, key=selection_key)
