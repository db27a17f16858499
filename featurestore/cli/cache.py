"""Commands that manage the cache: ``export``, ``rm`` and ``gc``."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from featurestore.cli.group import (
    EXIT_SKIPPED,
    _cache_opt,
    _human_bytes,
    backbone_and_options,
    extractor_options,
    main,
    print_skipped,
)
from featurestore.cli.stores import _store_path
from featurestore.cli.terminal import data_stdout, shown

_dry_run = click.option(
    "--dry-run", is_flag=True, help="Only list what would be done; change nothing."
)


def _print_report(report: Any, *, summary: str | None = None) -> None:
    """Each step (what was, or would be, done to which file), the notes, then ``summary`` (by
    default: how many steps and the bytes freed)."""
    verb = {"delete": "delete", "rewrite": "rewrite", "merge": "merge"}
    if report.dry_run:
        verb = {k: f"would {v}" for k, v in verb.items()}
    for step in report.steps:
        size = f" ({_human_bytes(step.size)})" if step.action == "delete" else ""
        detail = f": {shown(step.detail)}" if step.detail else ""
        click.echo(f"{verb[step.action]:<14}{shown(step.path)}{size}{detail}")
    for note in report.notes:
        click.echo(f"note: {shown(note)}")
    if summary is None:
        done = "would free" if report.dry_run else "freed"
        summary = f"{len(report.steps)} step(s), {done} {_human_bytes(report.freed_bytes)}"
    click.echo(summary)


@main.command()
@click.argument("source")
@click.option(
    "--backbone",
    "-b",
    required=True,
    help="Backbone, or a combination such as resnet18+vgg16 (rows concatenated).",
)
@click.option(
    "--out",
    "out",
    required=True,
    help="File to write: .npz, .csv or .parquet (needs pyarrow); '-' writes CSV to stdout.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npz", "csv", "parquet"]),
    default=None,
    help="Format (default: from --out's suffix).",
)
@click.option("--split", default=None, help="Export only this split (default: all images).")
@extractor_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None)
@_dry_run
@_cache_opt
def export(
    source: str,
    backbone: str,
    out: str,
    fmt: str | None,
    split: str | None,
    dry_run: bool,
    **kw: Any,
) -> None:
    """Write SOURCE's feature rows with their paths, image keys, labels and splits to a file.

    Rows not cached yet are extracted first (as `extract` would). One row per image that could
    be decoded, in the source's order. The file is written atomically and never over an input.

    \b
    .npz      X (n, d) float32, y, keys, paths, labels, splits, class_names, metadata (JSON)
    .csv      path,key,label,split,f0..f{d-1}
    .parquet  path, key, label, split, features (fixed-size list of float32)

    Exit status: 0, or 3 when some images could not be decoded (listed; left out), 1 on error.
    """
    from featurestore import export as exporting

    options, extra = backbone_and_options(backbone, kw)
    if dry_run:
        plan = exporting.plan_export(
            source, out, backbone=options, fmt=fmt, split=split, **extra, **kw
        )
        for s in plan.stores:
            click.echo(
                f"{s['backbone']}: {s['cached']} of {s['unique_images']} images cached, "
                f"{s['to_extract']} would be extracted first ({shown(s['store'])})"
            )
        where = "stdout" if out == "-" else shown(out)
        click.echo(f"would export up to {plan.n_images} rows -> {where} ({plan.fmt})")
        return
    progress = sys.stderr.isatty()
    if out == "-":
        if fmt not in (None, "csv"):
            raise click.UsageError("--out - writes CSV; give a file name for .npz or .parquet")
        data = exporting.collect(
            source, backbone=options, split=split, progress=progress, **extra, **kw
        )
        with data_stdout() as stream:
            exporting.write_csv(data, stream)
    else:
        data = exporting.export_features(
            source, out, backbone=options, fmt=fmt, split=split, progress=progress, **extra, **kw
        )
    say = functools.partial(click.echo, err=out == "-")  # stdout holds only the CSV then
    where = "stdout" if out == "-" else shown(out)
    width = data.X.shape[1] if data.X.ndim == 2 else 0
    say(f"exported   {len(data)} rows x {width} -> {where}")
    if data.skipped:
        say(f"skipped    {len(data.skipped)}")
        print_skipped(data.skipped, err=out == "-")
    sys.exit(EXIT_SKIPPED if data.skipped else 0)


@main.command()
@click.argument("store")
@click.option(
    "--source",
    "source",
    default=None,
    help="Remove only the rows of this source's images (a folder, manifest, HDF5 file...).",
)
@click.option("--split", default=None, help="With --source: only this split's images.")
@_dry_run
@_cache_opt
@click.option("--json", "as_json", is_flag=True, help="Print what was done as one JSON object.")
def rm(
    store: str,
    source: str | None,
    split: str | None,
    dry_run: bool,
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """Remove STORE: its consolidated file, journal, temporary files, lock and gate.

    With --source, remove only the rows of SOURCE's images from STORE, crash-safely (a kill at
    any moment leaves all of those rows or none). Rows are keyed by image content, so this also
    removes them for any other project that uses the same images in this cache.

    STORE follows the naming rule (`featurestore ls --help`); a name matching several stores is
    refused with the list. Waits for readers and a running compaction to finish.
    """
    from featurestore.store.maintenance import remove_rows, remove_store

    path = _store_path(store, cache_dir)
    if source is None:
        if split is not None:
            raise click.UsageError("--split needs --source")
        report = remove_store(path, dry_run=dry_run)
        summary = None
    else:
        from featurestore.sources import open_source

        src = open_source(source)
        keys = [r.key for r in src.select(split)]
        report = remove_rows(path, keys, dry_run=dry_run, reason=src.name)
        gone = "would remove" if dry_run else "removed"
        summary = f"{gone} {report.rows_removed} row(s) from {shown(path.name)}"
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        _print_report(report, summary=summary)


@main.command()
@_dry_run
@click.option(
    "--compact",
    is_flag=True,
    help="Also merge every store's pending journal parts into its consolidated file.",
)
@_cache_opt
@click.option("--json", "as_json", is_flag=True, help="Print what was done as one JSON object.")
def gc(dry_run: bool, compact: bool, cache_dir: Path | None, as_json: bool) -> None:
    """Delete what killed or interrupted runs left in the cache.

    \b
    - temporary files of writers that are gone;
    - journal parts whose rows are all in the consolidated file already;
    - journal folders, locks and gates of stores that no longer exist;
    - folders left by an interrupted `rm`.

    Journal parts with rows not merged yet are kept (readers use them); --compact merges them.
    """
    from featurestore.config import cache_root
    from featurestore.store.maintenance import collect_garbage

    report = collect_garbage(cache_root(cache_dir), dry_run=dry_run, compact=compact)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        _print_report(report)
