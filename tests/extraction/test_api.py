"""load_features: rows aligned with records, concatenations on keys, one resolve per backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore import api, extraction
from featurestore.errors import MissingRowsError
from featurestore.extractor import ExtractorRecord
from featurestore.options import ExtractorOptions
from featurestore.store import FeatureStore

TINY = {"weights": "none", "input_size": 32}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, make_images) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    make_images(root / "train", n=6, seed=1)
    make_images(root / "val", n=4, seed=2)
    return root


def test_rows_follow_the_records_and_the_labels(folder: Path, tmp_path: Path) -> None:
    feats = api.load_features(
        folder, backbone="mobilenet_v3_small", split="val", cache_dir=tmp_path, **TINY
    )
    assert len(feats) == 4 and feats.X.shape == (4, 1024) and feats.X.dtype == np.float32
    assert feats.class_names == ["cat", "dog"]
    assert [feats.class_names[i] for i in feats.y] == feats.labels
    (record,) = feats.extractors
    assert isinstance(record, ExtractorRecord) and record.backbone == "mobilenet_v3_small"
    np.testing.assert_array_equal(feats.X, FeatureStore(record.store).read(feats.keys))


def test_a_concatenation_is_its_parts_side_by_side(folder: Path, tmp_path: Path) -> None:
    kw = {"split": "train", "cache_dir": tmp_path, **TINY}
    a = api.load_features(folder, backbone="mobilenet_v3_small", **kw)
    b = api.load_features(folder, backbone="squeezenet1_0", **kw)
    both = api.load_features(folder, backbone="mobilenet_v3_small+squeezenet1_0", **kw)
    assert both.keys == a.keys == b.keys
    np.testing.assert_array_equal(both.X, np.hstack([a.X, b.X]))
    assert [e.backbone for e in both.extractors] == ["mobilenet_v3_small", "squeezenet1_0"]


def test_each_backbone_is_resolved_once_per_call(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = extraction.resolve

    def counting(options, **kw):
        calls.append(options.backbone)
        return real(options, **kw)

    monkeypatch.setattr(extraction, "resolve", counting)
    monkeypatch.setattr(api, "resolve", counting)
    api.load_features(
        folder, backbone="mobilenet_v3_small+squeezenet1_0", cache_dir=tmp_path, **TINY
    )
    assert calls == ["mobilenet_v3_small", "squeezenet1_0"]


def test_options_may_come_as_one_value(folder: Path, tmp_path: Path) -> None:
    opts = ExtractorOptions.make("mobilenet_v3_small", **TINY)
    by_value = api.load_features(folder, backbone=opts, cache_dir=tmp_path)
    by_kw = api.load_features(folder, backbone="mobilenet_v3_small", cache_dir=tmp_path, **TINY)
    np.testing.assert_array_equal(by_value.X, by_kw.X)


def test_without_extraction_missing_rows_name_the_command_that_extracts_them(
    folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(MissingRowsError, match=r"featurestore extract .* --weights none") as info:
        api.load_features(
            folder, backbone="mobilenet_v3_small", extract_missing=False, cache_dir=tmp_path, **TINY
        )
    assert isinstance(info.value, KeyError)
    assert "10 of 10 images" in str(info.value)


def test_rows_for_records_marks_what_could_not_be_decoded(folder: Path, tmp_path: Path) -> None:
    bad = folder / "train" / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    try:
        from featurestore.sources import open_source

        src = open_source(folder)
        records = src.select("train")
        X, ok, feats = api.rows_for_records(
            src, records, backbone="mobilenet_v3_small", cache_dir=tmp_path, **TINY
        )
    finally:
        bad.unlink()
    broken = [r.path for r in records].index(str(bad))
    assert not ok[broken] and ok.sum() == len(records) - 1
    assert not X[broken].any()
    assert [s.path for s in feats.skipped] == [str(bad)]
