"""Commands about classifier heads: ``heads``, ``sweep`` and ``predict``."""

from __future__ import annotations

import csv
import functools
import sys
from pathlib import Path
from typing import Any

import click

from featurestore.cli.group import (
    EXIT_SKIPPED,
    _cache_opt,
    _extractor_kwargs,
    extractor_options,
    main,
    print_skipped,
)
from featurestore.cli.terminal import data_stdout, shown
from featurestore.options import VIEW_POLICIES
from featurestore.pixels import DEFAULT_SIZE
from featurestore.report.selection import CLASS_WEIGHTS, SCORINGS


@main.command()
def heads() -> None:
    """List the classifier heads that `sweep --heads` accepts, with their defaults (used by
    `sweep --no-grid`) and grids."""
    from classifiers.heads import list_heads

    for h in list_heads():
        params = h.build().get_params()
        default = ", ".join(f"{k.split('__')[-1]}={params[k]!r}" for k in h.grid)
        grid = ", ".join(f"{k.split('__')[-1]}={v}" for k, v in h.grid.items())
        click.echo(f"{h.name:<12} {h.description}")
        click.echo(f"{'':<12} default: {default or '(none)'}")
        click.echo(f"{'':<12} grid: {grid or '(none)'}")


@main.command()
@click.argument("source")
@click.option(
    "--backbone",
    "-b",
    "backbones",
    multiple=True,
    help="Backbone whose features to compare (repeatable).",
)
@click.option(
    "--combo",
    "combos",
    multiple=True,
    help="Concatenated feature set, e.g. alexnet+vgg16 (repeatable).",
)
@click.option(
    "--heads",
    "heads_",
    default=None,
    help="Comma-separated heads (default: all; see `featurestore heads`).",
)
@click.option("--no-pixels", is_flag=True, help="Leave out the raw-pixel baseline.")
@click.option(
    "--pixel-size",
    type=click.IntRange(min=2),
    default=DEFAULT_SIZE,
    show_default=True,
    help="Side of the raw-pixel baseline's resized image (RGB, so 3 x side^2 columns).",
)
@click.option(
    "--cv",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Cross-validation folds on the training split.",
)
@click.option("--no-grid", is_flag=True, help="Use each head's defaults, no grid search.")
@click.option(
    "--scoring",
    type=click.Choice(SCORINGS),
    default=SCORINGS[0],
    show_default=True,
    help="What the CV score measures, and so what chooses the row.",
)
@click.option(
    "--class-weight",
    type=click.Choice(CLASS_WEIGHTS),
    default=None,
    help="balanced: weigh each class inversely to its training count (default: unweighted).",
)
@click.option(
    "--views",
    type=click.Choice(VIEW_POLICIES),
    default=None,
    help="Also sweep each backbone trained on every view of every training image (views "
    "extracted and cached as by `extract --views`; CV grouped by image), scored on the "
    "identity view and with test-time averaging (rows '... views=POLICY' and '... tta').",
)
@click.option("--train-split", default=None, help="Training split (default: train).")
@click.option(
    "--test-split",
    default=None,
    help="Evaluation split (default: the first of val, validation, test).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="For a source without an evaluation split: the share of each class held out "
    "(by a stratified hash of the image keys; default 0.2 when the source has no splits).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of that hash split, of the CV folds and of the heads.",
)
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    help="A published result to compare with, NAME=ACCURACY (repeatable).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default: ./report-<source name>). Checked before any work; written "
    "all or nothing: a previous report there is replaced only once the new one is complete, "
    "and a folder holding anything else is refused.",
)
@click.option(
    "--save-best/--no-save-best",
    default=True,
    show_default=True,
    help="Save the chosen row's head as OUT/best_head.joblib (+ .json sidecar).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Processes fitting (feature set, head) pairs side by side, one core each "
    "(default: one per core, at most the pairs and what memory holds; 1: one at a time).",
)
@extractor_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None)
@_cache_opt
def sweep(
    source: str,
    backbones: tuple[str, ...],
    combos: tuple[str, ...],
    heads_: str | None,
    no_pixels: bool,
    pixel_size: int,
    cv: int,
    no_grid: bool,
    anchors: tuple[str, ...],
    out_dir: Path | None,
    save_best: bool,
    **kw: Any,
) -> None:
    """Compare feature sets x heads on SOURCE and write a report folder.

    Each head's grid is searched by cross-validation on the training split only; the row with
    the best mean CV score is chosen (ties: smaller fold spread, then sweep order) and saved;
    every row is evaluated once on the held-out split, which reports but never chooses.
    The report: leaderboard.{md,csv,json} (CV score, test accuracy with its 95% interval,
    per-class results, failed heads, warnings such as class imbalance), leaderboard.png,
    roc.png, confusion_best.png, predictions.csv and mistakes.png (the chosen row's per-image
    results) and best_head.joblib with its sidecar. Progress goes to stderr.
    """
    from featurestore.report.folder import check_output

    if out_dir is not None:
        check_output(out_dir)  # before the heads' imports: a bad --out fails at once
    from featurestore.experiment import parse_anchor, run_experiment

    outcome = run_experiment(
        source,
        out_dir=out_dir,
        backbones=backbones,
        combos=combos,
        pixels=not no_pixels,
        pixel_size=pixel_size,
        heads=[h.strip() for h in heads_.split(",")] if heads_ else None,
        cv=cv,
        use_grid=not no_grid,
        anchors=[parse_anchor(a) for a in anchors],
        save_best=save_best,
        progress=lambda msg: click.echo(msg, err=True),
        **_extractor_kwargs(kw),
        **kw,
    )
    _print_sweep(outcome)


