"""A sweep end to end: feature sets, split, heads, report, chosen head and its sidecar.

:func:`run_experiment` is what ``featurestore sweep`` and ``benchmarks/sweep.py`` run. In order:
it checks every option and that the report folder can be written (before any extraction or
fit), splits the source and extracts (through the cache) every feature set
(:mod:`featurestore.featuresets`), fits each (feature set, head) by cross-validation on the
training split (:func:`classifiers.sweep.run_sweep`, one call per pair so that one failure
loses nothing and each reports its progress), evaluates each once on the held-out split,
chooses the row by its CV score alone (:mod:`featurestore.report.selection`), and writes the
whole report with the chosen head, its sidecar and its per-image predictions, all or nothing
(:func:`featurestore.report.write_report`). It returns a value and prints nothing; progress
lines go to the ``progress`` callback.

With ``views`` (:func:`view_rows`): a feature set trained on every view is fitted with its
CV folds grouped by image key (``run_sweep``'s ``groups``; refused up front when the installed
``classifiers`` lacks them), so no image's views straddle a fold. Its chosen head is then
cross-validated again per *image* on the same kind of grouped folds: scored on each
validation image's identity view (the row's CV score) and with test-time averaging over its
views (the CV score of the ``... tta`` row, which is evaluated on the held-out split with
averaging). Every row's CV score is thus a score over training images, and the plain,
trained-on-views and test-time-averaged rows compete under the one selection rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold

from classifiers.calibration import with_probabilities
from classifiers.heads import get_head, list_heads
from classifiers.linear import scorer
from classifiers.metrics import evaluate
from classifiers.pool import describe, run_tasks
from classifiers.sweep import (
    FeatureSet,
    SweepResult,
    plan_cv,
    plan_pairs,
    run_sweep,
    uses_torch,
)
from featurestore.errors import HeadError, OptionError
from featurestore.extractor import ExtractorRecord
from featurestore.featuresets import SweepData, build_sweep_data, plan_split
from featurestore.headfile import HeadCard, labelled
from featurestore.options import ExtractorOptions
from featurestore.pixels import DEFAULT_SIZE
from featurestore.report.folder import check_output
from featurestore.report.images import EvaluatedImages
from featurestore.report.notes import Anchor, DataFacts, collect
from featurestore.report.rows import FailedHead, scoring_label
from featurestore.report.selection import CLASS_WEIGHTS, SCORINGS, rank
from featurestore.report.writer import HeadToSave, write_report
from featurestore.sources import Source, open_source
from featurestore.views import ViewAveraged, ViewPolicy, get_policy

__all__ = [
    "CLASS_WEIGHTS",
    "SCORINGS",
    "Anchor",
    "ExperimentResult",
    "SweepSettings",
    "default_out_dir",
    "fit_heads",
    "parse_anchor",
    "run_experiment",
    "sweep_and_report",
    "sweep_keywords",
    "view_rows",
]

log = logging.getLogger(__name__)

#: Seconds between "still fitting" lines while one head fits.
HEARTBEAT_SECONDS = 60.0

Progress = Callable[[str], None]


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
    """What a sweep produced.

    ``results``: every completed row, ranked by the selection rule (``best``, rank 1, is the
    chosen row and the saved head); ``failures``: the fits that raised; ``notes`` and
    ``warnings``: what the report says about the data and the comparisons; ``paths``: the
    report's files; ``out_dir``: the report folder.
    """

    results: list[SweepResult]
    data: SweepData
    notes: list[str]
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[FailedHead] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    scoring: str = "accuracy"

    @property
    def best(self) -> SweepResult:
        """The chosen row (rank 1 by CV)."""
        if not self.results:
            raise HeadError("no row to choose: every fit failed")
        return self.results[0]


# ----------------------------------------------------------------------------- options
def sweep_keywords(
    *, scoring: str = "accuracy", class_weight: str | None = None, sweep: Callable | None = None
) -> dict[str, Any]:
    """The keyword arguments for ``run_sweep`` that the installed ``classifiers`` takes.

    Raises:
        OptionError: an unknown ``scoring`` or ``class_weight``.
        HeadError: a non-default ``scoring`` or ``class_weight`` that this ``run_sweep`` does
            not accept (checked before any work).
    """
    if scoring not in SCORINGS:
        raise OptionError(f"--scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    if class_weight is not None and class_weight not in CLASS_WEIGHTS:
        raise OptionError(
            f"--class-weight must be one of {', '.join(CLASS_WEIGHTS)}; got {class_weight!r}"
        )
    accepted = inspect.signature(sweep or run_sweep).parameters
    out: dict[str, Any] = {}
    for name, value, default in (
        ("scoring", scoring, "accuracy"),
        ("class_weight", class_weight, None),
    ):
        if name in accepted:
            out[name] = value
        elif value != default:
            raise HeadError(
                f"--{name.replace('_', '-')} {value}: the installed classifiers package's "
                f"run_sweep has no {name} option (it scores by accuracy with unweighted "
                f"classes); leave --{name.replace('_', '-')} out or update featurestore"
            )
    return out


def default_out_dir(src: Source) -> Path:
    """``report-<source name>`` in the current folder (``report-digits``,
    ``report-hymenoptera_data``)."""
    name = src.name.split(":", 1)[1] if src.name.startswith("builtin:") else Path(src.name).stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "sweep"
    return Path(f"report-{slug}")


# ----------------------------------------------------------------------------- fitting
def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _settings(head: str, use_grid: bool) -> int:
    return math.prod(len(v) for v in get_head(head).grid.values()) if use_grid else 1


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def fit_heads(
    data: SweepData,
    heads: Sequence[str],
    *,
    cv: int = 5,
    use_grid: bool = True,
    seed: int = 0,
    keywords: dict[str, Any] | None = None,
    progress: Progress | None = None,
    heartbeat: float | None = HEARTBEAT_SECONDS,
    jobs: int | None = None,
) -> tuple[list[SweepResult], list[FailedHead]]:
    """Fit every head on every feature set, one ``run_sweep`` call per pair; results in sweep
    order.

    The pairs run side by side on ``jobs`` worker processes (:mod:`classifiers.pool`; ``None``:
    one per core, at most the pairs and what memory holds; 1: one after another in this
    process), the longest first. A pair that raises, or whose worker dies, becomes a
    :class:`FailedHead` and the sweep goes on. ``progress`` gets a line when each pair starts
    (its grid size) and ends (its time, CV and test scores, the sweep's elapsed time), and a
    "still fitting" line every ``heartbeat`` seconds in which no pair ended.
    """
    keywords = dict(keywords or {})
    grouped = _takes_groups()
    if data.views and not grouped:
        raise HeadError(VIEWS_NEED_GROUPS)
    _check_folds(data, cv, seed, grouped)
    cells = [(fs, head) for fs in data.feature_sets for head in heads]
    workers, order = plan_pairs(data.feature_sets, [get_head(h) for h in heads], jobs)
    lines = _FitLines(cells, progress, cv, use_grid, keywords.get("scoring", "accuracy"))
    lines.overview(len(heads), len(data.feature_sets), len(data.train_records), workers)

    def task(i: int) -> Callable[[], tuple[SweepResult | None, str | None]]:
        fs, head = cells[i]
        each = dict(keywords, groups=data.train_groups(fs.name)) if grouped else keywords
        return functools.partial(_fit_one, fs, head, cv, use_grid, seed, each)

    with _each_message_once(_SWEEP_LOG, set()):
        run_tasks(
            [task(i) for i in order],
            workers,
            uses_torch=[uses_torch(fs, get_head(head)) for fs, head in (cells[i] for i in order)],
            on_start=lambda k: lines.start(order[k]),
            on_done=lambda k, outcome: lines.done(order[k], outcome),
            on_wait=(lambda ks: lines.waiting([order[k] for k in ks])) if progress else None,
            wait_every=heartbeat,
        )
    results: list[SweepResult] = []
    failures: list[FailedHead] = []
    for i, (fs, head) in enumerate(cells):
        result, error, seconds = lines.outcomes[i]
        if error is not None:
            failures.append(FailedHead(fs.name, head, error, seconds))
        else:
            results.append(result)
    return results, failures


def _check_folds(data: SweepData, cv: int, seed: int, grouped: bool) -> None:
    """Raise :class:`HeadError` before any fit when a feature set's training split cannot be
    cross-validated (a class with one image): every pair would fail the same way."""
    for fs in data.feature_sets:
        groups = data.train_groups(fs.name) if grouped else None
        try:
            plan_cv([fs], cv=cv, groups=groups, random_state=seed)
        except ValueError as exc:
            raise HeadError(str(exc)) from None


class _FitLines:
    """The progress lines of :func:`fit_heads`, and each pair's outcome as it ends."""

    def __init__(
        self,
        cells: list[tuple[FeatureSet, str]],
        progress: Progress | None,
        cv: int,
        use_grid: bool,
        scoring: str,
    ) -> None:
        self.cells, self.progress, self.cv, self.use_grid = cells, progress, cv, use_grid
        self.say = progress or (lambda _: None)
        self.scoring = scoring_label(scoring)
        width = len(str(len(cells)))
        self.labels = [
            f"[{i:>{width}}/{len(cells)}] {fs.name} / {head}"
            for i, (fs, head) in enumerate(cells, 1)
        ]
        self.began: dict[int, float] = {}
        self.outcomes: dict[int, tuple[SweepResult | None, str | None, float]] = {}
        self.started = time.perf_counter()

    def overview(self, heads: int, sets: int, images: int, workers: int) -> None:
        side_by_side = f" on {workers} processes" if workers > 1 else ""
        self.say(
            f"fitting {heads} head(s) on {sets} feature set(s): {len(self.cells)} fits, "
            f"{images} training images, {self.cv}-fold CV{side_by_side}"
        )

    def start(self, i: int) -> None:
        self.began[i] = time.perf_counter()
        grid = _settings(self.cells[i][1], self.use_grid)
        self.say(f"{self.labels[i]}: fitting {grid} setting(s) x {self.cv}-fold CV")

    def waiting(self, running: list[int]) -> None:
        for i in running:
            so_far = _clock(time.perf_counter() - self.began[i])
            self.say(f"{self.labels[i]}: still fitting, {so_far} so far")

    def done(self, i: int, outcome: Any) -> None:
        seconds = time.perf_counter() - self.began[i]
        result, error = outcome if isinstance(outcome, tuple) else (None, describe(outcome))
        self.outcomes[i] = (result, error, seconds)
        clock = _clock(time.perf_counter() - self.started)
        done = f"sweep {clock} elapsed, {len(self.outcomes)}/{len(self.cells)} done"
        label = self.labels[i]
        if error is not None:
            if self.progress is None:  # else the progress line below is the one notice
                log.warning("%s failed: %s", label, error)
            self.say(f"{label}: FAILED after {seconds:.1f} s: {error} ({done})")
            return
        self.say(
            f"{label}: done in {seconds:.1f} s: CV {self.scoring} {result.cv_score:.4f}, "
            f"test accuracy {result.accuracy:.4f} ({done})"
        )


#: ``run_sweep``'s logger: each call logs its feature set's data notes (such as a reduced fold
#: count), and this module calls it once per (feature set, head) pair.
_SWEEP_LOG = logging.getLogger(run_sweep.__module__)


@contextlib.contextmanager
def _each_message_once(logger: logging.Logger, seen: set[str]) -> Iterator[None]:
    """While inside, drop ``logger``'s messages already in ``seen`` (and add the new ones)."""

    def new(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        fresh = message not in seen
        seen.add(message)
        return fresh

    logger.addFilter(new)
    try:
        yield
    finally:
        logger.removeFilter(new)


VIEWS_NEED_GROUPS = (
    "--views needs cross-validation grouped by image (so that no image's views straddle a "
    "fold), and the installed classifiers package's run_sweep has no groups option; update "
    "classifiers or leave --views out"
)


def _takes_groups() -> bool:
    return "groups" in inspect.signature(run_sweep).parameters


def _fit_one(
    fs: FeatureSet, head: str, cv: int, use_grid: bool, seed: int, keywords: dict[str, Any]
) -> tuple[SweepResult | None, str | None]:
    try:
        found = run_sweep(
            [fs], heads=[head], cv=cv, use_grid=use_grid, random_state=seed, **keywords
        )
    except Exception as exc:  # noqa: BLE001 - one head's failure must not lose the others
        return None, _one_line(exc)
    if not found:
        return None, "run_sweep returned no result"
    error = getattr(found[0], "error", None)
    return (None, str(error)) if error else (found[0], None)


# ----------------------------------------------------------------------------- views
def _replaced(result: SweepResult, **changes: Any) -> SweepResult:
    """``result`` with ``changes`` (those fields this ``SweepResult`` has)."""
    names = {f.name for f in dataclasses.fields(result)}
    return dataclasses.replace(result, **{k: v for k, v in changes.items() if k in names})


def _image_cv(
    result: SweepResult, data: SweepData, *, seed: int, scoring: str
) -> dict[bool, list[float]]:
    """Fold scores per training image of ``result``'s head (a feature set trained on views):
    on the identity view (``False``) and with test-time averaging (``True``)."""
    fs = data.feature_set(result.feature_set)
    k = data.views[result.feature_set].n_views
    y = fs.y_train[::k]
    V = fs.X_train.reshape(len(y), k, -1)
    keys = [r.key for r in data.train_records]
    folds = StratifiedGroupKFold(result.cv_folds, shuffle=True, random_state=seed)
    score = scorer(scoring)  # the sweep's own selection scores
    out: dict[bool, list[float]] = {False: [], True: []}
    for fit, val in folds.split(np.zeros(len(y)), y, groups=keys):
        model = clone(result.estimator).fit(V[fit].reshape(-1, V.shape[2]), np.repeat(y[fit], k))
        out[False].append(float(score(y[val], model.predict(V[val, 0]))))
        out[True].append(float(score(y[val], ViewAveraged(model).predict(V[val]))))
    return out


def view_rows(
    results: Sequence[SweepResult],
    data: SweepData,
    *,
    seed: int = 0,
    scoring: str = "accuracy",
    progress: Progress | None = None,
) -> list[SweepResult]:
    """``results`` with each row of a feature set trained on views re-scored per image, and
    followed by its test-time-averaged row (see the module docstring), in sweep order.

    The views row keeps its head, parameters and held-out evaluation (identity view); its CV
    score becomes the per-image score on the identity view. The ``tta`` row has the same
    head, the per-image CV score with averaging, and the held-out evaluation with averaging.
    """
    out: list[SweepResult] = []
    for result in results:
        rows = data.views.get(result.feature_set)
        if rows is None:
            out.append(result)
            continue
        t = time.perf_counter()
        scores = _image_cv(result, data, seed=seed, scoring=scoring)
        fs = data.feature_set(result.feature_set)
        evaluation = evaluate(
            ViewAveraged(result.estimator), rows.X_test, fs.y_test, class_names=fs.class_names
        )
        for tta in (False, True):
            mean, std = float(np.mean(scores[tta])), float(np.std(scores[tta]))
            changes: dict[str, Any] = {"cv_score": mean, "cv_std": std}
            changes["cv_fold_scores"] = tuple(scores[tta])
            if tta:
                changes.update(feature_set=rows.tta, evaluation=evaluation)
            out.append(_replaced(result, **changes))
        if progress is not None:
            progress(
                f"{result.feature_set} / {result.head}: CV per training image "
                f"{float(np.mean(scores[True])):.4f} with test-time averaging over "
                f"{rows.n_views} views, {float(np.mean(scores[False])):.4f} on the identity view "
                f"({time.perf_counter() - t:.1f} s)"
            )
    return out


def _views_provenance(data: SweepData) -> dict[str, Any]:
    first = next(iter(data.views.values()))
    return {
        "policy": first.policy,
        "n_views": first.n_views,
        "extraction": [dataclasses.asdict(c) for c in data.view_costs],
    }


def views_notes(data: SweepData) -> list[str]:
    """What the report says about the views: how rows were trained and scored, and what
    extracting the views cost."""
    if not data.views:
        return []
    first = next(iter(data.views.values()))
    notes = [
        f"Views ({first.policy}, {first.n_views} per image): a row labelled "
        f"'... views={first.policy}' is a head trained on every view of every training image "
        "(CV folds grouped by image key) and evaluated on the identity view; '... tta' is the "
        "same head scored with test-time averaging (the mean of its scores over an image's "
        "views). Their CV scores are per training image (identity view, resp. averaged), "
        "like the plain rows'."
    ]
    notes += [f"Extraction cost: {cost.text()}." for cost in data.view_costs]
    return notes


# ----------------------------------------------------------------------------- chosen head
def head_card(best: SweepResult, data: SweepData, source: str) -> HeadCard:
    """The sidecar metadata of ``best``: what it was trained on, in column order."""
    return HeadCard(
        feature_set=best.feature_set,
        head=best.head,
        params={k: repr(v) for k, v in best.best_params.items()},
        class_names=list(data.class_names),
        extractors=[ExtractorRecord.from_json(e) for e in best.provenance.get("extractors", [])],
        pixels=best.provenance.get("pixels", {}).get("size"),
        views=_card_views(best, data),
        sweep={
            "source": source,
            "split": data.plan.description,
            "selected_by": "cv",
            "cv_score": best.cv_score,
            "test_accuracy": best.accuracy,
            "n_test": best.n_test,
        },
    )


def _card_views(best: SweepResult, data: SweepData) -> dict[str, Any] | None:
    """The card's ``views``: the policy a head trained on views was trained on, and whether
    its row (so its predictions by default) averages over the views."""
    for label, rows in data.views.items():
        if best.feature_set in (label, rows.tta):
            return {
                "policy": rows.policy,
                "n_views": rows.n_views,
                "test_time_averaging": best.feature_set == rows.tta,
            }
    return None


def _feature_set(data: SweepData, name: str) -> FeatureSet:
    return data.feature_set(name)


def _scored(head: Any, data: SweepData, name: str) -> tuple[Any, np.ndarray]:
    """(what scores the evaluation images, their features) for row ``name``: the head and the
    feature set's ``X_test``, or for a ``tta`` row the head averaged over every view."""
    for rows in data.views.values():
        if rows.tta == name:
            return ViewAveraged(head), rows.X_test
    return head, _feature_set(data, name).X_test


def chosen_head(
    best: SweepResult, data: SweepData, *, cv: int, seed: int
) -> tuple[Any, str | None]:
    """``best``'s estimator with probabilities (the SVMs get a calibrator fitted on the
    training split: on the out-of-fold scores its search kept, when it kept them), or itself
    and the reason when that calibration cannot be fitted."""
    fs = _feature_set(data, best.feature_set)
    try:
        return with_probabilities(
            best.estimator,
            fs.X_train,
            fs.y_train,
            cv=cv,
            random_state=seed,
            scores=best.cv_decision,
        ), None
    except (ValueError, RuntimeError) as exc:
        return best.estimator, (
            f"the chosen head's probabilities could not be calibrated ({_one_line(exc)}); it "
            "is saved without them"
        )


def evaluated_images(best: SweepResult, head: Any, data: SweepData) -> EvaluatedImages:
    """The per-image report of ``best``: its predictions (the sweep's own) on every held-out
    image, with the saved head's probabilities in ``class_names`` columns."""
    scorer, X_test = _scored(head, data, best.feature_set)
    records = data.test_records
    probabilities = None
    try:
        table = scorer.predict_proba(X_test)
    except AttributeError:
        pass
    else:
        probabilities = np.zeros((len(records), len(data.class_names)))
        probabilities[:, np.asarray(scorer.classes_, dtype=int)] = table
    loader = data.source.loader if data.source is not None else None
    return EvaluatedImages(
        feature_set=best.feature_set,
        head=best.head,
        paths=[r.path for r in records],
        keys=[r.key for r in records],
        true=np.asarray(best.evaluation.y_true),
        predicted=np.asarray(best.evaluation.y_pred),
        class_names=list(data.class_names),
        probabilities=probabilities,
        load=None if loader is None else (lambda i: loader.load(records[i])),
    )


def data_facts(data: SweepData, source: str) -> DataFacts:
    """What the report states about the data: split, class counts, skipped files."""
    return DataFacts(
        source=source,
        split=data.plan.description,
        class_names=list(data.class_names),
        train_counts=data.class_counts("train"),
        test_counts=data.class_counts("test"),
        test_fraction=data.plan.test_fraction,
        seed=data.plan.seed,
        skipped=[(s.path, s.reason) for s in data.skipped],
    )


# ----------------------------------------------------------------------------- the sweep
def _check(heads: Sequence[str] | None, cv: int) -> list[str]:
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise OptionError(f"--cv must be an integer of at least 2, got {cv!r}")
    names = [h.name for h in list_heads()] if heads is None else list(dict.fromkeys(heads))
    if not names:
        raise OptionError("--heads is empty; leave it out for every head")
    try:
        for name in names:
            get_head(name)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    return names


@dataclass(frozen=True)
class SweepSettings:
    """How the heads are fitted and chosen (the options of :func:`sweep_and_report`)."""

    heads: tuple[str, ...]
    cv: int = 5
    use_grid: bool = True
    seed: int = 0
    scoring: str = "accuracy"
    class_weight: str | None = None
    keywords: dict[str, Any] = field(default_factory=dict)
    jobs: int | None = None

    @classmethod
    def make(
        cls,
        *,
        heads: Sequence[str] | None = None,
        cv: int = 5,
        use_grid: bool = True,
        seed: int = 0,
        scoring: str = "accuracy",
        class_weight: str | None = None,
        jobs: int | None = None,
    ) -> SweepSettings:
        """Checked settings; every option error is raised here, before any work."""
        names = _check(heads, cv)
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
            raise OptionError(f"--jobs must be an integer of at least 1, got {jobs!r}")
        keywords = sweep_keywords(scoring=scoring, class_weight=class_weight)
        return cls(tuple(names), cv, use_grid, seed, scoring, class_weight, keywords, jobs)


def run_experiment(
    source: str | Path | Source,
    *,
    out_dir: str | Path | None = None,
    backbones: Sequence[str | ExtractorOptions] = (),
    combos: Sequence[str | Sequence[str | ExtractorOptions]] = (),
    pixels: bool = True,
    pixel_size: int = DEFAULT_SIZE,
    heads: Sequence[str] | None = None,
    cv: int = 5,
    use_grid: bool = True,
    train_split: str | None = None,
    test_split: str | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    scoring: str = "accuracy",
    class_weight: str | None = None,
    jobs: int | None = None,
    views: str | ViewPolicy | None = None,
    anchors: Sequence[Anchor] = (),
    save_best: bool = True,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    heartbeat: float | None = HEARTBEAT_SECONDS,
    title: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    **options: Any,
) -> ExperimentResult:
    """Run a sweep on ``source`` end to end and write its report to ``out_dir``.

    ``out_dir`` defaults to :func:`default_out_dir`. ``options``: the extractor options
    (nodes, pooling, weights, input_size, precision, decode) shared by every backbone given by
    name, and the run options of extraction (batch_size, workers, device). ``test_fraction``
    and ``seed``: the hash split of a source without an evaluation split (``seed`` also seeds
    the CV folds and the heads). ``scoring`` and ``class_weight`` go to ``run_sweep`` (refused
    up front when the installed ``classifiers`` lacks them). ``jobs``: processes fitting the
    (feature set, head) pairs side by side (:func:`fit_heads`). ``views``: a view policy; every
    backbone's features are also swept trained on every view, scored on the identity view and
    with test-time averaging (see the module docstring; the report shows the three side by
    side, with the extraction cost of the views).

    Selection is by cross-validation on the training split only; the held-out split is
    evaluated once per row and never chooses. The chosen row (rank 1) is saved as
    ``best_head.joblib`` (``save_best``) with ``predictions.csv`` and ``mistakes.png``.

    Raises:
        OptionError, HeadError: a bad option (before any work).
        SourceError: a source that cannot be swept as asked (before any extraction).
        OutputError: ``out_dir`` cannot hold a report (before any extraction), or writing it
            failed (then a previous report there is unchanged).
        HeadError: a training split that cannot be cross-validated, such as a class with one
            image (after extraction, before any fit); every fit failed (after writing the
            report that lists their errors).
    """
    settings = SweepSettings.make(
        heads=heads,
        cv=cv,
        use_grid=use_grid,
        seed=seed,
        scoring=scoring,
        class_weight=class_weight,
        jobs=jobs,
    )
    if views is not None:
        views = get_policy(views)
        if not backbones and not combos:
            raise OptionError("--views needs a backbone (views are of a backbone's features)")
        if not _takes_groups():
            raise HeadError(VIEWS_NEED_GROUPS)
    src = source if isinstance(source, Source) else open_source(source)
    plan = plan_split(
        src, train_split=train_split, test_split=test_split, test_fraction=test_fraction, seed=seed
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(src)
    check_output(out)
    t = time.perf_counter()
    data = build_sweep_data(
        src,
        backbones=backbones,
        combos=combos,
        pixels=pixels,
        pixel_size=pixel_size,
        plan=plan,
        views=views,
        cache_dir=cache_dir,
        progress=progress is not None,
        **options,
    )
    features = time.perf_counter() - t
    outcome = sweep_and_report(
        data,
        out,
        settings=settings,
        source=str(source),
        anchors=anchors,
        save_best=save_best,
        progress=progress,
        heartbeat=heartbeat,
        title=title,
        extra_provenance=extra_provenance,
    )
    outcome.seconds["features"] = features
    return outcome


def sweep_and_report(
    data: SweepData,
    out: Path,
    *,
    settings: SweepSettings,
    source: str,
    anchors: Sequence[Anchor] = (),
    save_best: bool = True,
    progress: Progress | None = None,
    heartbeat: float | None = HEARTBEAT_SECONDS,
    title: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
) -> ExperimentResult:
    """Fit, choose and report on feature sets already built (the second half of
    :func:`run_experiment`; ``out`` is checked before any fit)."""
    out = Path(out)
    check_output(out)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    results, failures = fit_heads(
        data,
        settings.heads,
        cv=settings.cv,
        use_grid=settings.use_grid,
        seed=settings.seed,
        keywords=settings.keywords,
        progress=progress,
        heartbeat=heartbeat,
        jobs=settings.jobs,
    )
    results = view_rows(
        results, data, seed=settings.seed, scoring=settings.scoring, progress=progress
    )
    seconds["heads"] = time.perf_counter() - t
    ranked = rank(results)
    facts = data_facts(data, source)
    warnings: list[str] = []
    head = images = None
    if ranked:
        estimator, problem = chosen_head(ranked[0], data, cv=settings.cv, seed=settings.seed)
        warnings += [problem] if problem else []
        images = evaluated_images(ranked[0], estimator, data)
        if save_best:
            card = head_card(ranked[0], data, source)
            # saved predicting class names (joblib.load(...).predict gives labels)
            head = HeadToSave(labelled(estimator, card), card.to_json())
    provenance = {
        "source": source,
        "split": data.plan.description,
        "test_fraction": data.plan.test_fraction,
        "seed": settings.seed,
        "class_names": data.class_names,
        "cv_folds": settings.cv,
        "grid": settings.use_grid,
        "scoring": settings.scoring,
        "class_weight": settings.class_weight,
        "run_sweep_options": sorted(settings.keywords),
        **({"views": _views_provenance(data)} if data.views else {}),
        **(extra_provenance or {}),
    }
    t = time.perf_counter()
    paths = write_report(
        ranked,
        out,
        title=title or f"featurestore sweep: {source}",
        provenance=provenance,
        warnings=warnings,
        facts=facts,
        anchors=anchors,
        failures=failures,
        scoring=settings.scoring,
        images=images,
        head=head,
        notes=views_notes(data),
    )
    seconds["report"] = time.perf_counter() - t
    if not ranked:
        raise HeadError(
            f"every fit failed ({len(failures)}), e.g. {failures[0].feature_set} / "
            f"{failures[0].head}: {failures[0].error}; their errors are in {paths['markdown']}"
        )
    all_warnings, notes = collect(
        ranked,
        facts=facts,
        anchors=anchors,
        n_failed=len(failures),
        notes=views_notes(data),
        warnings=warnings,
    )
    return ExperimentResult(
        results=ranked,
        data=data,
        notes=notes,
        paths=paths,
        seconds=seconds,
        failures=failures,
        warnings=all_warnings,
        out_dir=out,
        scoring=settings.scoring,
    )
