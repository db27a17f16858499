"""Generated HDF5 sources (hypothesis): random shapes, dtypes (uint8/16, ints, float16/32/64,
bool, text, compound, complex), values (NaN, infinity, negatives, wide ranges), storage never
or partly written, attributes, soft links (good, dangling, looping), external links, external
storage and virtual datasets pointing at a watched FIFO outside the source, and label datasets
of other lengths and dtypes.

For every file: open_source gives a Source or raises a FeatureStoreError (nothing else); the
FIFO outside is never opened; every record's key, label and pixels equal an independent
reference conversion written here from the rules in the README; and when a dataset is named,
its records are exactly the reference's (or a SourceError when the reference refuses it).

FEATURESTORE_HYPOTHESIS_EXAMPLES=500 runs more examples than the default.
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from fifo_sentinel import FifoSentinel
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from featurestore.errors import FeatureStoreError, SourceError
from featurestore.keys import array_key
from featurestore.sources import open_source

EXAMPLES = int(os.environ.get("FEATURESTORE_HYPOTHESIS_EXAMPLES", "30"))
NAMES = ["x", "y", "train_x", "train_y", "images", "labels", "data", "list_classes", "a", "b"]
NUMERIC = ["u1", "u2", "i1", "i4", "i8", "f2", "f4", "f8", "b1"]
OTHER = ["S3", "vlen", "compound", "c8"]
CHANNELS = (1, 3, 4)


# --------------------------------------------------------------------------- the reference
def reference_format(
    dtype: np.dtype[Any], shape: tuple[int, ...], values: np.ndarray, interlace: Any
) -> tuple[bool, float] | None:
    """(channels first, scale) by the README's rules, or None when the dataset is refused.
    ``values``: the dataset's finite images only."""
    if len(shape) == 3:
        first, last = shape[0] in CHANNELS, shape[-1] in CHANNELS
        if not (first or last):
            return None
        plane = isinstance(interlace, str | bytes) and (
            (interlace.decode() if isinstance(interlace, bytes) else interlace).strip().upper()
            == "INTERLACE_PLANE"
        )
        channels_first = first and (not last or plane)
        hw = shape[1:] if channels_first else shape[:2]
    elif len(shape) == 2:
        channels_first, hw = False, shape
    else:
        return None
    if min(hw) < 1:
        return None
    if dtype.kind == "b":
        return channels_first, 255.0
    if dtype.kind not in "uif":
        return None
    if dtype == np.uint8:
        return channels_first, 1.0
    lo = min((float(v) for v in values.ravel()), default=0.0)
    hi = max((float(v) for v in values.ravel()), default=0.0)
    if lo < 0:
        return None
    if dtype.kind == "f" and hi <= 1:
        return channels_first, 255.0
    if dtype.kind == "f" and hi < 2:
        return None
    return channels_first, 1.0 if hi <= 255 else 255.0 / hi


def reference_pixels(image: np.ndarray, channels_first: bool, scale: float) -> np.ndarray:
    """One image's 8-bit pixels, value by value in plain Python: round half to even."""
    flat = [min(255, max(0, round(float(v) * scale))) for v in image.ravel()]
    out = np.array(flat, dtype=np.uint8).reshape(image.shape)
    return np.moveaxis(out, 0, -1) if channels_first else out


def reference_rgb(pixels: np.ndarray) -> np.ndarray | None:
    """RGB of gray or RGB pixels (None for RGBA: Pillow composites those)."""
    if pixels.ndim == 2 or pixels.shape[-1] == 1:
        gray = pixels if pixels.ndim == 2 else pixels[..., 0]
        return np.repeat(gray[..., None], 3, axis=-1)
    return pixels if pixels.shape[-1] == 3 else None


# --------------------------------------------------------------------------- the generator
@dataclass
class Planned:
    """What one generated dataset is: its array (None for links and the like), which images
    were written, and whether its bytes are in the file."""

    kind: str
    array: np.ndarray | None = None
    written: list[int] | None = None  # None: all of it
    interlace: Any = None
    target: str = ""  # a soft link's target