def _print_sweep(outcome: Any) -> None:
    from featurestore.report.notes import interval_text
    from featurestore.report.rows import accuracy_interval, scoring_label

    best = outcome.best
    label = scoring_label(outcome.scoring)
    click.echo(
        f"chosen     {best.feature_set} / {best.head}: CV {label} {best.cv_score:.4f} "
        f"(training split, {best.cv_folds} folds)"
    )
    click.echo(
        f"held-out   accuracy {best.accuracy:.4f} ({interval_text(accuracy_interval(best))}) "
        f"on {best.n_test} images"
    )
    click.echo(f"{'rank':>4}  {'CV':>6}  {'test':>6}  feature set / head")
    for rank, r in enumerate(outcome.results, 1):
        click.echo(
            f"{rank:>4}  {r.cv_score:.4f}  {r.accuracy:.4f}  {shown(r.feature_set)} / {r.head}"
        )
    for f in outcome.failures:
        where = f"{shown(f.feature_set)} / {f.head}"
        click.echo(f"{'-':>4}  {'failed':>14}  {where}: {shown(f.error)}")
    for w in outcome.warnings:
        click.echo(f"warning: {shown(w)}", err=True)
    click.echo(f"report     {shown(outcome.out_dir)}")
    for name, p in outcome.paths.items():
        click.echo(f"  {name:<17} {shown(p)}")


@main.command()
@click.argument("source")
@click.option(
    "--head",
    "head_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A head saved by `sweep` (with its .json sidecar).",
)
@click.option("--split", default=None, help="Predict only this split (default: all images).")
@click.option(
    "--out",
    "out_csv",
    default="predictions.csv",
    show_default=True,
    help="CSV to write (atomically; never over an input): path, predicted, probability, "
    "label, then p_<class> for every class. '-' writes it to stdout.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Instead of a column per class: the K most probable classes and their "
    "probabilities (top1, p_top1, top2, ...).",
)
@click.option(
    "--tta/--no-tta",
    default=None,
    help="Average the head's scores over every view of each image (a head trained with "
    "--views; the views are extracted through the cache). Default: as the head's sweep row "
    "did (on for a '... tta' head).",
)
@_cache_opt
def predict(
    source: str,
    head_path: Path,
    split: str | None,
    out_csv: str,
    top_k: int | None,
    tta: bool | None,
    cache_dir: Path | None,
) -> None:
    """Predict SOURCE's images with a saved head, extracting through the cache with the head's
    own backbone(s). Refuses a head whose bytes do not match its sidecar's sha256, or whose
    extractor fingerprint differs from this machine's. Heads are pickles: load only heads from
    sources you trust.

    Exit status: 0 when every image was predicted, 3 when some images could not be decoded
    (listed, and left out of the CSV), 1 on error.
    """
    from featurestore.output import check_output
    from featurestore.predict import head_inputs
    from featurestore.predict import predict as run

    to_stdout = out_csv == "-"
    if not to_stdout:  # refuse an input or a folder before any work
        check_output(out_csv, inputs=head_inputs(source, head_path))
    pred = run(
        source,
        head_path,
        split=split,
        cache_dir=cache_dir,
        progress=sys.stderr.isatty(),
        tta=tta,
    )
    if to_stdout:
        _csv_to_stdout(pred, top_k=top_k)
    else:
        pred.write_csv(out_csv, top_k=top_k)
    say = functools.partial(click.echo, err=to_stdout)  # stdout holds only the CSV then
    say(f"predicted  {len(pred.predicted)} images -> {'stdout' if to_stdout else shown(out_csv)}")
    if pred.views:
        say(f"views      {pred.views}: the head's scores averaged over each image's views")
    if pred.skipped:
        say(f"skipped    {len(pred.skipped)}")
        print_skipped(pred.skipped, err=to_stdout)
    acc = pred.accuracy
    if acc is not None:
        n = sum(lab is not None for lab in pred.labels)
        right = round(acc * n)
        say(f"accuracy   {acc:.4f} ({right}/{n} images with a known label)")
    sys.exit(EXIT_SKIPPED if pred.skipped else 0)


def _csv_to_stdout(pred: Any, *, top_k: int | None) -> None:
    """The predictions CSV on stdout (see :func:`~featurestore.cli.terminal.data_stdout`)."""
    rows = list(pred.rows(top_k=top_k))  # a bad --top-k fails before anything is written
    with data_stdout() as stream:
        writer = csv.writer(stream)
        writer.writerow(pred.header(top_k=top_k))
        writer.writerows(rows)
