"""One naming rule for the stores of a cache: which store(s) a name given on the command line means.

A store is named, in this order, by the first rule that matches at least one store:

1. **a path**: a name holding a path separator, or naming something that exists, is taken
   as given (nothing is opened: the command judges whether it is a store);
2. **a store file name**: ``efficientnet_lite0-e61e5629a5da5eaa.h5``, with or without ``.h5``;
3. **a backbone**: ``efficientnet_lite0`` names every store of that backbone (one per set of
   extractor options: node, pooling, precision, input size, weights);
4. **a fingerprint prefix**: four or more hex digits of the extractor fingerprint;
5. **the start of a store file name**: ``efficientnet_lite0-e61e``.

A name that matches several stores is ambiguous where one store is needed (``info``,
``verify``, ``rm``): :func:`resolve_store` then lists every candidate with the options that tell
them apart and says how to name one. ``a+b`` names a combination, not a store.

Names are matched on file names; only the stores a name matched are opened, to read their
options from their attributes (regular files only, without creating lock files). A damaged store
is still found by its file name (its options read as unknown).
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


def _by_name(path: Path) -> StoreRef:
    """What a store's file name says (``<backbone>-<fingerprint[:16]>.h5``); nothing is read."""
    m = STORE_FILE.match(path.name)
    return StoreRef(path, m["backbone"] if m else path.stem, m["fp"] if m else "", None)


def _with_spec(ref: StoreRef) -> StoreRef:
    """``ref`` with its spec and full fingerprint read from its first file's attributes.

    Only a regular file is opened (never a FIFO or a device in a store's place), without the
    lock (attributes are read from one open file, which a compaction replaces but never
    changes) and so without creating lock files; a file that cannot be read leaves ``ref`` as
    its name describes it."""
    parts = ref.path.with_name(ref.path.stem + ".parts")
    first = ref.path if ref.path.exists() else next(iter(sorted(parts.glob("part-*.h5"))), None)
    if first is None or not first.is_file():
        return ref
    try:
        with open_checked(first, None) as f:
            spec = json.loads(attr_text(f, "spec"))
            fp = attr_text(f, "fingerprint")
    except (StoreError, *H5_ERRORS):
        return ref  # damaged, unreadable or gone: known by its file name only
    if not isinstance(spec, dict):
        return ref
    return StoreRef(ref.path, str(spec.get("backbone", ref.backbone)), fp, spec)


def find_stores(root: Path | str) -> list[StoreRef]:
    """Every store under cache root ``root``, sorted by file name, with its options."""
    return [_with_spec(_by_name(p)) for p in _store_paths(Path(root))]


def _is_path(name: str) -> bool:
    """A name that is a path: it holds a separator, or names something that exists here."""
    if os.sep in name or (os.altsep and os.altsep in name):
        return True
    p = Path(name)
    return p.exists() or p.with_name(p.stem + ".parts").is_dir()


def _file_backbone(name: str) -> str:
    """A backbone name as store file names spell it (see ``journal.store_name``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def match_stores(name: str, root: Path | str) -> list[StoreRef]:
    """The stores ``name`` names under cache root ``root`` (see the module docstring for the
    rule); empty when it names none. A path is taken as given: nothing is opened or checked
    (the caller's command judges whether it is a store).

    Raises:
        StoreNameError: ``name`` is empty, or a combination (``a+b``).
    """
    name = name.strip()
    if not name:
        raise StoreNameError("a store name is empty; see `featurestore ls` for the stores")
    if _is_path(name):
        path = Path(name)
        exists = path.exists() or path.with_name(path.stem + ".parts").is_dir()
        return [_by_name(path)] if exists else []
    if COMBO_SEPARATOR in name:
        parts = " and ".join(f"`{p.strip()}`" for p in name.split(COMBO_SEPARATOR))
        raise StoreNameError(
            f"{name!r} names a combination of backbones, whose rows live in one store per "
            f"backbone; name one store at a time ({parts})"
        )
    refs = [_by_name(p) for p in _store_paths(Path(root))]
    file_name = name if name.endswith(".h5") else f"{name}.h5"
    hex_name = name.lower() if HEX.match(name.lower()) else None

    def fingerprint_rule(r: StoreRef) -> bool:
        if hex_name is None or not r.fingerprint.startswith(hex_name[:16]):
            return False
        return len(hex_name) <= 16 or _with_spec(r).fingerprint.startswith(hex_name)

    rules = (
        lambda r: r.name == file_name,
        lambda r: r.backbone == _file_backbone(name),
        fingerprint_rule,
        lambda r: r.name.startswith(name),
    )
    for rule in rules:
        found = [r for r in refs if rule(r)]
        if found:
            return [_with_spec(r) for r in found]
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
        there = [p.name for p in _store_paths(root)]
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
