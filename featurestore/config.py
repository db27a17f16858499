"""Where the cache lives: ``--cache-dir``, then ``$FEATURESTORE_CACHE``, then a default.

The default is the ``cache/`` folder of a source checkout when featurestore runs from one
(``cache/README.md`` marks it), else ``$XDG_CACHE_HOME/featurestore`` (``~/.cache/featurestore``).
One cache root serves every project: rows are keyed by image content and extractor fingerprint,
labels live in each project's own files.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "FEATURESTORE_CACHE"


def default_cache_root() -> Path:
    checkout = Path(__file__).resolve().parent.parent / "cache"
    if (checkout / "README.md").is_file():
        return checkout
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "featurestore"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root to use: the argument, then $FEATURESTORE_CACHE, then the default."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return default_cache_root()
