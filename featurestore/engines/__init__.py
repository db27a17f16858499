"""Where an extraction runs: ``local`` (:mod:`featurestore.pipeline`, this machine) or ``ray``
(:mod:`featurestore.engines.ray`, a Ray cluster through Ray Data, an optional extra).

Every engine gets the same work (the records whose keys the store lacks) and writes the same
rows into the same content-keyed store; only where the decoding and the forward passes run
differs. Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

from featurestore.errors import OptionError

__all__ = ["ENGINES", "RAY_INSTALL_HINT", "check_engine"]

ENGINES = ("local", "ray")
RAY_INSTALL_HINT = 'pip install "featurestore[ray]"'


def check_engine(engine: str, address: str | None) -> None:
    """Refuse an unknown engine, and an ``address`` without the ray engine."""
    if engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address is not None and engine != "ray":
        raise OptionError("--address names a Ray cluster: use it with --engine ray")
