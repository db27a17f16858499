"""Tests of the leaderboard report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from classifiers.metrics import scores_for
from classifiers.sweep import FeatureSet, run_sweep
from featurestore.report import write_report
from featurestore.report.notes import (
    IMBALANCE_RULE,
    Anchor,
    DataFacts,
    coverage_warnings,
    imbalance_warning,
    pixel_note,
)
from featurestore.report.rows import (
    FailedHead,
    accuracy_interval,
    grid_edge_notes,
    one_answer_warning,
    row_notes,
    wilson_interval,
)
from featurestore.report.selection import SELECTION_RULE, rank

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
    # Ranked by CV on the training split (the selection rule), not by test accuracy.
    assert [r["cv_score"] for r in rows] == sorted((r["cv_score"] for r in rows), reverse=True)
    assert [r["chosen"] for r in rows] == [True] + [False] * 5
    by_set = {s.name: s for s in sets}
    by_cell = {(r.feature_set, r.head): r for r in results}
    for row in rows:
        result = by_cell[(row["feature_set"], row["head"])]
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
    header = (
        "| rank | feature set | head | CV accuracy | CV spread | test acc | test acc 95% CI "
        "| balanced acc | macro-F1 | ROC-AUC | fit s | params |"
    )
    start = markdown.splitlines().index(header)
    table = []
    for line in markdown.splitlines()[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    table = [line for line in table if "---" not in line]
    assert len(table) == 1 + len(rows)
    assert table[1].startswith(f"| **1** | {rows[0]['feature_set']} | {rows[0]['head']} |")
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


# ----------------------------------------------------------------------------- selection
def _fake(cv: float, test: float, name: str, std: float | None = None, **extra):
    """A result as the selection rule and the row builder see it (only the fields they read)."""
    summary = {"accuracy": test, "n_samples": 100}
    return SimpleNamespace(
        cv_score=cv,
        cv_std=std,
        accuracy=test,
        feature_set="fs",
        head=name,
        evaluation=SimpleNamespace(summary=summary),
        n_test=100,
        best_params={},
        **extra,
    )


def test_the_rule_ranks_by_cv_never_by_test() -> None:
    rows = [_fake(0.90, 0.99, "test-best"), _fake(0.95, 0.80, "cv-best")]
    assert [r.head for r in rank(rows)] == ["cv-best", "test-best"]


def test_ties_go_to_the_smaller_spread_then_to_sweep_order() -> None:
    a, b, c = _fake(0.9, 0.5, "a", 0.05), _fake(0.9, 0.9, "b", 0.01), _fake(0.9, 0.7, "c", 0.01)
    assert [r.head for r in rank([a, b, c])] == ["b", "c", "a"]
    # without a recorded spread: the first in the sweep's order; float noise is still a tie
    d, e = _fake(0.1 + 0.2, 0.1, "d"), _fake(0.3, 0.9, "e")
    assert d.cv_score != e.cv_score
    assert [r.head for r in rank([d, e])] == ["d", "e"]
    assert [r.head for r in rank([e, d])] == ["e", "d"]
    assert "tie" in SELECTION_RULE and "never used to choose" in SELECTION_RULE


# ----------------------------------------------------------------------------- rows
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (145, 153, 0.9, 0.9738)],
)
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=6e-4)


def test_the_interval_is_the_sweeps_own_when_it_has_one() -> None:
    computed = _fake(0.9, 0.8, "x")
    assert accuracy_interval(computed) == pytest.approx(wilson_interval(80, 100))
    given = _fake(0.9, 0.8, "x")
    given.evaluation.summary["accuracy_ci95"] = [0.7, 0.88]
    assert accuracy_interval(given) == (0.7, 0.88)


def test_the_pixel_note_says_how_small_the_baselines_images_are() -> None:
    features = _fake(0.95, 0.93, "logreg", n_features=1280)
    features.feature_set = "efficientnet_lite0"
    pixels = _fake(0.60, 0.58, "knn", n_features=768)
    pixels.feature_set = "pixels16"
    note = pixel_note([features, pixels])
    assert note is not None and note.startswith("Pretrained features beat raw pixels")
    assert "pixels16 / knn (each image squashed to 16x16 RGB, 768 columns), 0.5800" in note
    assert "difference +0.3500" in note


def test_grid_edge_notes_unless_the_sweep_wrote_its_own() -> None:
    edge = _fake(0.9, 0.8, "x")
    edge.head, edge.best_params = "logreg", {"clf__C": 1e-3}
    # The linear heads search C over 1e-6..1e6 themselves (issue 11) and write their own
    # edge notes: no registry grid of C to read an edge from.
    assert grid_edge_notes(edge) == []
    middle = _fake(0.9, 0.8, "x")
    middle.head, middle.best_params = "logreg", {"clf__C": 1e-2}
    assert grid_edge_notes(middle) == []
    ints = _fake(0.9, 0.8, "x")
    ints.head, ints.best_params = "knn", {"clf__n_neighbors": 15, "clf__metric": "cosine"}
    # kNN searches k and the metric itself too (one grid point of lists); the sweep notes
    # its edges.
    assert grid_edge_notes(ints) == []
    own = _fake(0.9, 0.8, "x", notes=("chosen C on the grid edge (adapted grid)",))
    own.head, own.best_params = "logreg", {"clf__C": 1e-3}
    assert row_notes(own) == ["chosen C on the grid edge (adapted grid)"]


def test_the_json_keeps_each_list_of_numbers_on_one_line() -> None:
    from featurestore.report.tables import json_text

    document = {
        "confusion_matrix": [[5, 0, 1], [0, 7, 0], [2, 0, 4]],
        "per_class": {"cat": {"recall": 0.5, "f1": None}},
        "class_names": ["cat", "dog", "owl"],
        "params": {"C": [0.1, 1]},
    }
    text = json_text(document)
    assert json.loads(text) == document
    assert "    [5, 0, 1],\n    [0, 7, 0]," in text  # a row a line, not a cell a line
    assert '"C": [0.1, 1]' in text and '"cat",\n' in text  # strings keep one a line


def _summary(matrix: list[list[int]]) -> dict:
    return {"confusion_matrix": matrix, "class_names": ["cat", "non-cat"]}


def test_a_row_giving_every_held_out_image_one_class_is_warned() -> None:
    constant = _summary([[0, 33], [0, 17]])  # catvnoncat's pixels16 linear SVM
    found = one_answer_warning(constant, "accuracy")
    assert found is not None
    assert "'non-cat', for all 50 held-out images" in found and "balanced_accuracy" in found
    assert "balanced_accuracy" not in one_answer_warning(constant, "balanced_accuracy")
    assert one_answer_warning(_summary([[30, 3], [2, 15]]), "accuracy") is None
    assert one_answer_warning(_summary([[0, 0], [0, 17]]), "accuracy") is None  # one class held out


def test_the_report_lists_a_constant_row_under_its_caveats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10)).astype(np.float32)  # noise: nothing to learn
    y = (np.arange(200) % 4 == 0).astype(int)  # a quarter 'rare'
    test = np.arange(200) % 5 == 0
    noise = FeatureSet("noise", X[~test], y[~test], X[test], y[test], ["common", "rare"])
    results = run_sweep([noise], heads=["logreg"], cv=3)
    assert np.count_nonzero(np.sum(results[0].evaluation.summary["confusion_matrix"], 0)) == 1
    paths = write_report(results, tmp_path / "report", title="noise", provenance={})
    text = paths["markdown"].read_text()
    caveats = text[text.index("## Caveats") :]
    assert "noise / logreg: predicts one class, 'common', for all 40 held-out images" in caveats
    row = json.loads(paths["json"].read_text())["rows"][0]
    assert any("predicts one class" in w for w in row["warnings"])


# ----------------------------------------------------------------------------- notes
def _facts(train: list[int], test: list[int]) -> DataFacts:
    names = ["cat", "dog", "owl"][: len(train)]
    return DataFacts("src", "given splits", names, train, test)


def test_imbalance_is_warned_with_its_rule_and_counts() -> None:
    assert imbalance_warning(_facts([100, 90], [20, 18])) is None
    found = imbalance_warning(_facts([137, 72], [17, 33]))  # catvnoncat's counts
    assert found is not None
    assert IMBALANCE_RULE in found
    assert "training split 137 'cat' vs 72 'dog' (1.9x)" in found
    assert "all images 154 'cat' vs 105 'dog' (1.5x)" in found
    assert "evaluation split 33 'dog' vs 17 'cat' (1.9x)" in found
    assert "--class-weight balanced" in found
    assert imbalance_warning(_facts([100, 60], [10, 10])) is not None  # 1.67x > 1.5x
    # balanced training, unbalanced evaluation by design: all images 190 vs 110
    assert imbalance_warning(_facts([100, 100], [90, 10])) is not None


def test_a_balanced_set_split_at_random_is_not_called_imbalanced() -> None:
    # digits' training and evaluation counts of two classes under the default hash split
    assert imbalance_warning(_facts([150, 139], [27, 44])) is None


def test_a_class_on_one_side_only_gets_a_note() -> None:
    warnings = coverage_warnings(_facts([10, 10, 0], [5, 5, 3]))
    assert len(warnings) == 1 and "only in the evaluation split: 'owl' (3 images)" in warnings[0]
    assert "never be predicted" in warnings[0]
    warnings = coverage_warnings(_facts([10, 10, 4], [5, 5, 0]))
    assert "only in the training split: 'owl'" in warnings[0]


# ----------------------------------------------------------------------------- whole report
def test_the_chosen_section_states_cv_test_interval_rule_and_per_class_recall(
    sweep, tmp_path: Path
) -> None:
    sets, results = sweep
    names = sets[0].class_names
    train = np.bincount(sets[0].y_train, minlength=len(names)).tolist()
    test = np.bincount(sets[0].y_test, minlength=len(names)).tolist()
    facts = DataFacts("src", "given splits", names, train, test)
    paths = write_report(
        results, tmp_path / "r", title="t", provenance={}, facts=facts, anchors=[Anchor("p", 0.9)]
    )
    document = json.loads(paths["json"].read_text())
    chosen = document["chosen"]
    best = rank(results)[0]
    assert (chosen["feature_set"], chosen["head"]) == (best.feature_set, best.head)
    assert chosen["accuracy_ci95"] == pytest.approx(list(accuracy_interval(best)))
    assert document["selection"]["rule"] == SELECTION_RULE
    markdown = paths["markdown"].read_text()
    section = markdown.split("## Chosen model")[1].split("\n## ")[0]
    assert f"**{best.feature_set} / {best.head}**" in section
    assert f"cross-validated accuracy on the training split: **{best.cv_score:.4f}**" in section
    low, high = accuracy_interval(best)
    assert f"accuracy **{best.accuracy:.4f}** (95% CI {low:.4f}-{high:.4f}, Wilson)" in section
    assert f"Selection rule: {SELECTION_RULE}." in section
    per_class = markdown.split("## Per-class results of the chosen model")[1].split("\n## ")[0]
    for i, name in enumerate(names):
        recall = best.evaluation.summary["per_class"][name]["recall"]
        assert f"| {name} | {train[i]} | {test[i]} |" in per_class
        assert f"{recall:.4f}" in per_class.split(f"| {name} |")[1].split("\n")[0]
    assert "Published anchor p: 0.9000" in markdown


def test_failed_heads_are_listed_and_everything_else_kept(sweep, tmp_path: Path) -> None:
    failures = [FailedHead("sharp", "mlp", "ValueError: boom", 0.1)]
    paths = write_report(sweep[1], tmp_path / "r", title="t", provenance={}, failures=failures)
    document = json.loads(paths["json"].read_text())
    assert len(document["rows"]) == len(sweep[1])
    assert document["failures"] == [
        {"feature_set": "sharp", "head": "mlp", "error": "ValueError: boom", "seconds": 0.1}
    ]
    markdown = paths["markdown"].read_text()
    assert "## Failed heads" in markdown and "| sharp | mlp | ValueError: boom |" in markdown
    assert "1 fit(s) failed" in markdown
    with paths["csv"].open(newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert (last["head"], last["rank"], last["error"]) == ("mlp", "", "ValueError: boom")
    # every fit failed: the tables still say so, and there is nothing to plot
    paths = write_report([], tmp_path / "none", title="t", provenance={}, failures=failures)
    assert set(paths) == {"markdown", "csv", "json"}
    assert "None: every head failed" in paths["markdown"].read_text()
