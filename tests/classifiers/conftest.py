"""Shared fixtures of the classifier tests: the small ``make_classification`` problems.

``problem(...)`` builds (and caches) one problem; ``three_class``/``two_class`` are its
stratified 75/25 train/test split; ``make_feature_set(...)`` wraps a problem as a
:class:`classifiers.sweep.FeatureSet` (every 4th row held out); ``good`` is the well-separated
3-class feature set most sweep tests use; ``fresh_python(code)`` runs code in a new interpreter
(what it imports is its own).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split

from classifiers.sweep import FeatureSet

# The test folders have no __init__.py, so pytest imports each conftest.py under the one name
# "conftest", and the latest answers other modules' `from conftest import SHARED`: the root
# conftest's public names (tests/conftest.py) are repeated here, with the same values.
REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"


@functools.lru_cache(maxsize=32)
def _problem(
    n_classes: int = 3,
    *,
    n_samples: int = 240,
    n_features: int = 20,
    n_informative: int = 8,
    class_sep: float = 2.5,
    flip_y: float = 0.01,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=2,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=class_sep,
        flip_y=flip_y,
        random_state=seed,
    )
    X.setflags(write=False)
    y.setflags(write=False)
    return X.astype(np.float32), y


@pytest.fixture(scope="session")
def problem() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``problem(n_classes=3, *, n_samples=240, n_features=20, n_informative=8,
    class_sep=2.5, flip_y=0.01, seed=0)`` -> float32 ``X``, ``y`` (cached; do not modify)."""
    return _problem


def _split(n_classes: int) -> tuple[np.ndarray, ...]:
    X, y = _problem(n_classes)
    return tuple(train_test_split(X, y, test_size=0.25, stratify=y, random_state=0))


@pytest.fixture(scope="session")
def three_class() -> tuple[np.ndarray, ...]:
    """``X_train, X_test, y_train, y_test`` of the 3-class problem."""
    return _split(3)


@pytest.fixture(scope="session")
def two_class() -> tuple[np.ndarray, ...]:
    """``X_train, X_test, y_train, y_test`` of the 2-class problem."""
    return _split(2)


def _feature_set(
    name: str = "good", *, n_classes: int = 3, class_sep: float = 2.5, seed: int = 0, **kw: Any
) -> FeatureSet:
    X, y = _problem(n_classes, class_sep=class_sep, seed=seed, **kw)
    test = np.arange(len(y)) % 4 == 0
    return FeatureSet(
        name=name,
        X_train=X[~test],
        y_train=y[~test],
        X_test=X[test],
        y_test=y[test],
        class_names=[f"c{i}" for i in range(n_classes)],
        provenance={"source": "make_classification", "seed": seed},
    )


@pytest.fixture(scope="session")
def make_feature_set() -> Callable[..., FeatureSet]:
    """``make_feature_set(name="good", *, n_classes=3, class_sep=2.5, seed=0, **problem_kw)``:
    a problem as a FeatureSet, every 4th row held out."""
    return _feature_set


@pytest.fixture(scope="session")
def good() -> FeatureSet:
    """The well-separated 3-class feature set: 180 training and 60 test rows, 20 columns."""
    return _feature_set()


def replace(fs: FeatureSet, **changes: Any) -> FeatureSet:
    """A copy of ``fs`` with some fields changed (validated again)."""
    fields = {k: getattr(fs, k) for k in FeatureSet.__dataclass_fields__}
    return FeatureSet(**{**fields, **changes})


@pytest.fixture(scope="session")
def replace_fs() -> Callable[..., FeatureSet]:
    """``replace_fs(fs, **changes)``: a copy of a FeatureSet with some fields changed."""
    return replace


@pytest.fixture(scope="session")
def fresh_python() -> Callable[[str], str]:
    """``fresh_python(code)``: run ``code`` in a new Python process at the checkout's root;
    its stdout (the test fails, showing stderr, if it exits non-zero)."""

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run
