"""The ``featurestore`` command: a thin click layer that parses, calls the library and prints."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

EXIT_SKIPPED = 3  # the run finished but some images were skipped


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="featurestore")
def main(verbose: int) -> None:
    """Extract frozen-backbone image features once into a content-keyed HDF5 cache, then train
    light classifiers on them in seconds.

    \b
    Typical use:
      featurestore extract IMAGES/ --backbone efficientnet_lite0
      featurestore ls
      featurestore sweep IMAGES/ --backbone efficientnet_lite0 --out report/
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


_cache_opt = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache root (default: $FEATURESTORE_CACHE, else the checkout's cache/ or "
    "~/.cache/featurestore).",
)


def extractor_options(func: Any) -> Any:
    """Options that choose an extractor (shared by extract, sweep and predict)."""
    opts = [
        click.option("--node", "nodes", multiple=True,
                     help="Graph node to read (repeat for several, concatenated). Default: the "
                     "backbone's penultimate layer. List them with `featurestore nodes NAME`."),
        click.option("--pooling", type=click.Choice(["avg", "max", "flatten", "none"]),
                     default=None, help="How a (B,C,H,W) node output becomes a row. Default: none "
                     "for the default node, avg for others."),
        click.option("--weights", default="default", show_default=True,
                     help="'default' (pretrained, from torchvision's cache or the Lite packages), "
                     "'none' (random init), or the path of a local state dict."),
        click.option("--input-size", type=click.IntRange(min=1), default=None,
                     help="Crop size fed to the network (the resize keeps the backbone's ratio)."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
                     show_default=True, help="Compute precision (part of the fingerprint)."),
        click.option("--decode", type=click.Choice(["draft", "full"]), default="draft",
                     show_default=True, help="draft: let libjpeg decode JPEGs at a reduced scale "
                     "that still covers the resize (faster); full: always decode at full size."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _extractor_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": list(kw.pop("nodes")) or None,
        "pooling": kw.pop("pooling"),
        "weights": kw.pop("weights"),
        "input_size": kw.pop("input_size"),
        "precision": kw.pop("precision"),
        "decode": kw.pop("decode"),
    }


def _print_summary(r: Any) -> None:
    d = r.to_dict()
    click.echo(f"source     {d['source']}")
    click.echo(f"backbone   {d['backbone']}  ({d['feature_dim']}-d, {d['precision']}, "
               f"{d['device']}, batch {d['batch_size']}, {d['workers']} workers)")
    click.echo(f"images     {d['images']} ({d['unique_images']} unique)")
    click.echo(f"extracted  {d['extracted']}")
    click.echo(f"reused     {d['reused']}")
    click.echo(f"skipped    {d['skipped']}")
    for s in r.skipped:
        click.echo(f"  - {s.path}: {s.reason}")
    rate = f"{d['images_per_s']:.1f} images/s" if d["extracted"] else "no forward pass"
    click.echo(f"time       {d['seconds']:.2f} s ({rate})")
    click.echo(f"store      {d['store']}")
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)


@main.command()
@click.argument("source")
@click.option("--backbone", "-b", required=True, help="Backbone name (see `featurestore backbones`).")
@extractor_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decode worker processes (default: cores-1 on CPU, up to 8 on CUDA).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--split", default=None, help="Extract only this split (default: all).")
@click.option("--images-key", default=None, help="HDF5 sources: dataset holding the images.")
@click.option("--labels-key", default=None, help="HDF5 sources: dataset holding the labels.")
@click.option("--strict", is_flag=True, help="Stop at the first file that cannot be read.")
@_cache_opt
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def extract(source: str, backbone: str, as_json: bool, **kw: Any) -> None:
    """Extract features of SOURCE's images that are not cached yet.

    SOURCE is an image folder (ImageFolder layout, train/val/test split folders detected), a CSV
    manifest (path,label[,split]), an HDF5 file or folder of image arrays, or builtin:digits.

    Exit status: 0 when every image was stored, 3 when the run finished but skipped some images
    (listed in the summary), 1 on error.
    """
    from featurestore.extract import extract as run

    ex = _extractor_kwargs(kw)
    try:
        result = run(source, backbone=backbone, progress=sys.stderr.isatty() or not as_json,
                     **ex, **kw)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        _print_summary(result)
    sys.exit(EXIT_SKIPPED if result.skipped else 0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.option("--family", default=None, help="Only this family (e.g. resnet, vgg).")
def backbones(as_json: bool, family: str | None) -> None:
    """List backbones: name, feature_dim, default node, input size, weights available here."""
    from featurestore.backbones import list_backbones, weights_available

    rows = [b for b in list_backbones() if family is None or b.family == family]
    if as_json:
        for b in rows:
            click.echo(json.dumps({**b.to_dict(), "weights_available": weights_available(b)}))
        return
    click.echo(f"{'name':<20} {'dim':>5}  {'default node':<20} {'pool':<5} {'input':>5}  weights")
    for b in rows:
        here = "available" if weights_available(b) else "not on this machine"
        click.echo(f"{b.name:<20} {b.feature_dim:>5}  {b.default_node:<20} {b.default_pooling:<5}"
                   f" {b.crop_size:>5}  {here}")


@main.command()
@click.argument("backbone")
@click.option("--filter", "pattern", default=None, help="Only node names containing this text.")
def nodes(backbone: str, pattern: str | None) -> None:
    """List the graph node names of BACKBONE that --node accepts."""
    from featurestore.backbones import build_model, get_backbone

    try:
        spec = get_backbone(backbone)
    except ValueError as exc:
        _fail(exc)
    model = build_model(spec, "none")
    if spec.provider == "timm":
        from timm.models._features_fx import get_graph_node_names
    else:
        from torchvision.models.feature_extraction import get_graph_node_names
    _, names = get_graph_node_names(model)
    for n in names:
        if pattern is None or pattern in n:
            mark = "   <- default" if n == spec.default_node else ""
            click.echo(f"{n}{mark}")


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
        click.echo(f"{i.path.name:<42} {i.n_rows:>8} {i.feature_dim:>6} "
                   f"{_human_bytes(i.size_bytes):>10}  {','.join(spec.get('nodes', []))} / "
                   f"{spec.get('precision')}")


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
    from featurestore.store import FeatureStore, StoreError

    try:
        i = FeatureStore(_store_path(store, cache_dir)).info()
    except StoreError as exc:
        _fail(exc)
    d = i.to_dict()
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
        click.echo(f"  {run.get('time')}  {run.get('device')}  batch {run.get('batch_size')}  "
                   f"torch {run.get('torch')}  {run.get('source')}")


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
        click.echo(f"{report.path}: {'OK' if report.ok else 'DAMAGED'} — {report.n_rows} rows "
                   f"x {report.feature_dim}, {report.files_checked} file(s) checked")
        for p in report.problems:
            click.echo(f"  - {p}")
        if not report.ok:
            click.echo("To rebuild: delete the damaged file(s) and run `featurestore extract` "
                       "again; undamaged rows in other stores are unaffected.")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
