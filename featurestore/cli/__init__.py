"""The ``featurestore`` command: a thin click layer that parses, calls the library and prints.

One module per command group, each adding its commands to :data:`main`
(:mod:`~featurestore.cli.group`: the group, its error handling and the shared options):

* :mod:`~featurestore.cli.extracting`: ``extract``, ``backbones``, ``nodes``;
* :mod:`~featurestore.cli.stores`: ``ls``, ``info``, ``verify``;
* :mod:`~featurestore.cli.heads`: ``heads``, ``sweep``, ``predict``;
* :mod:`~featurestore.cli.cache`: ``export``, ``rm``, ``gc``.

Everything printed that comes from outside (a file name, a reason) goes through
:func:`~featurestore.cli.terminal.shown`, so it cannot drive the terminal.

The ``featurestore`` entry point and ``python -m featurestore.cli`` run :func:`run`
(:mod:`~featurestore.cli.entry`): the group :data:`main`, then a prompt exit.
"""

from __future__ import annotations

from featurestore.cli import cache, extracting, heads, stores
from featurestore.cli.entry import run
from featurestore.cli.group import EXIT_INTERRUPTED, EXIT_SKIPPED, main

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_SKIPPED",
    "cache",
    "extracting",
    "heads",
    "main",
    "run",
    "stores",
]
