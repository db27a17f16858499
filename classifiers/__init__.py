"""Classical heads on cached bottleneck features: registry, split, sweep, metrics.

Imports numpy and scikit-learn only (never torch, never featurestore), so heads train and
predict on machines without torch. Reports and saved heads are the application's business
(``featurestore.report``, ``featurestore.headfile``).
"""

from classifiers.heads import HEADS, HeadSpec, get_head, list_heads
from classifiers.metrics import Evaluation, evaluate, roc_points, scores_for
from classifiers.split import hash_unit, stratified_hash_split
from classifiers.sweep import FeatureSet, SweepResult, rank_key, run_sweep

__all__ = [
    "HEADS",
    "Evaluation",
    "FeatureSet",
    "HeadSpec",
    "SweepResult",
    "evaluate",
    "get_head",
    "hash_unit",
    "list_heads",
    "rank_key",
    "roc_points",
    "run_sweep",
    "scores_for",
    "stratified_hash_split",
]
