"""Tests of saved heads: round trip, sidecar contents, and refusal of tampered files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification

from classifiers.heads import get_head
from featurestore import headfile
from featurestore.headfile import FORMAT, HeadIntegrityError, load_head, save_head, sidecar_path

METADATA = {"class_names": ["ant", "bee", "wasp"], "fingerprints": ["abc123"], "dim": 12}


@pytest.fixture(scope="module")
def fitted():
    X, y = make_classification(
        n_samples=150, n_features=12, n_informative=6, n_classes=3, random_state=0
    )
    return get_head("logreg").build().fit(X, y), X


@pytest.fixture
def saved_head(fitted, tmp_path: Path) -> Path:
    return save_head(fitted[0], tmp_path / "heads" / "best.joblib", metadata=METADATA)


def test_round_trip_gives_identical_predictions(fitted, saved_head: Path) -> None:
    estimator, X = fitted
    loaded, sidecar = load_head(saved_head)
    np.testing.assert_array_equal(loaded.predict(X), estimator.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), estimator.predict_proba(X))
    assert sidecar["metadata"] == METADATA


def test_sidecar_records_hash_format_time_and_versions(saved_head: Path) -> None:
    side = sidecar_path(saved_head)
    assert side.name == "best.joblib.json"
    sidecar = json.loads(side.read_text())
    assert sidecar["format"] == FORMAT
    assert sidecar["file"] == "best.joblib"
    assert sidecar["sha256"] == hashlib.sha256(saved_head.read_bytes()).hexdigest()
    assert sidecar["created"].endswith("+00:00")
    assert {"python", "numpy", "scikit-learn", "joblib"} <= sidecar["versions"].keys()
    assert sorted(p.name for p in saved_head.parent.iterdir()) == [
        "best.joblib",
        "best.joblib.json",
    ]  # no temporary files left behind


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("joblib.load must not run on an unverified head")

    monkeypatch.setattr(headfile.joblib, "load", refuse)


def test_a_changed_byte_is_refused_before_unpickling(saved_head: Path, no_unpickling) -> None:
    data = bytearray(saved_head.read_bytes())
    data[len(data) // 2] ^= 0x01
    saved_head.write_bytes(bytes(data))
    with pytest.raises(HeadIntegrityError, match="sha256"):
        load_head(saved_head)


def test_missing_sidecar_is_refused(saved_head: Path, no_unpickling) -> None:
    sidecar_path(saved_head).unlink()
    with pytest.raises(HeadIntegrityError, match=r"sidecar .* is missing"):
        load_head(saved_head)


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "unreadable"), ('{"format": "other/9"}', "format 'other/9'")],
)
def test_bad_sidecar_is_refused(saved_head: Path, no_unpickling, text, message) -> None:
    sidecar_path(saved_head).write_text(text)
    with pytest.raises(HeadIntegrityError, match=message):
        load_head(saved_head)


def test_missing_head_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved head"):
        load_head(tmp_path / "nothing.joblib")


def test_unserialisable_metadata_writes_nothing(fitted, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_head(fitted[0], tmp_path / "h.joblib", metadata={"array": np.arange(3)})
    assert not any(tmp_path.iterdir())


def test_saving_again_replaces_both_files(fitted, saved_head: Path) -> None:
    estimator, X = fitted
    other = get_head("gaussian_nb").build().fit(X, estimator.predict(X))
    save_head(other, saved_head, metadata={"class_names": ["x", "y", "z"]})
    loaded, sidecar = load_head(saved_head)
    assert type(loaded[-1]).__name__ == "GaussianNBHeadCV"  # the gaussian_nb head's class
    assert sidecar["metadata"] == {"class_names": ["x", "y", "z"]}