@st.composite
def arrays(draw: Any) -> tuple[np.ndarray, list[int] | None, bool]:
    """(array, written image indices, chunked) for a numeric or other dtype."""
    code = draw(st.sampled_from(NUMERIC * 3 + OTHER))
    ndim = draw(st.sampled_from([3, 3, 3, 4, 4, 4, 4, 0, 1, 2, 5]))
    dims = [draw(st.sampled_from([1, 2, 3, 4, 1, 2, 3, 4, 0])) for _ in range(ndim)]
    if ndim == 4 and draw(st.integers(0, 4)):
        dims[draw(st.sampled_from([1, 3]))] = draw(st.sampled_from([1, 3, 4, 2]))
    shape = tuple(dims)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    regime = draw(st.sampled_from(["unit", "byte", "wide", "huge"] * 2 + ["negative", "ambiguous"]))
    low, high = {
        "unit": (0, 1),
        "byte": (0, 255),
        "wide": (0, 4095),
        "negative": (-3, 3),
        "ambiguous": (0, 1.5),
        "huge": (0, 1e6),
    }[regime]
    if code in ("u1", "u2", "i1", "i4", "i8"):
        info = np.iinfo(np.dtype(code))
        lo, hi = max(int(low), info.min), min(int(high), info.max)
        arr = rng.integers(lo, max(lo, hi) + 1, shape).astype(code)
    elif code.startswith("f"):
        with np.errstate(over="ignore"):  # float16 holds at most 65504: larger is inf
            arr = rng.uniform(low, high, shape).astype(code)
        if arr.size and not draw(st.integers(0, 3)):
            flat = arr.reshape(-1)
            flat[rng.integers(0, arr.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif code == "b1":
        arr = rng.integers(0, 2, shape).astype(bool)
    elif code == "S3":
        arr = np.full(shape, b"ab", dtype="S3")
    elif code == "vlen":
        arr = np.full(shape, "tx", dtype=object)
    elif code == "compound":
        arr = np.zeros(shape, dtype=[("r", "u1"), ("g", "f4")])
    else:
        arr = (rng.uniform(0, 1, shape) + 1j).astype("c8")
    n = shape[0] if shape else 0
    chunked = bool(ndim and arr.size and draw(st.booleans()))
    written = sorted(draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n)))
    return arr, (written if chunked else None), chunked


ATTR_VALUES = st.sampled_from(
    ["INTERLACE_PLANE", "INTERLACE_PIXEL", b"INTERLACE_PLANE", "junk", 5, 2.5, np.arange(3)]
)


