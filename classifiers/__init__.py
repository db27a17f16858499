"""Classical heads on cached bottleneck features: registry, split, sweep, metrics.

Imports numpy and scikit-learn only (never torch, never featurestore), so heads train and
predict on machines without torch. Reports and saved heads are the application's business
(``featurestore.report``, ``featurestore.headfile``).
"""

import os

# The same numbers under any load (classifiers.linear's docstring): MKL's strict conditional
# numerical reproducibility makes its matrix products independent of the thread count. MKL reads
# this at its first call, so it is set on import, before any; a value the user chose is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from classifiers.folds import FoldPlan, plan_folds
from classifiers.heads import HEADS, HeadSpec, get_head, list_heads
from classifiers.linear import LinearHead, LinearHeadCV
from classifiers.metrics import Evaluation, evaluate, roc_points, scores_for, wilson_interval
from classifiers.split import hash_unit, stratified_hash_split
from classifiers.sweep import (
    FeatureSet,
    HeadFailure,
    SweepResult,
    SweepResults,
    rank_key,
    run_sweep,
)

__all__ = [
    "HEADS",
    "Evaluation",
    "FeatureSet",
    "FoldPlan",
    "HeadFailure",
    "HeadSpec",
    "LinearHead",
    "LinearHeadCV",
    "SweepResult",
    "SweepResults",
    "evaluate",
    "get_head",
    "hash_unit",
    "list_heads",
    "plan_folds",
    "rank_key",
    "roc_points",
    "run_sweep",
    "scores_for",
    "stratified_hash_split",
    "wilson_interval",
]
