"""What calibrating the chosen SVM's probabilities costs as classes grow, and what it gives.

A sweep whose chosen head is an SVM fits a calibrator on the search's out-of-fold decision
scores (``classifiers.calibration``). Side by side on the same scores, per class count:

- **matrix scaling**: ``LogisticRegression(max_iter=1000)`` on the score vector, a weight per
  pair of classes (what every calibration was before ``MATRIX_SCALING_MAX_WORK``);
- **temperature scaling**: ``TemperatureScaling``, one factor;
- which of the two ``ScoreCalibrated`` uses at that size.

Rows: ``heads_scale.hard``'s recipe with class centres ``--spread`` apart (1.2: about 0.95 test
accuracy at 1,000 classes), ``--rows-per-class`` rows per class, 80/20 split; the scores are
the registered ``linear_svm`` head's search (C over 1e-6..1e6, 5 folds) on the training part.
Each calibrator is scored by its log-loss on the test part (lower is better; ``ln(classes)``
is a uniform guess).

    python benchmarks/calibration_scale.py --classes 10 100 1000
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from _common import machine, print_machine
from heads_scale import synthetic_set
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from classifiers.calibration import MATRIX_SCALING_MAX_WORK, TemperatureScaling, calibrator_for
from classifiers.heads import get_head


def _scores(k: int, rows_per_class: int, width: int, spread: float) -> dict[str, Any]:
    fs = synthetic_set(k * rows_per_class, width, k, spread=spread)
    start = time.perf_counter()
    searched = get_head("linear_svm").build().fit(fs.X_train, fs.y_train)
    search = searched[-1]
    chosen = Pipeline([*searched.steps[:-1], ("clf", search.best_estimator_)])
    return {
        "oof": search.cv_decision_.astype(np.float64),
        "test": chosen.decision_function(fs.X_test).astype(np.float64),
        "y": fs.y_train,
        "y_test": fs.y_test,
        "search_s": time.perf_counter() - start,
        "accuracy": float(np.mean(chosen.predict(fs.X_test) == fs.y_test)),
    }


def _calibrated(calibrator: Any, data: dict[str, Any]) -> tuple[float, float]:
    start = time.perf_counter()
    calibrator.fit(data["oof"], data["y"])
    seconds = time.perf_counter() - start
    proba = calibrator.predict_proba(data["test"])
    return seconds, log_loss(data["y_test"], proba, labels=calibrator.classes_)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rows-per-class", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--spread", type=float, default=1.2)
    args = parser.parse_args(argv)
    print_machine(machine(torch_too=False))
    print(f"matrix scaling up to rows x classes^2 = {MATRIX_SCALING_MAX_WORK:,}")
    print(
        "| classes | training rows | SVM search s | test acc | matrix s | matrix log-loss "
        "| temperature s | temperature log-loss | used |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for k in args.classes:
        with threadpool_limits(limits=1):
            data = _scores(k, args.rows_per_class, args.width, args.spread)
            m_s, m_ll = _calibrated(LogisticRegression(max_iter=1000), data)
            t_s, t_ll = _calibrated(TemperatureScaling(), data)
        used = type(calibrator_for(data["oof"])).__name__
        print(
            f"| {k:,} | {len(data['y']):,} | {data['search_s']:.1f} | {data['accuracy']:.4f} "
            f"| {m_s:.2f} | {m_ll:.4f} | {t_s:.2f} | {t_ll:.4f} | {used} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
