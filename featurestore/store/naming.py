"""One naming rule for the stores of a cache: which store(s) a name given on the command line means.

A store is named, in this order, by the first rule that matches at least one store:

1. **a path**: a name holding a path separator, or an existing ``*.h5`` file or ``*.parts``
   folder, is that store (it must exist);
2. **a store file name**: ``efficientnet_lite0-e61e5629a5da5eaa.h5``, with or without ``.h5``;
3. **a backbone**: ``efficientnet_lite0`` names every store of that backbone (one per set of
   extractor options: node, pooling, precision, input size, weights);
4. **a fingerprint prefix**: four or more hex digits of the extractor fingerprint;
5. **the start of a store file name**: ``efficientnet_lite0-e61e``.

A name that matches several stores is ambiguous where one store is needed (``info``,
``verify``, ``rm``): :func:`resolve_store` then lists every candidate with the options that tell
them apart and says how to name one. ``a+b`` names a combination, not a store.

Reading a store's options opens only its attributes, under the shared lock; a damaged store is
still found by its file name (its options read as unknown).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurestore.errors import StoreError, StoreNameError
from featurestore.options import COMBO_SEPARATOR
from featurestore.store.format import H5_ERRORS, attr_text
from featurestore.store.journal import Journal
from featurestore.store.reader import open_checked

__all__ = [
    "StoreRef",
    "describe_options",
    "distinguishing_options",
    "find_stores",
    "match_stores",
    "resolve_store",
]

STORE_FILE = re.compile(r"^(?P<backbone>.+)-(?P<fp>[0-9a-f]{16})\.h5$")
HEX = re.compile(r"^[0-9a-f]{4,64}$")
#: The options that tell two stores of one backbone apart, in the order they are shown.
OPTION_NAMES = ("node", "pooling", "precision", "input", "weights", "decode", "version")


@dataclass(frozen=True)
class StoreRef:
    """A store of the cache as the naming rule sees it: its path and what its files say."""

    path: Path
    backbone: str
    fingerprint: str  # the full fingerprint, or the file name's 16 digits if unreadable
    spec: dict[str, Any] | None  # None: the store's attributes could not be read

    @property
    def name(self) -> str:
        return self.path.name

    def options(self) -> dict[str, str]:
        """Its extractor options, as :func:`describe_options` gives them."""
        return describe_options(self.spec)


def _short_weights(identity: str) -> str:
    kind, _, rest = identity.partition(":")
    if kind == "torchvision":
        return rest.split(":")[0] or kind
    if kind == "random-init":
        return "none"
    if kind == "file":
        return "file " + rest.removeprefix("sha256=")[:12]
    return kind


def describe_options(spec: dict[str, Any] | None) -> dict[str, str]:
    """The extractor options of a store's spec that tell stores of one backbone apart:
    ``node``, ``pooling``, ``precision``, ``input`` (crop size), ``weights`` (short form),
    ``decode`` and ``version`` (of the extractor); ``?`` for each when ``spec`` is None."""
    if not isinstance(spec, dict):
        return dict.fromkeys(OPTION_NAMES, "?")
    pre = spec.get("preprocess") if isinstance(spec.get("preprocess"), dict) else {}
    nodes = spec.get("nodes")
    return {
        "node": ",".join(map(str, nodes)) if isinstance(nodes, list) else "?",
        "pooling": str(spec.get("pooling", "?")),
        "precision": str(spec.get("precision", "?")),
        "input": str(pre.get("crop", "?")),
        "weights": _short_weights(str(spec.get("weights", "?"))),
        "decode": str(pre.get("decode", "?")),
        "version": str(spec.get("extractor_version", "?")),
    }


def distinguishing_options(refs: list[StoreRef]) -> list[dict[str, str]]:
    """For each store, the options on which the stores differ (all options for one store)."""
    described = [r.options() for r in refs]
    if len(refs) < 2:
        return described
    differ = [k for k in OPTION_NAMES if len({d[k] for d in described}) > 1]
    return [{k: d[k] for k in differ} for d in described]


def _store_paths(root: Path) -> list[Path]:
    """Every store under ``root``: a ``.h5`` file, or a ``.parts`` folder without one."""
    if not root.is_dir():
        return []
    paths = {p for p in root.glob("*.h5") if not p.name.startswith(".")}
    paths.update(
        d.with_name(d.name[: -len(".parts")] + ".h5")
        for d in root.glob("*.parts")
        if d.is_dir() and not d.name.startswith(".")
    )
    return sorted(paths)


def _read_ref(path: Path) -> StoreRef:
    m = STORE_FILE.match(path.name)
    backbone = m["backbone"] if m else path.stem
    fallback = StoreRef(path, backbone, m["fp"] if m else "", None)
    try:
        journal = Journal(path)
    except StoreError:
        return fallback

    def read() -> StoreRef:
        sources = journal.sources()
        if not sources:
            return fallback
        with open_checked(sources[0], None) as f:
            spec = json.loads(attr_text(f, "spec"))
            return StoreRef(
                path, str(spec.get("backbone", backbone)), attr_text(f, "fingerprint"), spec
            )

    try:
        return journal.shared(read)
    except (StoreError, *H5_ERRORS):
        return fallback  # damaged or unreadable: known by its file name only


def find_stores(root: Path | str) -> list[StoreRef]:
    """Every store under cache root ``root``, sorted by file name."""
    return [_read_ref(p) for p in _store_paths(Path(root))]


def _is_path(name: str) -> bool:
    if os.sep in name or (os.altsep and os.altsep in name):
        return True
    p = Path(name)
    return (p.suffix == ".h5" and p.is_file()) or (p.suffix == ".parts" and p.is_dir())


def _as_store_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".parts":
        return p.with_name(p.name[: -len(".parts")] + ".h5")
    return p


def match_stores(name: str, root: Path | str) -> list[StoreRef]:
    """The stores ``name`` names under cache root ``root`` (see the module docstring for the
    rule); empty when it names none.

    Raises:
        StoreNameError: ``name`` is empty, or a combination (``a+b``).
    """
    name = name.strip()
    if not name:
        raise StoreNameError("a store name is empty; see `featurestore ls` for the stores")
    if _is_path(name):
        path = _as_store_path(name)
        exists = path.exists() or path.with_name(path.stem + ".parts").is_dir()
        return [_read_ref(path)] if exists else []
    if COMBO_SEPARATOR in name:
        parts = " and ".join(f"`{p.strip()}`" for p in name.split(COMBO_SEPARATOR))
        raise StoreNameError(
            f"{name!r} names a combination of backbones, whose rows live in one store per "
            f"backbone; name one store at a time ({parts})"
        )
    refs = find_stores(root)
    file_name = name if name.endswith(".h5") else f"{name}.h5"
    rules = (
        lambda r: r.name == file_name,
        lambda r: r.backbone == name,
        lambda r: bool(HEX.match(name)) and r.fingerprint.startswith(name),
        lambda r: r.name.startswith(name),
    )
    for rule in rules:
        found = [r for r in refs if rule(r)]
        if found:
            return found
    return []


def _listing(refs: list[StoreRef]) -> str:
    described = distinguishing_options(refs)
    items = []
    for ref, opts in zip(refs, described, strict=True):
        text = ", ".join(f"{k} {v}" for k, v in opts.items())
        items.append(f"{ref.name} ({text})" if text else ref.name)
    return "; ".join(items)


def resolve_store(name: str, root: Path | str) -> Path:
    """The one store ``name`` names under cache root ``root`` (see the module docstring).

    Raises:
        StoreNameError: ``name`` names no store (the message lists the stores there are) or
            several (it lists each with the options that tell them apart, and how to name one).
    """
    root = Path(root)
    found = match_stores(name, root)
    if len(found) == 1:
        return found[0].path
    if not found:
        if _is_path(name):
            raise StoreNameError(f"no store at {name} (no such .h5 file or .parts folder)")
        there = [r.name for r in find_stores(root)]
        listed = ", ".join(there[:20]) + (f" and {len(there) - 20} more" if len(there) > 20 else "")
        raise StoreNameError(
            f"no store named {name!r} in {root}: "
            + (f"the stores there are {listed}" if there else "the cache holds no store yet")
            + ". A store is named by a path, its file name, its backbone, a fingerprint prefix "
            "or the start of its file name (see `featurestore ls`)"
        )
    raise StoreNameError(
        f"{name!r} matches {len(found)} stores in {root}: {_listing(found)}. Name one by its "
        f"file name or the first digits of its fingerprint (e.g. {found[0].fingerprint[:8]} for "
        "the first; `featurestore ls` lists them)",
        candidates=tuple(r.path for r in found),
    )
