"""Property tests of image keys and extractor fingerprints.

Keys and fingerprints must be stable across processes and runs (no hash seeds, paths, clocks or
library versions in them); batch size, workers and device must not change them; every option
that changes the numbers must.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from featurestore.extractor import resolve
from featurestore.keys import array_key, bytes_key, canonical_json, file_key, fingerprint

TINY = {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
specs = st.dictionaries(st.text(min_size=1, max_size=10), json_values, min_size=1, max_size=8)


# ---------------------------------------------------------------------------- image keys
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000))
def test_file_key_is_the_sha256_of_the_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.png", Path(tmp) / "sub" / "renamed.jpg"
        a.write_bytes(data)
        b.parent.mkdir()
        b.write_bytes(data)
        assert file_key(a) == file_key(b) == bytes_key(data) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 2**20 - 1, 2**20, 2**20 + 1, 3 * 2**20 + 5])
def test_file_key_across_read_chunk_boundaries(size: int, tmp_path: Path) -> None:
    data = np.random.default_rng(size).bytes(size)
    (tmp_path / "f").write_bytes(data)
    assert file_key(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@settings(max_examples=60, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
        shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
    )
)
def test_array_key_depends_on_values_shape_and_dtype_not_memory_layout(arr: np.ndarray) -> None:
    key = array_key(arr)
    assert key == array_key(np.asfortranarray(arr)) == array_key(arr.copy())
    if arr.size > 1:
        assert array_key(arr.reshape(-1)) != key  # same bytes, other shape
    assert array_key(arr.view(np.uint8)) != key or arr.dtype == np.uint8  # other dtype
    changed = arr.copy()
    changed.flat[0] = 0 if changed.flat[0] != 0 else 1  # NaN != 0 too
    assert array_key(changed) != key


def test_golden_keys_never_change() -> None:
    """Pure functions of bytes: a different value here means every cached row is orphaned."""
    assert bytes_key(b"featurestore") == hashlib.sha256(b"featurestore").hexdigest()
    assert (
        array_key(np.arange(6, dtype=np.uint8).reshape(2, 3))
        == hashlib.sha256(b"array:|u1:2x3\n" + bytes(range(6))).hexdigest()
    )
    assert canonical_json({"b": [1, 2.5], "a": "é"}) == '{"a":"\\u00e9","b":[1,2.5]}'
    assert fingerprint({"b": 1, "a": 2}) == hashlib.sha256(b'{"a":2,"b":1}').hexdigest()


# ---------------------------------------------------------------------------- fingerprints
@settings(max_examples=80, deadline=None)
@given(spec=specs, data=st.data())
def test_fingerprint_ignores_key_order_and_sees_every_field(spec: dict, data: Any) -> None:
    reordered = dict(reversed(list(spec.items())))
    assert fingerprint(reordered) == fingerprint(spec)
    name = data.draw(st.sampled_from(sorted(spec)))
    other = data.draw(json_values.filter(lambda v: canonical_json(v) != canonical_json(spec[name])))
    assert fingerprint({**spec, name: other}) != fingerprint(spec)
    assert fingerprint({k: v for k, v in spec.items() if k != name}) != fingerprint(spec)


def _weights(tmp: Path, name: str, seed: int) -> Path:
    import torch

    path = tmp / name
    torch.save({"w": torch.from_numpy(np.random.default_rng(seed).standard_normal(4))}, path)
    return path


def test_every_option_that_changes_the_numbers_changes_the_fingerprint(tmp_path: Path) -> None:
    w1, w2 = _weights(tmp_path, "w1.pth", 1), _weights(tmp_path, "w2.pth", 2)
    variants = {
        "base": TINY,
        "backbone": {**TINY, "backbone": "shufflenet_v2_x0_5"},
        "weights file": {**TINY, "weights": str(w1)},
        "other weights file": {**TINY, "weights": str(w2)},
        "node": {**TINY, "nodes": ["features.8"]},
        "two nodes": {**TINY, "nodes": ["features.8", "features.12"]},
        "pooling": {**TINY, "nodes": ["features.8"], "pooling": "max"},
        "input size": {**TINY, "input_size": 40},
        "precision": {**TINY, "precision": "bf16"},
        "decode": {**TINY, "decode": "full"},
    }
    fps = {name: resolve(**kw).fingerprint for name, kw in variants.items()}
    assert len(set(fps.values())) == len(fps), fps
    spec = resolve(**TINY).spec
    assert set(spec) == {
        "extractor_version",
        "backbone",
        "weights",
        "nodes",
        "pooling",
        "preprocess",
        "precision",
    }
    assert set(spec["preprocess"]) == {"resize", "crop", "mean", "std", "interpolation", "decode"}


def test_weights_are_identified_by_content_not_path(tmp_path: Path) -> None:
    w = _weights(tmp_path, "w.pth", 1)
    elsewhere = tmp_path / "moved" / "renamed.pt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(w.read_bytes())
    assert (
        resolve(**{**TINY, "weights": str(w)}).fingerprint
        == resolve(**{**TINY, "weights": str(elsewhere)}).fingerprint
    )
    assert str(tmp_path) not in canonical_json(resolve(**{**TINY, "weights": str(w)}).spec)


_PROBE = """
import json, sys
import numpy as np
from pathlib import Path
from featurestore.extractor import resolve
from featurestore.keys import array_key, file_key
configs = json.loads(sys.argv[1])
print(json.dumps({
    "fps": [resolve(**c).fingerprint for c in configs],
    "file": file_key(Path(sys.argv[2])),
    "array": array_key(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
}))
"""


def test_keys_and_fingerprints_are_stable_across_processes(tmp_path: Path, cli_env: Any) -> None:
    w = _weights(tmp_path, "w.pth", 3)
    configs = [
        TINY,
        {**TINY, "weights": str(w)},
        {**TINY, "nodes": ["features.8"]},
        {"backbone": "resnet18", "weights": "none"},
    ]
    img = tmp_path / "img.bin"
    img.write_bytes(os.urandom(1000))
    here = {
        "fps": [resolve(**c).fingerprint for c in configs],
        "file": file_key(img),
        "array": array_key(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
    }
    for seed in ("12345",):  # this process runs with a random (or another) hash seed
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, json.dumps(configs), str(img)],
            env=cli_env(PYTHONHASHSEED=seed),
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert json.loads(out.stdout) == here


def test_batch_size_workers_and_device_do_not_change_keys_or_fingerprint(
    tmp_path: Path, make_images: Any
) -> None:
    from featurestore.extraction import extract
    from featurestore.store import FeatureStore

    make_images(tmp_path / "src", 6, ("a", "b"))
    cache = tmp_path / "cache"
    first = extract(
        tmp_path / "src", cache_dir=cache, batch_size=4, workers=0, device="cpu", **TINY
    )
    keys, rows = FeatureStore(first.store).read_all()
    for kw in (
        {"batch_size": 1, "workers": 1, "device": "auto"},
        {"batch_size": 5, "workers": 0, "device": "cpu"},
    ):
        again = extract(tmp_path / "src", cache_dir=cache, **kw, **TINY)
        assert (again.fingerprint, again.store) == (first.fingerprint, first.store)
        assert (again.n_extracted, again.n_reused) == (0, 6)  # found by key: nothing recomputed
    # Fresh runs with other batch sizes give the same keys and (nearly) the same numbers: with
    # a different batch shape the kernels may sum in another order (last-bit differences).
    for bs in (1, 5):
        other = extract(
            tmp_path / "src", cache_dir=tmp_path / f"c{bs}", batch_size=bs, workers=0, **TINY
        )
        k2, r2 = FeatureStore(other.store).read_all()
        assert k2 == keys and other.fingerprint == first.fingerprint
        np.testing.assert_allclose(r2, rows, rtol=1e-5, atol=1e-6)
