"""Classical heads on cached bottleneck features: registry, split, sweep, metrics, reports.

Imports numpy, scikit-learn, joblib and matplotlib only (never torch), so heads train and
predict on machines without torch.
"""

from classifiers.folds import FoldPlan, plan_folds
from classifiers.heads import HEADS, HeadSpec, get_head, list_heads
from classifiers.linear import LinearHead, LinearHeadCV
from classifiers.metrics import Evaluation, evaluate, roc_points, scores_for, wilson_interval
from classifiers.report import write_report
from classifiers.saved import HeadIntegrityError, load_head, save_head, sidecar_path
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
    "HeadIntegrityError",
    "HeadSpec",
    "LinearHead",
    "LinearHeadCV",
    "SweepResult",
    "SweepResults",
    "evaluate",
    "get_head",
    "hash_unit",
    "list_heads",
    "load_head",
    "plan_folds",
    "rank_key",
    "roc_points",
    "run_sweep",
    "save_head",
    "scores_for",
    "sidecar_path",
    "stratified_hash_split",
    "wilson_interval",
    "write_report",
]
