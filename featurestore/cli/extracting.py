"""Commands about extracting: ``extract``, ``backbones`` and ``nodes``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from featurestore.cli.group import (
    EXIT_SKIPPED,
    _cache_opt,
    backbone_and_options,
    extractor_options,
    main,
    print_skipped,
)
from featurestore.cli.terminal import shown


def _print_summary(r: Any) -> None:
    d = r.to_dict()
    parts = d.get("parts") or [d]
    dims = "+".join(str(p["feature_dim"]) for p in parts)

    def per_part(key: str) -> str:
        each = ", ".join(f"{p['backbone']} {p[key]}" for p in parts)
        return f"{d[key]} ({each})" if len(parts) > 1 else str(d[key])

    click.echo(f"source     {shown(d['source'])}")
    click.echo(
        f"backbone   {d['backbone']}  ({dims}-d, {d['precision']}, "
        f"{d['device']}, batch {d['batch_size']}, {d['workers']} workers)"
    )
    click.echo(f"images     {d['images']} ({d['unique_images']} unique)")
    click.echo(f"extracted  {per_part('extracted')}")
    click.echo(f"reused     {per_part('reused')}")
    click.echo(f"skipped    {d['skipped']}")
    print_skipped(r.skipped)
    rate = f"{d['images_per_s']:.1f} images/s" if d["extracted"] else "no forward pass"
    click.echo(f"time       {d['seconds']:.2f} s ({rate})")
    for i, p in enumerate(parts):
        click.echo(f"{'store' if i == 0 else '':<10} {shown(p['store'])}")
    for w in r.warnings:
        click.echo(f"warning: {shown(w)}", err=True)


@main.command()
@click.argument("source")
@click.option(
    "--backbone",
    "-b",
    required=True,
    help="Backbone name (see `featurestore backbones`), or a combination such as "
    "resnet18+vgg16: each part is extracted with the same options.",
)
@extractor_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Default on CPU: one process per core (up to 8), each decoding and running its own "
    "copy of the network; on CUDA up to 8 decode workers. N: N decode processes feeding the "
    "main process; 0: everything in-process.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
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
    from featurestore.extraction import extract as run

    options, extra = backbone_and_options(backbone, kw)
    progress = sys.stderr.isatty() or not as_json
    result = run(source, backbone=options, progress=progress, **extra, **kw)
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
        click.echo(
            f"{b.name:<20} {b.feature_dim:>5}  {b.default_node:<20} {b.default_pooling:<5}"
            f" {b.crop_size:>5}  {here}"
        )


@main.command()
@click.argument("backbone")
@click.option("--filter", "pattern", default=None, help="Only node names containing this text.")
def nodes(backbone: str, pattern: str | None) -> None:
    """List the graph node names of BACKBONE that --node accepts."""
    from featurestore.backbones import build_model, get_backbone

    spec = get_backbone(backbone)
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
