"""A sweep end to end: feature sets, split, heads, report, best head and its sidecar.

:func:`run_experiment` is what ``featurestore sweep`` and ``benchmarks/sweep.py`` run: it
extracts (through the cache) every feature set the caller names, splits the source (see
:mod:`featurestore.featuresets`), fits every head by cross-validation on the training split
(:func:`classifiers.sweep.run_sweep`), evaluates each once on the held-out split, writes the
report (:mod:`featurestore.report`) and saves the best head with its :class:`HeadCard`
(:mod:`featurestore.headfile`). It returns a value; it prints nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifiers.calibration import with_probabilities
from classifiers.sweep import SweepResult, run_sweep
from featurestore.errors import OptionError
from featurestore.extractor import ExtractorRecord
from featurestore.featuresets import SweepData, build_sweep_data
from featurestore.headfile import HeadCard, save_head_card
from featurestore.report import write_report

__all__ = ["Anchor", "ExperimentResult", "parse_anchor", "run_experiment"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Anchor:
    """A published result to compare with: ``name`` reached ``accuracy`` on this data."""

    name: str
    accuracy: float


def parse_anchor(text: str) -> Anchor:
    """``"NAME=ACCURACY"`` -> :class:`Anchor` (the name may itself hold ``=``)."""
    name, _, value = text.rpartition("=")
    try:
        accuracy = float(value)
    except ValueError:
        raise OptionError(f"--anchor takes NAME=ACCURACY, got {text!r}") from None
    if not name.strip():
        raise OptionError(f"--anchor takes NAME=ACCURACY, got {text!r}")
    return Anchor(name.strip(), accuracy)


@dataclass
class ExperimentResult:
    """What a sweep produced: every result (best first), its data, notes and files."""

    results: list[SweepResult]
    data: SweepData
    notes: list[str]
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> SweepResult:
        return self.results[0]


def sweep_notes(
    data: SweepData, results: Sequence[SweepResult], anchors: Sequence[Anchor]
) -> list[str]:
    """The report's notes: the split, skipped files, transfer vs raw pixels, anchors."""
    best = results[0]
    notes = [
        f"Split: {data.plan.description}; {best.n_train} training and {best.n_test} "
        f"evaluation images, {len(data.class_names)} classes."
    ]
    if data.skipped:
        notes.append(
            f"{len(data.skipped)} file(s) skipped (undecodable): "
            + "; ".join(f"{s.path}: {s.reason}" for s in data.skipped[:5])
        )
    pixel_rows = [r for r in results if r.feature_set.startswith("pixels")]
    if pixel_rows and best.feature_set != pixel_rows[0].feature_set:
        notes.append(
            f"Best pretrained-feature model beats the best raw-pixel model by "
            f"{best.accuracy - pixel_rows[0].accuracy:+.4f} accuracy "
            f"({best.accuracy:.4f} vs {pixel_rows[0].accuracy:.4f})."
        )
    for anchor in anchors:
        notes.append(
            f"Published anchor {anchor.name}: {anchor.accuracy:.4f}; best here "
            f"{best.feature_set}/{best.head} {best.accuracy:.4f} "
            f"({best.accuracy - anchor.accuracy:+.4f})."
        )
    return notes


def head_card(best: SweepResult, data: SweepData, source: str) -> HeadCard:
    """The sidecar metadata of ``best``: what it was trained on, in column order."""
    return HeadCard(
        feature_set=best.feature_set,
        head=best.head,
        params={k: repr(v) for k, v in best.best_params.items()},
        class_names=list(data.class_names),
        extractors=[ExtractorRecord.from_json(e) for e in best.provenance.get("extractors", [])],
        pixels=best.provenance.get("pixels", {}).get("size"),
        sweep={
            "source": source,
            "split": data.plan.description,
            "test_accuracy": best.accuracy,
            "n_test": best.n_test,
        },
    )


def save_best_head(
    best: SweepResult, data: SweepData, out_dir: Path, *, source: str, cv: int
) -> Path:
    """Save ``best`` (with calibrated probabilities for the SVMs) as ``best_head.joblib``."""
    trained = next(fs for fs in data.feature_sets if fs.name == best.feature_set)
    # SVMs have no predict_proba: calibrate their scores so predict can report one.
    head = with_probabilities(best.estimator, trained.X_train, trained.y_train, cv=cv)
    card = head_card(best, data, source)
    return save_head_card(head, out_dir / "best_head.joblib", card)


def run_experiment(
    source: str | Path,
    *,
    out_dir: str | Path,
    backbones: Sequence[str] = (),
    combos: Sequence[str] = (),
    pixels: bool = True,
    pixel_size: int = 32,
    heads: Sequence[str] | None = None,
    cv: int = 5,
    use_grid: bool = True,
    train_split: str | None = None,
    test_split: str | None = None,
    anchors: Sequence[Anchor] = (),
    save_best: bool = True,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    title: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    **options: Any,
) -> ExperimentResult:
    """Run a sweep on ``source`` end to end and write its report to ``out_dir``.

    ``options``: the extractor options (nodes, pooling, weights, input_size, precision,
    decode) shared by every backbone, and the run options of extraction (batch_size, workers,
    device). Selection is by cross-validation on the training split only; the held-out split
    is evaluated once per row. ``progress`` receives one line before and after each fit.
    """
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    data = build_sweep_data(
        source,
        backbones=backbones,
        combos=combos,
        pixels=pixels,
        pixel_size=pixel_size,
        train_split=train_split,
        test_split=test_split,
        cache_dir=cache_dir,
        progress=progress is not None,
        **options,
    )
    seconds["features"] = time.perf_counter() - t
    t = time.perf_counter()
    results = run_sweep(data.feature_sets, heads=heads, cv=cv, use_grid=use_grid, progress=progress)
    seconds["heads"] = time.perf_counter() - t
    notes = sweep_notes(data, results, anchors)
    prov = {
        "source": str(source),
        "split": data.plan.description,
        "class_names": data.class_names,
        "cv_folds": cv,
        "grid": use_grid,
        **(extra_provenance or {}),
    }
    paths = write_report(
        results,
        out,
        title=title or f"featurestore sweep: {source}",
        provenance=prov,
        notes=notes,
    )
    if save_best:
        paths["head"] = save_best_head(results[0], data, out, source=str(source), cv=cv)
    return ExperimentResult(results, data, notes, paths, seconds)
