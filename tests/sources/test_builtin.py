"""Built-in samples: builtin:digits."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.keys import array_key
from featurestore.sources import BUILTINS, SourceError, open_source


def test_builtin_digits_sample() -> None:
    src = open_source("builtin:digits")
    assert len(src.records) == 1797 and src.class_names == [str(i) for i in range(10)]


def test_digits_records_keys_and_pixels() -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    src = open_source("builtin:digits")
    assert (src.name, src.kind, src.skipped, src.warnings) == (
        "builtin:digits",
        "builtin",
        [],
        [],
    )
    scaled = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    r = src.records[5]
    assert (r.path, r.label, r.split, r.ref) == (
        "builtin:digits[5]",
        str(d.target[5]),
        None,
        ("digits", 5),
    )
    assert [x.key for x in src.records[:50]] == [array_key(a) for a in scaled[:50]]
    image = np.asarray(src.loader.load(r, draft_size=4))
    assert image.shape == (8, 8, 3) and np.array_equal(image[..., 1], scaled[5])
    assert image.max() == 255  # full range, not 0..16


def test_an_unknown_builtin_names_the_known_ones() -> None:
    assert BUILTINS == ("digits",)
    with pytest.raises(
        SourceError, match=r"unknown built-in sample 'iris'; choose from \('digits',\)"
    ):
        open_source("builtin:iris")


def test_digits_are_load_digits_read_without_importing_scikit_learn() -> None:
    """The sample is read from scikit-learn's data file without importing scikit-learn (about
    2 s a process); the images and targets are exactly ``load_digits``'s."""
    import subprocess
    import sys

    code = (
        "import sys; from featurestore.sources.builtin import digits; images, target = digits(); "
        "print(images.shape, len(target), 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(1797,", "8,", "8)", "1797", "False"]
    from sklearn.datasets import load_digits

    from featurestore.sources.builtin import digits

    d = load_digits()
    images, target = digits()
    assert np.array_equal(images, np.round(d.images * (255.0 / 16.0)).astype(np.uint8))
    assert np.array_equal(target, d.target) and target.dtype == d.target.dtype


def test_digits_fall_back_to_load_digits_where_the_data_file_is_elsewhere(monkeypatch) -> None:
    import importlib

    # The module: ``featurestore.sources.builtin`` as an attribute is the function of that name.
    builtin = importlib.import_module("featurestore.sources.builtin")
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    images, target = builtin.digits()
    assert images.shape == (1797, 8, 8) and images.max() == 255 and set(target) == set(range(10))