@st.composite
def files(draw: Any) -> list[tuple[str, str, Any]]:
    """A plan: (name, what, detail) for 1 to 5 top-level objects."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    plan = []
    for name in names:
        what = draw(
            st.sampled_from(
                ["array"] * 8 + ["softlink", "extlink", "external", "vds_out", "vds_in", "group"]
            )
        )
        if what == "array":
            detail: Any = (draw(arrays()), draw(st.none() | ATTR_VALUES))
        elif what in ("softlink", "vds_in"):
            detail = draw(st.sampled_from([*NAMES, "nowhere", name]))
        else:
            detail = None
        plan.append((name, what, detail))
    return plan


def write(path: Path, plan: list[tuple[str, str, Any]], outside: Path) -> dict[str, Planned]:
    """Write the planned file; the datasets whose bytes are in it, by name."""
    made: dict[str, Planned] = {}
    with h5py.File(path, "w") as f:
        f.attrs["note"] = "generated"
        for name, what, detail in plan:
            if what == "array":
                (arr, written, chunked), interlace = detail
                dtype = h5py.string_dtype() if arr.dtype == object else arr.dtype
                if chunked:
                    d = f.create_dataset(name, arr.shape, dtype, chunks=(1, *arr.shape[1:]))
                    for i in written or []:
                        d[i] = arr[i]
                else:
                    d = f.create_dataset(name, data=arr, dtype=dtype)
                if interlace is not None:
                    d.attrs["INTERLACE_MODE"] = interlace
                d.attrs["units"] = np.arange(2)
                made[name] = Planned("array", arr, written, interlace)
            elif what == "softlink":
                f[name] = h5py.SoftLink(f"/{detail}")
                made[name] = Planned("softlink", target=detail)
            elif what == "extlink":
                f[name] = h5py.ExternalLink(str(outside), "/x")
            elif what == "external":
                f.create_dataset(name, (2, 3, 3), "u1", external=[(str(outside), 0, 18)])
            elif what == "group":
                f.create_group(name).attrs["x"] = 1
            else:
                file_name = str(outside) if what == "vds_out" else "."
                source = "x" if what == "vds_out" else detail
                layout = h5py.VirtualLayout(shape=(2, 3, 3), dtype="u1")
                layout[:] = h5py.VirtualSource(file_name, source, shape=(2, 3, 3))
                f.create_virtual_dataset(name, layout, fillvalue=0)
                if what == "vds_in":
                    made[name] = Planned("vds_in", target=detail)
    return made


def resolve(path: Path, made: dict[str, Planned], name: str | None, depth: int = 0) -> Any:
    """The plain dataset ``name`` leads to inside the file (soft links followed), or None when
    the reader must refuse it. A virtual dataset mapping a wholly written dataset of this file
    is read here with plain h5py (its bytes are inside the file)."""
    for _ in range(17):
        planned = made.get(name) if name else None
        if planned is None or planned.kind == "array":
            return planned
        if planned.kind == "softlink":
            name = planned.target
            continue
        if depth > 16:
            return None
        source = resolve(path, made, planned.target, depth + 1)  # a virtual dataset
        if source is None or source.array is None or source.array.ndim == 0:
            return None
        if source.written is not None and len(source.written) < source.array.shape[0]:
            return None
        with h5py.File(path, "r") as f:
            try:
                return Planned("array", f[name][...])
            except OSError:  # the mapped dataset does not fit the selection
                return None
    return None


# --------------------------------------------------------------------------- the property
def expected_records(
    path: Path, name: str, planned: Planned
) -> dict[str, tuple[str, np.ndarray]] | None:
    """{record path: (key, pixels)} of a plain dataset by the reference, None if refused."""
    arr = planned.array
    assert arr is not None
    if arr.ndim not in (3, 4) or arr.shape[0] == 0:
        return None
    written = range(arr.shape[0]) if planned.written is None else planned.written
    finite = [i for i in written if arr.dtype.kind != "f" or np.isfinite(arr[i]).all()]
    if not finite:
        return {}
    values = arr[finite] if arr.dtype.kind in "uif" else arr[:0]
    fmt = reference_format(arr.dtype, arr.shape[1:], values, planned.interlace)
    if fmt is None:
        return None
    channels_first, scale = fmt
    shape_says_first = arr.ndim == 4 and arr.shape[1] in CHANNELS and arr.shape[-1] not in CHANNELS
    out = {}
    for i in finite:
        pixels = reference_pixels(arr[i], channels_first, scale)
        raw = arr.dtype == np.uint8 and channels_first == shape_says_first
        out[f"{path}::{name}[{i}]"] = (array_key(arr[i] if raw else pixels), pixels)
    return out


def check_record(record: Any, loaded: np.ndarray, key: str, pixels: np.ndarray) -> None:
    assert record.key == key, record.path
    rgb = reference_rgb(pixels)
    if rgb is not None:
        assert np.array_equal(loaded, rgb), record.path
    else:
        assert loaded.shape == (*pixels.shape[:2], 3)


_counter = itertools.count()


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    outside = tmp_path_factory.mktemp("outside") / "secret.h5"
    with FifoSentinel(outside) as s:
        yield s
    assert s.opened == 0


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=files(), key_choice=st.integers(0, 9), label_choice=st.integers(0, 14))
def test_generated_hdf5_sources(
    plan: list[tuple[str, str, Any]],
    key_choice: int,
    label_choice: int,
    sentinel: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("gen", numbered=True)
    path = folder / f"f{next(_counter)}_train.h5"
    made = write(path, plan, sentinel.path)
    names = [name for name, _, _ in plan]
    images_key = names[key_choice] if key_choice < len(names) else None
    images_key = "nope" if key_choice == 9 else images_key
    labels_key = names[label_choice] if label_choice < len(names) else None
    if images_key is None:
        labels_key = None  # covered by the named case; detection is checked for soundness
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            src = open_source(path, images_key=images_key, labels_key=labels_key)
    except FeatureStoreError as exc:
        src = None
        error: FeatureStoreError | None = exc
    else:
        error = None
    assert sentinel.count() == 0, "a file outside the source was opened"
    event("error" if error is not None else f"records, named={images_key is not None}")

    named = resolve(path, made, images_key)
    expect = expected_records(path, images_key, named) if named is not None else None
    labels = _reference_labels(resolve(path, made, labels_key), named) if labels_key else None
    if named is not None and expect and labels != "refused":
        assert error is None, f"{images_key}: refused by the reader, read by the reference"
        assert src is not None
        assert sorted(r.path for r in src.records) == sorted(expect)
    if images_key and (named is None or expect is None or labels == "refused"):
        assert isinstance(error, SourceError), "refused by the reference, read by the reader"
    if src is None:
        return
    assert src.kind == "hdf5" and src.records
    for record in src.records:
        dataset = record.path.split("::", 1)[1].rsplit("[", 1)[0]
        planned = resolve(path, made, dataset)
        assert planned is not None, record.path
        reference = expected_records(path, dataset, planned)
        assert reference is not None and record.path in reference, record.path
        loaded = np.asarray(src.loader.load(record))
        check_record(record, loaded, *reference[record.path])
        assert record.split == "train"
        if images_key and isinstance(labels, list):
            index = int(record.path.rsplit("[", 1)[1][:-1])
            assert record.label == labels[index]
    src.loader.close()
    with h5py.File(path, "w"):
        pass  # every file the source opened is closed


def _reference_labels(labels: Planned | None, images: Planned | None) -> Any:
    """The label strings of an explicitly named labels dataset, or "refused"."""
    if labels is None or labels.array is None:
        return "refused"
    if images is None or images.array is None or images.array.ndim == 0:
        return None  # the images are refused anyway
    arr = labels.array
    if arr.size != images.array.shape[0]:
        return "refused"
    if labels.written is not None and len(labels.written) < arr.shape[0]:
        return "refused"
    flat = arr.ravel()
    if arr.dtype.kind in "uib":
        return [str(int(v)) for v in flat]
    if arr.dtype.kind == "f":
        if not all(np.isfinite(v) and float(v) == round(float(v)) for v in flat):
            return "refused"
        return [str(int(v)) for v in flat]
    if arr.dtype.kind == "S":
        return [v.decode() for v in flat]
    if arr.dtype == object:
        return [str(v) for v in flat]
    return "refused"
