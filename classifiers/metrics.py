"""Test-split metrics for a fitted head: a JSON-safe summary plus the raw arrays for plots."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import (
    accuracy_score,
    auc,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

__all__ = ["Evaluation", "evaluate", "roc_points", "scores_for", "wilson_interval"]

#: z of a two-sided 95% interval.
Z95 = 1.959963984540054


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes:
        summary: JSON-safe dict (plain floats, ints, strings, lists, ``None``).
        y_true: True class indices, shape ``(n,)``.
        y_pred: Predicted class indices, shape ``(n,)``.
        scores: Output of :func:`scores_for`: ``(n,)`` for a two-class head (higher means
            ``score_classes[1]``), ``(n, len(score_classes))`` otherwise; ``None`` when the
            estimator has neither ``predict_proba`` nor ``decision_function``.
        score_classes: Class indices the score columns refer to (the estimator's ``classes_``).
    """

    summary: dict[str, Any]
    y_true: np.ndarray
    y_pred: np.ndarray
    scores: np.ndarray | None
    score_classes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def scores_for(estimator: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Continuous scores of a fitted classifier, for ROC curves.

    Uses ``predict_proba`` when the estimator has it, else ``decision_function``. Two-class
    output is reduced to one column, the score of ``estimator.classes_[1]``; otherwise the
    columns follow ``estimator.classes_``.

    Raises:
        TypeError: The estimator has neither method.
    """
    if hasattr(estimator, "predict_proba"):
        scores = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    elif hasattr(estimator, "decision_function"):
        scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
    else:
        raise TypeError(
            f"{type(estimator).__name__} has neither predict_proba nor decision_function; "
            "ROC scores need one of them"
        )
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]
    return scores


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95% for the default ``z``).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n
    successes, which matters for small test splits (50 images: 1.0 accuracy gives 0.929-1.0).

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``0..n``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0 or n successes one end is exactly 0 or 1 (rounding would leave it a hair inside).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _roc_auc(
    y_true: np.ndarray, scores: np.ndarray | None, score_classes: np.ndarray, reason: str | None
) -> tuple[float | None, str | None, str | None]:
    """Return (auc, average, reason-when-None)."""
    if scores is None:
        return None, None, reason
    if scores.ndim == 1:
        if len(score_classes) != 2:
            return None, None, "one-column scores but the head was not fitted on 2 classes"
        positive = y_true == score_classes[1]
        if positive.all() or not positive.any():
            return None, None, "the test split holds only one of the two classes"
        return float(roc_auc_score(positive, scores)), "binary", None
    # One-vs-rest, unweighted mean over classes that have positives and negatives in y_true.
    # Computed per class so that decision_function scores (which need not sum to 1) work too.
    per_class = []
    for column, cls in enumerate(score_classes):
        positive = y_true == cls
        if positive.any() and not positive.all():
            per_class.append(roc_auc_score(positive, scores[:, column]))
    if not per_class:
        return None, None, "no class has both positive and negative test items"
    average = "macro-ovr"
    if len(per_class) < len(score_classes):
        average = f"macro-ovr over {len(per_class)} of {len(score_classes)} classes"
    return float(np.mean(per_class)), average, None


def evaluate(
    estimator: BaseEstimator, X: np.ndarray, y: np.ndarray, *, class_names: list[str]
) -> Evaluation:
    """Evaluate a fitted classifier on ``(X, y)``; ``y`` holds indices into ``class_names``.

    The summary holds ``accuracy``, ``accuracy_ci95`` (its Wilson 95% interval ``[low,
    high]`` from the count of correct predictions), ``balanced_accuracy``, ``macro_f1``
    (unweighted mean F1 over the classes that occur in ``y`` or in the predictions,
    scikit-learn's default),
    ``roc_auc`` (binary AUC for two classes, else the unweighted one-vs-rest mean; ``None``
    with ``roc_auc_reason`` when it cannot be computed), ``roc_auc_average``, ``score_kind``,
    ``per_class`` (precision/recall/f1/support keyed by class name), ``confusion_matrix``
    (rows = true class, columns = predicted class, both in ``class_names`` order),
    ``class_names`` and ``n_samples``.

    Raises:
        ValueError: ``X`` and ``y`` lengths differ, ``y`` is empty, ``class_names`` is empty or
            has duplicates, or ``y`` holds a value outside ``range(len(class_names))``.
    """
    class_names = [str(name) for name in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and unique, got {class_names!r}")
    y_true = np.asarray(y)
    if y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y must be a non-empty 1-d array of class indices, got {y_true.shape}")
    if len(X) != len(y_true):
        raise ValueError(f"X has {len(X)} rows but y has {len(y_true)} labels")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y must hold integer class indices, got dtype {y_true.dtype}")
    n_classes = len(class_names)
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(
            f"y must hold indices in 0..{n_classes - 1} (one per class name), "
            f"got values from {y_true.min()} to {y_true.max()}"
        )

    y_pred = np.asarray(estimator.predict(X))
    score_classes = np.asarray(getattr(estimator, "classes_", np.arange(n_classes)))
    scores: np.ndarray | None
    reason: str | None = None
    score_kind: str | None
    try:
        scores = scores_for(estimator, X)
        score_kind = "predict_proba" if hasattr(estimator, "predict_proba") else "decision_function"
    except TypeError as exc:
        scores, score_kind, reason = None, None, str(exc)

    labels = np.arange(n_classes)
    with warnings.catch_warnings():
        # Expected on small or single-class test splits; the summary stays correct.
        warnings.filterwarnings("ignore", message=".*y_pred contains classes not in y_true.*")
        warnings.filterwarnings("ignore", message=".*A single label was found in.*")
        balanced = balanced_accuracy_score(y_true, y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = np.union1d(np.unique(y_true), np.unique(y_pred))
    macro_f1 = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    roc_auc, roc_average, roc_reason = _roc_auc(y_true, scores, score_classes, reason)

    summary: dict[str, Any] = {
        "n_samples": len(y_true),
        "accuracy": _float(accuracy_score(y_true, y_pred)),
        "accuracy_ci95": list(wilson_interval(int((y_true == y_pred).sum()), len(y_true))),
        "balanced_accuracy": _float(balanced),
        "macro_f1": _float(macro_f1),
        "roc_auc": None if roc_auc is None else _float(roc_auc),
        "roc_auc_average": roc_average,
        "roc_auc_reason": roc_reason,
        "score_kind": score_kind,
        "class_names": class_names,
        "per_class": {
            name: {
                "precision": _float(precision[i]),
                "recall": _float(recall[i]),
                "f1": _float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    return Evaluation(
        summary=summary,
        y_true=y_true,
        y_pred=y_pred,
        scores=scores,
        score_classes=score_classes,
    )


def roc_points(evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray, float] | None:
    """ROC curve ``(fpr, tpr, auc)`` for plotting, or ``None`` when not computable.

    Two classes: the ordinary binary curve. More classes: the micro-averaged one-vs-rest
    curve (every (item, class) pair pooled), so its AUC can differ from the macro
    ``summary["roc_auc"]``.
    """
    scores, y_true, classes = evaluation.scores, evaluation.y_true, evaluation.score_classes
    if scores is None:
        return None
    if scores.ndim == 1:
        if len(classes) != 2:
            return None
        truth = (y_true == classes[1]).astype(np.int8)
        flat_scores = scores
    else:
        truth = (y_true[:, None] == classes[None, :]).astype(np.int8).ravel()
        flat_scores = scores.ravel()
    if truth.all() or not truth.any():
        return None
    fpr, tpr, _ = roc_curve(truth, flat_scores)
    return fpr, tpr, float(auc(fpr, tpr))
