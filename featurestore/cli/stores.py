"""Commands that look at the stores of the cache: ``ls``, ``info`` and ``verify``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from featurestore.cli.group import _cache_opt, _human_bytes, main
from featurestore.cli.terminal import shown


@main.command("ls")
@click.argument("name", required=False)
@_cache_opt
@click.option("--json", "as_json", is_flag=True)
def ls_(name: str | None, cache_dir: Path | None, as_json: bool) -> None:
    """List the stores in the cache (only those NAME names, when given), with the options
    that tell two stores of one backbone apart.

    NAME follows the naming rule of every command that takes a store: a path, a store file
    name, a backbone, a fingerprint prefix (4+ hex digits) or the start of a file name.
    """
    from featurestore.config import cache_root
    from featurestore.store import FeatureStore, StoreError, list_stores
    from featurestore.store.naming import describe_options, match_stores

    root = cache_root(cache_dir)
    if name is None:
        infos = list_stores(root)
    else:
        refs = match_stores(name, root)
        if not refs:
            _store_path(name, cache_dir)  # raises the naming rule's error, listing the stores
        infos = []
        for ref in refs:  # as list_stores does: a store that cannot be read is skipped, said
            try:
                infos.append(FeatureStore(ref.path).info())
            except StoreError as exc:
                logging.getLogger(__name__).warning("skipping %s: %s", ref.path, exc)
    if as_json:
        click.echo(
            json.dumps([{**i.to_dict(), "options": describe_options(i.spec)} for i in infos])
        )
        return
    click.echo(f"cache: {shown(root)}")
    if not infos:
        click.echo("(no stores yet: run `featurestore extract`)")
        return
    options = [describe_options(i.spec) for i in infos]
    # decode and extractor version only when they tell listed stores apart
    shown_opts = [k for k in options[0] if k not in ("decode", "version")]
    shown_opts += [k for k in ("decode", "version") if len({o[k] for o in options}) > 1]
    head = ["store", "rows", "dim", "size", *shown_opts]
    rows = [
        [shown(i.path.name), str(i.n_rows), str(i.feature_dim), _human_bytes(i.size_bytes)]
        + [shown(o[k]) for k in shown_opts]
        for i, o in zip(infos, options, strict=True)
    ]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    for r in [head, *rows]:
        cells = [
            v.rjust(w) if 1 <= c <= 3 else v.ljust(w)
            for c, (v, w) in enumerate(zip(r, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


def _store_path(store: str, cache_dir: Path | None) -> Path:
    """The one store STORE names (the naming rule of :mod:`featurestore.store.naming`)."""
    from featurestore.config import cache_root
    from featurestore.store.naming import resolve_store

    return resolve_store(store, cache_root(cache_dir))


@main.command()
@click.argument("store")
@_cache_opt
@click.option("--json", "as_json", is_flag=True)
def info(store: str, cache_dir: Path | None, as_json: bool) -> None:
    """Show a store's spec, size and provenance (STORE: a path or a name from `ls`).

    Exit status 2 when STORE is not a featurestore store (a folder, a FIFO, a file that is not
    one of its HDF5 stores): nothing is opened."""
    from featurestore.store import FeatureStore, identify

    d = FeatureStore(identify(_store_path(store, cache_dir))).info().to_dict()
    if as_json:
        click.echo(json.dumps(d))
        return
    click.echo(f"path         {d['path']}")
    click.echo(f"fingerprint  {d['fingerprint']}")
    click.echo(f"rows         {d['n_rows']}  (pending journal parts: {d['pending_parts']})")
    click.echo(f"feature_dim  {d['feature_dim']}")
    click.echo(f"size         {_human_bytes(d['size_bytes'])}")
    click.echo("spec         " + json.dumps(d["spec"], indent=2).replace("\n", "\n             "))
    runs = d["provenance"].get("runs", [])
    click.echo(f"runs         {len(runs)}")
    for run in runs[-5:]:
        click.echo(
            f"  {run.get('time')}  {run.get('device')}  batch {run.get('batch_size')}  "
            f"torch {run.get('torch')}  {run.get('source')}"
        )


@main.command()
@click.argument("store")
@_cache_opt
@click.option("--json", "as_json", is_flag=True)
def verify(store: str, cache_dir: Path | None, as_json: bool) -> None:
    """Check a store: it opens, attributes hash to the fingerprint, row counts agree, every
    chunk passes its checksum, every row is finite, keys are well formed and not duplicated.

    Exit status 1 when the store is damaged; 2 when STORE is not a featurestore store at all (a
    folder, a FIFO or device, a file that is not HDF5, an HDF5 file without the store's format
    attribute such as a dataset of your own): such a path is never called damaged."""
    from featurestore.store import verify as run

    report = run(_store_path(store, cache_dir))
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(
            f"{report.path}: {'OK' if report.ok else 'DAMAGED'} — {report.n_rows} rows "
            f"x {report.feature_dim}, {report.files_checked} file(s) checked"
        )
        for p in report.problems:
            click.echo(f"  - {p}")
        if not report.ok:
            click.echo(
                "To rebuild: delete the damaged file(s) and run `featurestore extract` "
                "again; undamaged rows in other stores are unaffected."
            )
    sys.exit(0 if report.ok else 1)
