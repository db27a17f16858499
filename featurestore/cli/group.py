"""The ``featurestore`` command group: its error handling, the shared options and helpers."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from featurestore.cli.terminal import shown
from featurestore.errors import FeatureStoreError
from featurestore.options import (
    COMBO_SEPARATOR,
    DECODES,
    POOLINGS,
    PRECISIONS,
    ExtractorOptions,
)

EXIT_SKIPPED = 3  # the run finished but some images were skipped
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT, as shells report it
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (SIGPIPE), as shells report it


def _one_line(exc: BaseException) -> str:
    """The error's message on one line, safe for a terminal (file names in it escaped)."""
    return " ".join(shown(exc).split()) or type(exc).__name__


class _Commands(click.Group):
    """Every command's :class:`FeatureStoreError` (and an ``OSError`` from the system, such
    as a full disk) ends as one line on stderr and its exit code, never a traceback; anything
    else is a bug and keeps its traceback. Ctrl-C exits 130 and SIGTERM (during an extraction,
    :class:`~featurestore.runtime.Terminated`) 143, with one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            code = getattr(exc, "exit_code", EXIT_INTERRUPTED)
            what = "SIGTERM" if code != EXIT_INTERRUPTED else "Ctrl-C"
            click.echo(
                f"interrupted ({what}): finished work is kept (extracted rows stay in the "
                "cache); run the same command again to resume",
                err=True,
            )
            ctx.exit(code)
        except FeatureStoreError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as cat does
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(1)


def print_skipped(skipped: Any, *, err: bool = False) -> None:
    """The list of skipped files every command prints the same way: ``  - PATH: REASON``."""
    for s in skipped:
        click.echo(f"  - {shown(s.path)}: {shown(s.reason)}", err=err)


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


def backbone_and_options(backbone: str, kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(backbone, keywords)`` for the library from ``--backbone`` and a command's keyword
    arguments (the extractor options are taken out of ``kw``): one backbone becomes an
    :class:`~featurestore.options.ExtractorOptions` (checked now), a combination (``a+b``)
    stays a name and its options travel as keywords, for every part."""
    chosen = _extractor_kwargs(kw)
    if COMBO_SEPARATOR in backbone:
        return backbone, chosen
    return ExtractorOptions.make(backbone, **chosen), {}


def _extractor_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Take the extractor options out of a command's keyword arguments."""
    out = {k: kw.pop(k) for k in _EXTRACTOR_OPTIONS}
    out["nodes"] = tuple(out["nodes"])
    return out
