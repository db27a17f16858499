"""What the report says about the data and the choice: the split, class balance and coverage,
skipped files, transfer against raw pixels, published anchors.

Every sentence here is computed from numbers the report also shows; nothing is chosen by the
held-out split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from featurestore.report.rows import accuracy_interval

__all__ = [
    "IMBALANCE_RATIO",
    "IMBALANCE_RULE",
    "Anchor",
    "DataFacts",
    "anchor_notes",
    "collect",
    "coverage_warnings",
    "data_notes",
    "data_warnings",
    "imbalance_warning",
    "interval_text",
    "pixel_note",
    "test_best_note",
]

#: Classes are called imbalanced when the largest has more than this many times the images
#: of the smallest, in the training split or in all the images swept (training + evaluation).
#: The evaluation split alone is not judged: a random 20% of a balanced set varies by chance
#: (digits: 27 to 44 test images per class).
IMBALANCE_RATIO = 1.5
IMBALANCE_RULE = (
    f"the largest class has more than {IMBALANCE_RATIO:g} times the images of the smallest, "
    "in the training split or in all the images swept"
)


@dataclass(frozen=True)
class Anchor:
    """A published result to compare with: ``name`` reached ``accuracy`` on this data."""

    name: str
    accuracy: float


@dataclass(frozen=True)
class DataFacts:
    """What the report states about the data a sweep ran on.

    ``train_counts``/``test_counts``: images per class, in ``class_names`` order.
    ``test_fraction``/``seed``: set when a hash split made the evaluation side.
    ``skipped``: (path, reason) of every image left out.
    """

    source: str
    split: str
    class_names: list[str]
    train_counts: list[int]
    test_counts: list[int]
    test_fraction: float | None = None
    seed: int | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def interval_text(interval: tuple[float, float] | None) -> str:
    """``(0.9, 0.97)`` -> ``95% CI 0.9000-0.9700``."""
    if interval is None:
        return "95% CI n/a"
    return f"95% CI {interval[0]:.4f}-{interval[1]:.4f}"


def _ratio(counts: Sequence[int], names: Sequence[str]) -> tuple[float, str] | None:
    present = [(c, n) for c, n in zip(counts, names, strict=True) if c > 0]
    if len(present) < 2:
        return None
    (low, low_name), (high, high_name) = min(present), max(present)
    text = f"{high} '{high_name}' vs {low} '{low_name}' ({high / low:.1f}x)"
    return high / low, text


def imbalance_warning(facts: DataFacts) -> str | None:
    """The imbalance warning (rule: :data:`IMBALANCE_RULE`), or ``None`` when balanced; it
    also gives the evaluation split's counts."""
    total = [a + b for a, b in zip(facts.train_counts, facts.test_counts, strict=True)]
    judged = {"training split": facts.train_counts, "all images": total}
    found = {side: _ratio(counts, facts.class_names) for side, counts in judged.items()}
    if not any(f and f[0] > IMBALANCE_RATIO for f in found.values()):
        return None
    shown = {**found, "evaluation split": _ratio(facts.test_counts, facts.class_names)}
    parts = [f"{side} {f[1]}" for side, f in shown.items() if f]
    return (
        f"Classes are imbalanced ({IMBALANCE_RULE}): {'; '.join(parts)}. Accuracy rewards the "
        "large classes: read balanced accuracy and the per-class recall; `--class-weight "
        "balanced` and `--scoring balanced_accuracy` weigh every class equally."
    )


def coverage_warnings(facts: DataFacts) -> list[str]:
    """Classes that only one side of the split holds."""
    pairs = list(zip(facts.class_names, facts.train_counts, facts.test_counts, strict=True))
    only_test = [(c, te) for c, tr, te in pairs if tr == 0 and te > 0]
    only_train = [c for c, tr, te in pairs if te == 0 and tr > 0]
    out = []
    if only_test:
        listed = ", ".join(f"'{c}' ({n} image{'s' * (n != 1)})" for c, n in only_test)
        out.append(
            f"Present only in the evaluation split: {listed}. No head saw them in training, "
            "so they can never be predicted: their recall is 0 and they lower every row's "
            "accuracy alike."
        )
    if only_train:
        listed = ", ".join(f"'{c}'" for c in only_train)
        out.append(
            f"Present only in the training split: {listed}. The evaluation says nothing about "
            "them (their test recall is undefined)."
        )
    return out


def data_warnings(facts: DataFacts) -> list[str]:
    """Imbalance and class-coverage warnings."""
    found = imbalance_warning(facts)
    return ([found] if found else []) + coverage_warnings(facts)


