"""Commands about extracting: ``extract``, ``backbones`` and ``nodes``."""

from __future__ import annotations

import fnmatch
import json
import sys
from typing import Any

import click

from featurestore.backbones.spec import PRE_LOGITS
from featurestore.cli.group import (
    EXIT_SKIPPED,
    _cache_opt,
    backbone_and_options,
    extractor_options,
    main,
    print_skipped,
)
from featurestore.cli.terminal import shown
from featurestore.engines import ENGINES
from featurestore.options import VIEW_POLICIES


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
    if d.get("views"):
        click.echo(
            f"views      {d['views']}: {d['views_per_image']} per image, "
            f"{d['views_extracted']} extracted, {d['views_reused']} reused"
        )
    print_skipped(r.skipped)
    rate = f"{d['images_per_s']:.1f} images/s" if d["extracted"] else "no forward pass"
    if d.get("views") and d["extracted"]:
        rate += f", {d['views_per_s']:.1f} views/s"
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
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="local: this machine. ray: a Ray cluster (pip install featurestore[ray]); decoding "
    "and forward passes run on its nodes, which write into the cache: it must be a shared "
    "folder mounted at the same path on every node. --workers is then the number of forward "
    "actors (default: one per GPU, else one per CPU).",
)
@click.option(
    "--address",
    default=None,
    help="With --engine ray: the cluster (HOST:PORT, ray://HOST:PORT or auto; default "
    "$RAY_ADDRESS, else a Ray started on this machine for the run).",
)
@click.option("--split", default=None, help="Extract only this split (default: all).")
@click.option("--images-key", default=None, help="HDF5 sources: dataset holding the images.")
@click.option("--labels-key", default=None, help="HDF5 sources: dataset holding the labels.")
@click.option("--strict", is_flag=True, help="Stop at the first file that cannot be read.")
@click.option(
    "--views",
    type=click.Choice(VIEW_POLICIES),
    default=None,
    help="Also extract K augmented views of each image, each cached like a plain row: flip "
    "(2: centre crop, mirror), crops10 (10: centre and 4 corner crops, each mirrored), "
    "random16 (16: centre crop and 15 seeded random resized crops with flips and mild colour "
    "jitter). View 0 is the plain row (the same store); only missing views are computed.",
)
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


def _weights_here(spec: Any) -> str:
    from featurestore.backbones import weights_available

    if not spec.default_weights:
        return "none published"
    return "available" if weights_available(spec) else "not on this machine"


@main.command()
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.option("--family", default=None, help="Only this family (e.g. resnet, vgg, convnext).")
def backbones(pattern: str | None, as_json: bool, family: str | None) -> None:
    """List backbones: name, feature_dim, default node, input size, weights on this machine.

    \b
    Without PATTERN: the torchvision and EfficientNet-Lite backbones and the short names.
    PATTERN is a glob over every name, timm's models included (one per pretrained tag):
      featurestore backbones 'resnet*'
      featurestore backbones 'timm:*dinov2*'
      featurestore backbones '*convnext*'
    """
    from featurestore.backbones import ALIASES, get_backbone, list_backbones
    from featurestore.backbones.timm_table import table, table_status

    rows = [(b.name, b) for b in list_backbones(pattern)]
    aliases = sorted(a for a in ALIASES if pattern is None or fnmatch.fnmatchcase(a, pattern))
    if table() is not None or pattern is not None:  # else naming them would import timm
        rows += [(a, get_backbone(a)) for a in aliases]
        aliases = []
    rows = [(n, b) for n, b in rows if family is None or b.family == family]
    if as_json:
        for name, b in rows:
            here = _weights_here(b) == "available"
            row = {**b.to_dict(), "name": name, "weights_available": here}
            if name != b.name:
                row["alias_of"] = b.name
            click.echo(json.dumps(row))
        for a in aliases:
            click.echo(json.dumps({"name": a, "alias_of": ALIASES[a]}))
        return
    width = max([20, *(len(n) for n, _ in rows)])
    click.echo(
        f"{'name':<{width}} {'dim':>5}  {'default node':<20} {'pool':<5} {'input':>5}  weights"
    )
    for name, b in rows:
        node = "pre-logits" if b.default_node == PRE_LOGITS else b.default_node
        alias = f"  (= {b.name})" if name != b.name else ""
        click.echo(
            f"{name:<{width}} {b.feature_dim:>5}  {node:<20} {b.default_pooling:<5}"
            f" {b.crop_size:>5}  {_weights_here(b)}{alias}"
        )
    for a in aliases:
        click.echo(f"{a:<{width}} = {ALIASES[a]}")
    if pattern is None:
        click.echo(
            f"\n{table_status()}; list them with a pattern: featurestore backbones 'timm:*' "
            "(or 'timm:*convnext*', 'timm:*dinov2*', ...) and use them as --backbone timm:NAME"
        )
    elif not rows:
        click.echo(f"no backbone matches {pattern!r}", err=True)


@main.command()
@click.argument("backbone")
@click.option("--filter", "pattern", default=None, help="Only node names containing this text.")
def nodes(backbone: str, pattern: str | None) -> None:
    """List the graph node names of BACKBONE that --node accepts (its default marked).

    A timm model's default node, forward_head(pre_logits=True), is the input of its
    classifier as timm computes it; the other names are nodes of its traced graph.
    """
    from featurestore.backbones import get_backbone
    from featurestore.backbones.nodes import node_names

    spec = get_backbone(backbone)
    for n in node_names(spec):
        if pattern is None or pattern in n:
            mark = "   <- default" if n == spec.default_node else ""
            click.echo(f"{n}{mark}")
