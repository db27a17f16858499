"""The report of a sweep, one module per artefact, written all-or-nothing by :func:`write_report`.

* :mod:`~featurestore.report.selection`: the selection rule (CV on the training split only)
  and the measures it may use;
* :mod:`~featurestore.report.rows`: one row per result (CV spread, the test accuracy's Wilson
  95% interval, grid-edge notes);
* :mod:`~featurestore.report.notes`: what is said about the data (split, imbalance, classes on
  one side only, skipped files) and the comparisons (raw pixels, anchors);
* :mod:`~featurestore.report.tables`: ``leaderboard.{json,md,csv}``;
* :mod:`~featurestore.report.plots`: ``leaderboard.png``, ``roc.png``, ``confusion_best.png``;
* :mod:`~featurestore.report.images`: ``predictions.csv`` and ``mistakes.png``;
* :mod:`~featurestore.report.folder`: the folder check and the staged, swapped-in write;
* :mod:`~featurestore.report.writer`: :func:`write_report`, which puts them together.

Importing this package is light (the command line reads the allowed ``--scoring`` values from
:mod:`~featurestore.report.selection` at start-up); the names below load their modules, with
scikit-learn and matplotlib, on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Anchor": "notes",
    "DataFacts": "notes",
    "EvaluatedImages": "images",
    "FailedHead": "rows",
    "HeadToSave": "writer",
    "SELECTION_RULE": "selection",
    "check_output": "folder",
    "environment": "writer",
    "rank": "selection",
    "write_report": "writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
