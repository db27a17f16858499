"""The ``featurestore`` command: a thin click layer that parses, calls the library and prints."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from featurestore.errors import FeatureStoreError
from featurestore.options import DECODES, POOLINGS, PRECISIONS, ExtractorOptions
from featurestore.report.selection import CLASS_WEIGHTS, SCORINGS

EXIT_SKIPPED = 3  # the run finished but some images were skipped
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT, as shells report it


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Commands(click.Group):
    """Every command's :class:`FeatureStoreError` (and an ``OSError`` from the system, such
    as a full disk) ends as one line on stderr and its exit code, never a traceback; anything
    else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeatureStoreError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(1)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


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
        click.option(
            "--node",
            "nodes",
            multiple=True,
            help="Graph node to read (repeat for several, concatenated). Default: the "
            "backbone's penultimate layer. List them with `featurestore nodes NAME`.",
        ),
        click.option(
            "--pooling",
            type=click.Choice(POOLINGS),
            default=None,
            help="How a (B,C,H,W) node output becomes a row. Default: none "
            "for the default node, avg for others.",
        ),
        click.option(
            "--weights",
            default="default",
            show_default=True,
            help="'default' (pretrained, from torchvision's cache or the Lite packages), "
            "'none' (random init), or the path of a local state dict.",
        ),
        click.option(
            "--input-size",
            type=click.IntRange(min=1),
            default=None,
            help="Crop size fed to the network (the resize keeps the backbone's ratio).",
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="fp32",
            show_default=True,
            help="Compute precision (part of the fingerprint).",
        ),
        click.option(
            "--decode",
            type=click.Choice(DECODES),
            default="draft",
            show_default=True,
            help="draft: let libjpeg decode JPEGs at a reduced scale "
            "that still covers the resize (faster); full: always decode at full size.",
        ),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


_EXTRACTOR_OPTIONS = ("nodes", "pooling", "weights", "input_size", "precision", "decode")


def _extractor_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Take the extractor options out of a command's keyword arguments."""
    out = {k: kw.pop(k) for k in _EXTRACTOR_OPTIONS}
    out["nodes"] = tuple(out["nodes"])
    return out


def _print_summary(r: Any) -> None:
    d = r.to_dict()
    click.echo(f"source     {d['source']}")
    click.echo(
        f"backbone   {d['backbone']}  ({d['feature_dim']}-d, {d['precision']}, "
        f"{d['device']}, batch {d['batch_size']}, {d['workers']} workers)"
    )
    click.echo(f"images     {d['images']} ({d['unique_images']} unique)")
    click.echo(f"extracted  {d['extracted']}")
    click.echo(f"reused     {d['reused']}")
    click.echo(f"skipped    {d['skipped']}")
    for s in r.skipped:
        click.echo(f"  - {click.format_filename(s.path)}: {s.reason}")  # any bytes print
    rate = f"{d['images_per_s']:.1f} images/s" if d["extracted"] else "no forward pass"
    click.echo(f"time       {d['seconds']:.2f} s ({rate})")
    click.echo(f"store      {d['store']}")
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)


@main.command()
@click.argument("source")
@click.option(
    "--backbone", "-b", required=True, help="Backbone name (see `featurestore backbones`)."
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

    options = ExtractorOptions.make(backbone, **_extractor_kwargs(kw))
    result = run(source, backbone=options, progress=sys.stderr.isatty() or not as_json, **kw)
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
    default=32,
    show_default=True,
    help="Side of the raw-pixel baseline's resized image.",
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
        click.echo(f"{rank:>4}  {r.cv_score:.4f}  {r.accuracy:.4f}  {r.feature_set} / {r.head}")
    for f in outcome.failures:
        click.echo(f"{'-':>4}  {'failed':>14}  {f.feature_set} / {f.head}: {f.error}")
    for w in outcome.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"report     {outcome.out_dir}")
    for name, p in outcome.paths.items():
        click.echo(f"  {name:<17} {p}")


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
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("predictions.csv"),
    show_default=True,
    help="CSV of path, predicted label, probability, true label.",
)
@_cache_opt
def predict(
    source: str, head_path: Path, split: str | None, out_csv: Path, cache_dir: Path | None
) -> None:
    """Predict SOURCE's images with a saved head, extracting through the cache with the head's
    own backbone(s). Refuses a head whose bytes do not match its sidecar's sha256, or whose
    extractor fingerprint differs from this machine's. Heads are pickles: load only heads from
    sources you trust."""
    from featurestore.predict import predict as run

    pred = run(source, head_path, split=split, cache_dir=cache_dir, progress=True)
    pred.write_csv(out_csv)
    click.echo(f"predicted  {len(pred.predicted)} images -> {out_csv}")
    if pred.skipped:
        click.echo(f"skipped    {len(pred.skipped)}")
        for s in pred.skipped:
            click.echo(f"  - {click.format_filename(s.path)}: {s.reason}")
    acc = pred.accuracy
    if acc is not None:
        n = sum(lab is not None for lab in pred.labels)
        right = round(acc * n)
        click.echo(f"accuracy   {acc:.4f} ({right}/{n} images with a known label)")


if __name__ == "__main__":  # pragma: no cover
    main()
