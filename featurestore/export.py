"""Export a source's cached rows to a file other tools read: ``.npz``, ``.csv`` or ``.parquet``.

One row per image of the source (one split, or all) that could be decoded, in the source's
order, aligned with its path, image key, label and split; rows not cached yet are extracted
first, through the cache (:func:`featurestore.api.load_features`, which also takes a
combination such as ``"alexnet+vgg16"``: the rows are concatenated).

* ``.npz`` (:func:`numpy.load`, no pickle needed): ``X`` float32 ``(n, d)``, ``y`` int64
  (index into ``class_names``, -1 without a label), ``keys``, ``paths``, ``labels`` (``""``
  without one), ``splits``, ``class_names`` (unicode arrays) and ``metadata`` (a JSON string:
  source, split, the extractors with their fingerprints).
* ``.csv``: a header ``path,key,label,split,f0,...,f{d-1}``, floats written with 9 significant
  digits (float32 round-trips exactly).
* ``.parquet`` (needs pyarrow): columns ``path``, ``key``, ``label``, ``split`` and
  ``features`` (a fixed-size list of float32); the metadata JSON under the schema's
  ``featurestore`` key.

The file is written atomically and never over one of the run's inputs
(:func:`featurestore.output.open_output`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from featurestore.api import load_features
from featurestore.config import cache_root
from featurestore.errors import OptionError
from featurestore.extractor import resolve
from featurestore.options import ExtractorOptions, split_backbones
from featurestore.output import check_output, open_output
from featurestore.provenance import VERSION
from featurestore.sources import Skipped, Source, open_source
from featurestore.store import FeatureStore

__all__ = [
    "FORMATS",
    "Export",
    "ExportPlan",
    "export_features",
    "format_of",
    "plan_export",
    "write_csv",
]

FORMATS = ("npz", "csv", "parquet")


@dataclass
class Export:
    """Rows of a source, aligned with its records, ready to write (see the module docstring)."""

    X: np.ndarray
    keys: list[str]
    paths: list[str]
    labels: list[str | None]
    splits: list[str | None]
    class_names: list[str]
    metadata: dict[str, Any]
    skipped: list[Skipped] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)

    @property
    def y(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.class_names)}
        return np.array([index.get(lab, -1) for lab in self.labels], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)


def format_of(path: Path | str, fmt: str | None = None) -> str:
    """The format to write: ``fmt`` if given, else from the file name's suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise OptionError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise OptionError(
            f"cannot tell the format of {path}: give a file ending in .npz, .csv or .parquet, "
            "or choose one with --format"
        )
    return suffix


