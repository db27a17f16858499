"""Tests of the leaderboard report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from classifiers.metrics import scores_for
from classifiers.report import write_report
from classifiers.sweep import FeatureSet, run_sweep

ROW_FIELDS = {
    "rank",
    "feature_set",
    "head",
    "params",
    "cv_score",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "roc_auc",
    "fit_seconds",
    "predict_seconds",
    "n_train",
    "n_test",
    "n_features",
    "per_class",
    "confusion_matrix",
}
PNGS = ("confusion", "roc", "leaderboard_plot")


def _feature_set(name: str, n_classes: int, class_sep: float) -> FeatureSet:
    X, y = make_classification(
        n_samples=200,
        n_features=16,
        n_informative=6,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=class_sep,
        random_state=n_classes,
    )
    test = np.arange(len(y)) % 4 == 0
    return FeatureSet(
        name=name,
        X_train=X[~test],
        y_train=y[~test],
        X_test=X[test],
        y_test=y[test],
        class_names=["ant", "bee", "wasp"][:n_classes],
        provenance={"fingerprint": f"fp-{name}", "dim": np.int64(16)},
    )


@pytest.fixture(scope="module", params=[2, 3], ids=["binary", "multiclass"])
def sweep(request):
    sets = [_feature_set("sharp", request.param, 2.5), _feature_set("blurry", request.param, 0.4)]
    results = run_sweep(sets, heads=["gaussian_nb", "logreg", "rbf_svm"], cv=3)
    return sets, results


def _write(sweep, tmp_path: Path) -> dict[str, Path]:
    return write_report(
        sweep[1],
        tmp_path / "report",
        title="Test leaderboard",
        provenance={"dataset": "synthetic", "split_seed": 0},
        notes=["Features are synthetic.", "Second note."],
    )


def test_report_writes_every_file(sweep, tmp_path: Path) -> None:
    paths = _write(sweep, tmp_path)
    assert set(paths) == {"markdown", "csv", "json", *PNGS}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
        assert path.parent == tmp_path / "report"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        p.name for p in paths.values()
    )  # no temporary files left behind


def test_json_has_rows_provenance_and_notes(sweep, tmp_path: Path) -> None:
    sets, results = sweep
    document = json.loads(_write(sweep, tmp_path)["json"].read_text())
    assert document["title"] == "Test leaderboard"
    assert document["notes"] == ["Features are synthetic.", "Second note."]
    provenance = document["provenance"]
    assert provenance["dataset"] == "synthetic" and provenance["split_seed"] == 0
    assert set(provenance["packages"]) == {"numpy", "scikit-learn", "joblib", "matplotlib"}
    assert all(provenance["packages"].values())
    assert provenance["python"].count(".") == 2
    assert provenance["feature_sets"]["sharp"] == {"fingerprint": "fp-sharp", "dim": 16}

    rows = document["rows"]
    assert len(rows) == 6
    assert [r["rank"] for r in rows] == list(range(1, 7))
    # Ranked by CV score on the training split (run_sweep's rank_key), not by test accuracy.
    assert [r["cv_score"] for r in rows] == sorted((r["cv_score"] for r in rows), reverse=True)
    by_set = {s.name: s for s in sets}
    for row, result in zip(rows, results, strict=True):
        assert ROW_FIELDS <= row.keys()
        assert (row["feature_set"], row["head"]) == (result.feature_set, result.head)
        assert set(row["per_class"]) == set(by_set[row["feature_set"]].class_names)
        n = len(by_set[row["feature_set"]].class_names)
        assert np.array(row["confusion_matrix"]).shape == (n, n)
        assert sum(map(sum, row["confusion_matrix"])) == row["n_test"] == 50
        # The ROC-AUC in the report is the real one, recomputed here independently.
        fs = by_set[row["feature_set"]]
        scores = scores_for(result.estimator, fs.X_test)
        expected = (
            roc_auc_score(fs.y_test, scores)
            if n == 2
            else np.mean([roc_auc_score(fs.y_test == c, scores[:, c]) for c in range(n)])
        )
        assert row["roc_auc"] == pytest.approx(expected)
    assert rows[0]["feature_set"] == "sharp" and rows[0]["accuracy"] >= 0.9


def test_markdown_and_csv_agree_with_the_rows(sweep, tmp_path: Path) -> None:
    paths = _write(sweep, tmp_path)
    rows = json.loads(paths["json"].read_text())["rows"]
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# Test leaderboard")
    assert (
        "| rank | feature set | head | test acc | balanced acc | macro-F1 | ROC-AUC |" in markdown
    )
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + len(rows)
    assert table[1].startswith(f"| 1 | {rows[0]['feature_set']} | {rows[0]['head']} |")
    assert markdown.index("- Features are synthetic.") > markdown.index(table[-1])
    with paths["csv"].open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [(r["feature_set"], r["head"]) for r in records] == [
        (r["feature_set"], r["head"]) for r in rows
    ]
    assert float(records[0]["accuracy"]) == pytest.approx(rows[0]["accuracy"])
    assert json.loads(records[0]["params"]) == rows[0]["params"]


@pytest.mark.parametrize("name", PNGS)
def test_plots_are_real_images(sweep, tmp_path: Path, name: str) -> None:
    path = _write(sweep, tmp_path)[name]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something was drawn


def test_single_result_and_uncomputable_roc_still_write_plots(tmp_path: Path) -> None:
    fs = _feature_set("one", 2, 2.5)
    only_ones = fs.y_test == 1
    single_class_test = FeatureSet(
        name="one",
        X_train=fs.X_train,
        y_train=fs.y_train,
        X_test=fs.X_test[only_ones],
        y_test=fs.y_test[only_ones],
        class_names=fs.class_names,
    )
    results = run_sweep([single_class_test], heads=["gaussian_nb"], cv=3)
    paths = write_report(results, tmp_path, title="t", provenance={})
    row = json.loads(paths["json"].read_text())["rows"][0]
    assert row["roc_auc"] is None and "only one" in row["roc_auc_reason"]
    assert "| n/a |" in paths["markdown"].read_text()
    assert paths["roc"].read_bytes()[:4] == b"\x89PNG"


def test_empty_results_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="results is empty"):
        write_report([], tmp_path, title="t", provenance={})
    assert not any(tmp_path.iterdir())
