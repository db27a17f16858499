"""The saved-head card: written and read in one module, checked against the head it describes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from classifiers.labelled import LabelledClassifier
from featurestore.errors import HeadIntegrityError, HeadMismatchError
from featurestore.extractor import ExtractorRecord, resolve
from featurestore.headfile import (
    HeadCard,
    load_head,
    load_head_card,
    save_head,
    save_head_card,
    sidecar_path,
)
from featurestore.predict import check_extractors


def _record() -> ExtractorRecord:
    return ExtractorRecord.of(resolve("resnet18", weights="none", input_size=64), "s.h5")


def _fitted(n_classes: int) -> LogisticRegression:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    return LogisticRegression().fit(X, np.arange(30) % n_classes)


def test_a_card_round_trips_through_the_sidecar(tmp_path: Path) -> None:
    card = HeadCard(
        feature_set="resnet18",
        head="logreg",
        class_names=["ant", "bee", "wasp"],
        extractors=[_record()],
        params={"clf__C": "0.1"},
        sweep={"source": "x", "test_accuracy": 0.9},
    )
    path = save_head(_fitted(3), tmp_path / "h.joblib", metadata=card.to_json())
    estimator, again = load_head_card(path)
    assert again == card
    # the head was saved bare (as before heads carried their names): it comes back wrapped,
    # predicting names; the estimator inside still knows the indices
    assert list(estimator.classes_) == ["ant", "bee", "wasp"]
    assert list(estimator.estimator_.classes_) == [0, 1, 2]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (["a", "list"], "must be a JSON object"),
        ({"class_names": "ab", "extractors": []}, "class_names"),
        ({"class_names": ["a", "b"], "extractors": {"x": 1}}, "extractors must be a list"),
        ({"class_names": ["a", "b"], "extractors": [{"no": "fingerprint"}]}, "extractor record"),
        ({"class_names": ["a", "b"], "pixels": "32"}, "pixels"),
    ],
)
def test_a_malformed_card_is_refused_by_name(tmp_path: Path, metadata, message: str) -> None:
    path = save_head(_fitted(2), tmp_path / "h.joblib", metadata={"x": 0})
    side = json.loads(sidecar_path(path).read_text())
    side["metadata"] = metadata
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(HeadIntegrityError, match=message):
        load_head_card(path)


def test_an_unknown_extractor_option_is_refused(tmp_path: Path) -> None:
    record = _record().to_json()
    record["options"]["colour_space"] = "lab"
    meta = {"class_names": ["a", "b"], "extractors": [record]}
    path = save_head(_fitted(2), tmp_path / "h.joblib", metadata=meta)
    with pytest.raises(HeadIntegrityError, match="colour_space"):
        load_head_card(path)


def test_a_card_with_no_features_is_a_mismatch(tmp_path: Path) -> None:
    path = save_head(_fitted(2), tmp_path / "h.joblib", metadata={"class_names": ["a", "b"]})
    with pytest.raises(HeadMismatchError, match="no extractor and no pixel size"):
        load_head_card(path)


def test_fewer_class_names_than_the_head_predicts_is_refused(tmp_path: Path) -> None:
    meta = {"class_names": ["a", "b"], "pixels": 8}
    path = save_head(_fitted(3), tmp_path / "h.joblib", metadata=meta)
    with pytest.raises(HeadIntegrityError, match="names 2 classes"):
        load_head_card(path)


def test_a_head_for_other_features_than_this_machine_gives_is_refused() -> None:
    record = _record()
    card = HeadCard("resnet18", "logreg", ["a", "b"], [record])
    check_extractors(card)  # the same options resolve to the same fingerprint here
    other = ExtractorRecord(record.options, "0" * 64)
    with pytest.raises(HeadMismatchError, match="fingerprint 0000000000000000"):
        check_extractors(HeadCard("resnet18", "logreg", ["a", "b"], [other]))


def test_a_saved_head_carries_its_class_names_for_joblib_users(tmp_path: Path) -> None:
    card = HeadCard("resnet18", "logreg", ["ant", "bee", "wasp"], [_record()])
    fitted = _fitted(3)
    path = save_head_card(fitted, tmp_path / "h.joblib", card)
    plain = joblib.load(path)  # no featurestore involved
    assert isinstance(plain, LabelledClassifier)
    X = np.random.default_rng(1).normal(size=(8, 4))
    names = np.array(["ant", "bee", "wasp"])
    np.testing.assert_array_equal(plain.predict(X), names[fitted.predict(X)])
    np.testing.assert_array_equal(plain.predict_proba(X), fitted.predict_proba(X))
    estimator, again = load_head_card(path)
    assert again == card and list(estimator.classes_) == list(names)


def test_a_head_whose_names_disagree_with_its_card_is_refused(tmp_path: Path) -> None:
    card = HeadCard("resnet18", "logreg", ["ant", "bee"], [_record()])
    path = save_head_card(_fitted(2), tmp_path / "h.joblib", card)
    side = json.loads(sidecar_path(path).read_text())
    side["metadata"]["class_names"] = ["bee", "ant"]
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(HeadIntegrityError, match="carries class names"):
        load_head_card(path)


def _with_matching_sidecar(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    side = json.loads(sidecar_path(path).read_text())
    side["sha256"] = hashlib.sha256(data).hexdigest()
    sidecar_path(path).write_text(json.dumps(side))


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(300),
        b"not a pickle, just text\n",
        b"",
        b"\x80\x04\x95",  # a pickle header, then nothing
    ],
    ids=["random bytes", "text", "empty", "truncated pickle"],
)
def test_bytes_that_do_not_unpickle_are_an_integrity_error(tmp_path: Path, data: bytes) -> None:
    path = save_head(_fitted(2), tmp_path / "h.joblib", metadata={"x": 0})
    _with_matching_sidecar(path, data)
    with pytest.raises(HeadIntegrityError, match="does not load as a saved head"):
        load_head(path)


def test_a_sidecar_that_is_not_an_object_is_refused_by_what_it_is(tmp_path: Path) -> None:
    path = save_head(_fitted(2), tmp_path / "h.joblib", metadata={"x": 0})
    sidecar_path(path).write_text("[1, 2]")
    with pytest.raises(HeadIntegrityError, match="holds a JSON list, not an object"):
        load_head(path)