def data_notes(facts: DataFacts) -> list[str]:
    """The split (with its fraction and seed when hashed) and the skipped files."""
    n_train, n_test = sum(facts.train_counts), sum(facts.test_counts)
    notes = [
        f"Split: {facts.split}; {n_train} training and {n_test} evaluation images, "
        f"{len(facts.class_names)} classes."
    ]
    if facts.skipped:
        shown = "; ".join(f"{path}: {reason}" for path, reason in facts.skipped[:5])
        more = f" (and {len(facts.skipped) - 5} more)" if len(facts.skipped) > 5 else ""
        notes.append(f"{len(facts.skipped)} file(s) left out (undecodable): {shown}{more}")
    return notes


def _side(columns: int) -> int:
    """Side of a square RGB image of ``columns`` values."""
    return round((columns / 3) ** 0.5)


def pixel_note(ranked: Sequence[Any]) -> str | None:
    """Transfer against the raw-pixel baseline: the best of each by the selection rule."""
    pixels = [r for r in ranked if r.feature_set.startswith("pixels")]
    features = [r for r in ranked if not r.feature_set.startswith("pixels")]
    if not pixels or not features:
        return None
    f, p = features[0], pixels[0]
    side = _side(p.n_features)
    diff = f.accuracy - p.accuracy
    who = "Pretrained features beat" if diff > 0 else "Pretrained features do not beat"
    return (
        f"{who} raw pixels: the best pretrained-feature row by CV, {f.feature_set} / {f.head}, "
        f"has test accuracy {f.accuracy:.4f} ({interval_text(accuracy_interval(f))}); the best "
        f"raw-pixel row by CV, {p.feature_set} / {p.head} (each image squashed to "
        f"{side}x{side} RGB, {p.n_features} columns), {p.accuracy:.4f} "
        f"({interval_text(accuracy_interval(p))}); difference {diff:+.4f}."
    )


def anchor_notes(chosen: Any, anchors: Sequence[Anchor]) -> list[str]:
    """The chosen row's test accuracy against each published anchor, with its interval."""
    interval = accuracy_interval(chosen)
    notes = []
    for anchor in anchors:
        inside = interval is not None and interval[0] <= anchor.accuracy <= interval[1]
        verdict = (
            "inside the chosen row's interval: this test split cannot tell them apart"
            if inside
            else "outside the chosen row's interval"
        )
        notes.append(
            f"Published anchor {anchor.name}: {anchor.accuracy:.4f}. Chosen row "
            f"{chosen.feature_set} / {chosen.head}: {chosen.accuracy:.4f} "
            f"({interval_text(interval)}), {chosen.accuracy - anchor.accuracy:+.4f}; the anchor "
            f"lies {verdict}."
        )
    return notes


def test_best_note(ranked: Sequence[Any]) -> str | None:
    """When another row has a higher test accuracy than the chosen one, say how it compares
    with the chosen row's interval (it was not chosen because selection ignores the test)."""
    chosen = ranked[0]
    top = max(ranked, key=lambda r: r.accuracy)
    if top.accuracy <= chosen.accuracy:
        return None
    interval = accuracy_interval(chosen)
    inside = interval is not None and top.accuracy <= interval[1]
    where = (
        "inside the chosen row's 95% interval: on this test split the difference is noise"
        if inside
        else "above the chosen row's 95% interval"
    )
    return (
        f"The highest test accuracy, {top.accuracy:.4f} ({top.feature_set} / {top.head}, CV "
        f"{top.cv_score:.4f}), lies {where}. It was not chosen: the held-out split only "
        "reports, it never selects."
    )


def collect(
    ranked: Sequence[Any],
    *,
    facts: DataFacts | None = None,
    anchors: Sequence[Anchor] = (),
    n_failed: int = 0,
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """The report's (warnings, notes): the caller's first, then the data's, failed fits, the
    raw-pixel comparison and the anchors."""
    out_warnings = [str(w) for w in warnings]
    out_notes = [str(n) for n in notes]
    if facts is not None:
        out_warnings += data_warnings(facts)
        out_notes = data_notes(facts) + out_notes
    if n_failed:
        out_warnings.append(
            f"{n_failed} fit(s) failed and are listed under Failed heads; the other "
            f"{len(ranked)} row(s) are complete."
        )
    if ranked:
        found = pixel_note(ranked)
        out_notes += ([found] if found else []) + anchor_notes(ranked[0], anchors)
    return out_warnings, out_notes
