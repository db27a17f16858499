"""Commands that look at the stores of the cache: ``ls``, ``info`` and ``verify``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from featurestore.cli.group import _cache_opt, _human_bytes, main


@main.command("ls")
@_cache_opt
@click.option("--json", "as_json", is_flag=True)
def ls_(cache_dir: Path | None, as_json: bool) -> None:
    """List the stores in the cache."""
    from featurestore.config import cache_root
    from featurestore.store import list_stores

    root = cache_root(cache_dir)
    infos = list_stores(root)
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos]))
        return
    click.echo(f"cache: {root}")
    if not infos:
        click.echo("(no stores yet: run `featurestore extract`)")
        return
    click.echo(f"{'store':<42} {'rows':>8} {'dim':>6} {'size':>10}  nodes / precision")
    for i in infos:
        spec = i.spec
        click.echo(
            f"{i.path.name:<42} {i.n_rows:>8} {i.feature_dim:>6} "
            f"{_human_bytes(i.size_bytes):>10}  {','.join(spec.get('nodes', []))} / "
            f"{spec.get('precision')}"
        )


def _store_path(store: str, cache_dir: Path | None) -> Path:
    from featurestore.config import cache_root

    p = Path(store)
    if p.exists() or p.with_name(p.stem + ".parts").exists():
        return p
    root = cache_root(cache_dir)
    matches = sorted(root.glob(f"{store}*.h5")) if root.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    raise click.BadParameter(
        f"{store}: no such store file (nor a unique name prefix in {root}); see `featurestore ls`"
    )


@main.command()
@click.argument("store")
@_cache_opt
@click.option("--json", "as_json", is_flag=True)
def info(store: str, cache_dir: Path | None, as_json: bool) -> None:
    """Show a store's spec, size and provenance (STORE: a path or a name from `ls`)."""
    from featurestore.store import FeatureStore

    d = FeatureStore(_store_path(store, cache_dir)).info().to_dict()
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
    chunk passes its checksum, keys are well formed and not duplicated. Exit 1 on problems."""
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