def collect(
    source: str | Path | Source,
    *,
    backbone: Any,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> Export:
    """The rows of ``source`` (one split or all) for ``backbone`` (a name, a combination
    ``"a+b"`` or :class:`~featurestore.options.ExtractorOptions`), extracting what is missing.
    ``options``: extractor and run options as :func:`~featurestore.api.load_features` takes."""
    src = source if isinstance(source, Source) else open_source(source)
    records = src.select(split)
    feats = load_features(src.subset(records), backbone=backbone, cache_dir=cache_dir, **options)
    present = set(feats.keys)
    kept = [r for r in records if r.key in present]
    metadata = {
        "featurestore": VERSION,
        "source": src.name,
        "split": split,
        "n_rows": len(feats.keys),
        "feature_dim": int(feats.X.shape[1]) if feats.X.ndim == 2 else 0,
        "class_names": feats.class_names,
        "extractors": [e.to_json() for e in feats.extractors],
    }
    inputs = [Path(r.path) for r in records]
    if not isinstance(source, Source) and Path(source).is_file():
        inputs.append(Path(source))
    return Export(
        X=np.asarray(feats.X, dtype=np.float32).reshape(len(feats.keys), -1),
        keys=feats.keys,
        paths=feats.paths,
        labels=feats.labels,
        splits=[r.split for r in kept],
        class_names=feats.class_names,
        metadata=metadata,
        skipped=feats.skipped,
        inputs=inputs,
    )


def write_csv(data: Export, fh: IO[str]) -> None:
    """Write ``data`` as CSV to text stream ``fh`` (see the module docstring)."""
    d = data.X.shape[1]
    head = ["path", "key", "label", "split", *(f"f{i}" for i in range(d))]
    line = _csv_line()
    fh.write(line(head))
    fmt = ",".join(["%.9g"] * d)
    for i, row in enumerate(data.X):
        meta = line([data.paths[i], data.keys[i], data.labels[i] or "", data.splits[i] or ""])
        numbers = "," + fmt % tuple(row.tolist()) if d else ""
        fh.write(meta[:-2] + numbers + "\r\n")  # meta ends in the csv module's \r\n


def _csv_line() -> Callable[[list[str]], str]:
    """A function that formats one CSV row as the csv module does (quoting, ``\\r\\n``)."""
    buf = io.StringIO()
    w = csv.writer(buf)

    def line(values: list[str]) -> str:
        buf.seek(0)
        buf.truncate()
        w.writerow(values)
        return buf.getvalue()

    return line


def _npz(data: Export, fh: IO[bytes]) -> None:
    np.savez(
        fh,
        X=data.X,
        y=data.y,
        keys=np.array(data.keys, dtype=str),
        paths=np.array(data.paths, dtype=str),
        labels=np.array([lab or "" for lab in data.labels], dtype=str),
        splits=np.array([s or "" for s in data.splits], dtype=str),
        class_names=np.array(data.class_names, dtype=str),
        metadata=np.array(json.dumps(data.metadata)),
    )


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise OptionError(
            "writing .parquet needs pyarrow, which is not installed: `pip install pyarrow`, "
            "or export to .npz or .csv"
        ) from None
    return pa, pq


def _text(s: str | None) -> str:
    """A string Arrow accepts (UTF-8): a byte of a file name that is not UTF-8 as ``\\xNN``."""
    return (s or "").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _parquet(data: Export, fh: IO[bytes]) -> None:
    pa, pq = _pyarrow()
    d = data.X.shape[1]
    features = pa.FixedSizeListArray.from_arrays(pa.array(data.X.reshape(-1), pa.float32()), d)
    table = pa.table(
        {
            "path": pa.array([_text(p) for p in data.paths], pa.string()),
            "key": pa.array(data.keys, pa.string()),
            "label": pa.array(data.labels, pa.string()),
            "split": pa.array(data.splits, pa.string()),
            "features": features,
        }
    )
    table = table.replace_schema_metadata({"featurestore": json.dumps(data.metadata)})
    pq.write_table(table, fh)


def write_export(data: Export, out: Path | str, *, fmt: str | None = None) -> Path:
    """Write ``data`` to ``out`` atomically in format ``fmt`` (default: from the suffix).

    Raises:
        OptionError: unknown format, or ``.parquet`` without pyarrow.
        OutputError: ``out`` is an input or a folder, or cannot be written.
    """
    kind = format_of(out, fmt)
    if kind == "parquet":
        _pyarrow()  # say so before anything is written
    if kind == "csv":
        with open_output(out, inputs=data.inputs) as fh:
            write_csv(data, fh)
    else:
        with open_output(out, binary=True, inputs=data.inputs) as fh:
            (_npz if kind == "npz" else _parquet)(data, fh)
    return Path(out)


def export_features(
    source: str | Path | Source,
    out: Path | str,
    *,
    backbone: Any,
    fmt: str | None = None,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> Export:
    """Write the rows of ``source`` for ``backbone`` to ``out`` (see the module docstring);
    returns what was written (its ``skipped`` lists the images that could not be decoded).

    The format and the output are checked (and ``.parquet`` without pyarrow refused) before
    any image is read."""
    kind = format_of(out, fmt)
    if kind == "parquet":
        _pyarrow()
    inputs = [Path(source)] if not isinstance(source, Source) and Path(source).is_file() else []
    check_output(out, inputs=inputs)
    data = collect(source, backbone=backbone, split=split, cache_dir=cache_dir, **options)
    write_export(data, out, fmt=kind)
    return data


@dataclass
class ExportPlan:
    """What :func:`export_features` would do, found without extracting or writing anything:
    the format, and for each backbone its store and how many of the source's images it holds
    already (the others would be extracted first)."""

    out: str
    fmt: str
    n_images: int
    stores: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "format": self.fmt, "images": self.n_images, "stores": self.stores}


def plan_export(
    source: str | Path | Source,
    out: Path | str,
    *,
    backbone: Any,
    fmt: str | None = None,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> ExportPlan:
    """What exporting ``source`` to ``out`` would do (see :class:`ExportPlan`): the same checks
    as :func:`export_features` (format, pyarrow, an input as the output), then a look at the
    stores. Nothing is extracted, and nothing is written, not even a lock file.

    ``options``: the extractor options (as :func:`load_features` takes them); run options
    (batch size, workers, ...) are accepted and ignored."""
    kind = "csv" if str(out) == "-" and fmt is None else format_of(out, fmt)
    if kind == "parquet":
        _pyarrow()
    src = source if isinstance(source, Source) else open_source(source)
    if str(out) != "-":
        inputs = [Path(source)] if not isinstance(source, Source) and Path(source).is_file() else []
        check_output(out, inputs=[*inputs, *(Path(r.path) for r in src.records)])
    records = src.select(split)
    keys = {r.key for r in records}
    chosen = {k: options[k] for k in EXTRACTOR_OPTIONS if options.get(k) is not None}
    if isinstance(backbone, ExtractorOptions):
        parts = [backbone]
    else:
        parts = [ExtractorOptions.make(name, **chosen) for name in split_backbones(backbone)]
    plan = ExportPlan(out=str(out), fmt=kind, n_images=len(records))
    for opts in parts:
        store = FeatureStore.for_spec(cache_root(cache_dir), resolve(opts).spec)
        exists = store.path.exists() or store.parts_dir.is_dir()
        held = store.keys() if exists else set()  # a missing store is not created by looking
        cached = len(keys & held)
        plan.stores.append(
            {
                "backbone": opts.backbone,
                "store": str(store.path),
                "feature_dim": store.feature_dim() if exists else None,
                "unique_images": len(keys),
                "cached": cached,
                "to_extract": len(keys) - cached,
            }
        )
    return plan


EXTRACTOR_OPTIONS = ("nodes", "pooling", "weights", "input_size", "precision", "decode")
