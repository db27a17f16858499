"""The report's plots and per-image report: what each figure draws, that its AUC is the table's,
that it stays readable with many classes, and that every figure is titled and labelled."""

from __future__ import annotations

import csv
import io
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.datasets import make_classification
from sklearn.naive_bayes import GaussianNB

from classifiers.metrics import evaluate
from classifiers.sweep import FeatureSet, run_sweep
from featurestore.report.images import (
    EvaluatedImages,
    mistakes_figure,
    predictions_csv,
    worst_mistakes,
)
from featurestore.report.notes import Anchor
from featurestore.report.plots import (
    axis_ranges,
    confusion_figure,
    leaderboard_figure,
    roc_curves,
    roc_figure,
    save_png,
)
from featurestore.report.rows import result_row
from featurestore.report.selection import rank


def _data(n_classes: int, n: int = 240, seed: int = 0, sep: float = 1.0):
    X, y = make_classification(
        n_samples=n,
        n_features=12,
        n_informative=8,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=sep,
        random_state=seed,
    )
    test = np.arange(n) % 3 == 0
    return X[~test], y[~test], X[test], y[test]


@pytest.fixture(scope="module", params=[2, 4], ids=["binary", "multiclass"])
def results(request):
    X, y, Xt, yt = _data(request.param)
    names = ["ant", "bee", "wasp", "fly"][: request.param]
    fs = FeatureSet("set", X, y, Xt, yt, class_names=names)
    # logreg has predict_proba, linear_svm only decision scores: both must give the table's AUC
    return rank(run_sweep([fs], heads=["logreg", "linear_svm"], cv=3, use_grid=False))


def _texts(fig: Figure) -> tuple[str, list[tuple[str, str, str]]]:
    """(suptitle, [(title, xlabel, ylabel) of every axes])."""
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return sup, [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def _labels(fig: Figure) -> tuple[str, str, str]:
    """(title, xlabel, ylabel) of the first axes, or of the figure where it has them."""
    ax = fig.axes[0]
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
    supx = fig._supxlabel.get_text() if fig._supxlabel is not None else ""
    xlabel = next((a.get_xlabel() for a in fig.axes if a.get_xlabel()), supx)
    return ax.get_title() or sup, xlabel, ax.get_ylabel()


# ----------------------------------------------------------------------------- ROC
def test_roc_auc_is_the_tables_for_every_head(results) -> None:
    for result in results:
        summary = result.evaluation.summary
        fig, curves = roc_figure(result)
        assert curves.auc == pytest.approx(summary["roc_auc"], abs=1e-12)
        title = fig.axes[0].get_title()
        assert f"{summary['roc_auc']:.4f}" in title
        n = len(summary["class_names"])
        if n == 2:
            positive = summary["class_names"][1]
            assert curves.positive == positive and f"positive class '{positive}'" in title
            assert len(curves.curves) == 1
        else:  # one curve per class, one-vs-rest, named in the legend
            assert [c[0] for c in curves.curves] == summary["class_names"]
            legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
            assert all(any(name in t for t in legend) for name in summary["class_names"])


def test_roc_with_many_classes_names_the_lowest_auc_ones_and_draws_all(tmp_path) -> None:
    result = _result(14, n=700, sep=1.5)
    fig, curves = roc_figure(result)
    assert len(curves.curves) == 14
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    worst = sorted(curves.curves, key=lambda c: c[3])[:5]
    assert [f"{name} (AUC {area:.3f})" for name, _, _, area in worst] == legend[-5:]
    assert "9 other classes" in legend
    assert sum(len(line.get_xdata()) > 2 for line in fig.axes[0].get_lines()) == 14


def test_roc_that_cannot_be_computed_says_why() -> None:
    X, y, Xt, yt = _data(2)
    only = yt == 1
    result = _fitted(X, y, Xt[only], yt[only], ["a", "b"])
    curves = roc_curves(result.evaluation)
    assert curves.auc is None and "one class" in curves.reason
    fig, _ = roc_figure(result)
    assert "not computable" in fig.axes[0].get_title()


# ----------------------------------------------------------------------------- confusion
def _fitted(X, y, Xt, yt, names):
    model = GaussianNB().fit(X, y)
    evaluation = evaluate(model, Xt, yt, class_names=names)
    return SimpleNamespace(feature_set="fs", head="gaussian_nb", evaluation=evaluation)


def _result(n_classes: int, n: int | None = None, sep: float = 3.0):
    n = n or 12 * n_classes
    X, y, Xt, yt = _data(n_classes, n=n, seed=1, sep=sep)
    # long, caltech-like class names
    names = [f"class_{i:03d}_{'x' * (i % 12)}" for i in range(n_classes)]
    return _fitted(X, y, Xt, yt, names)


def _no_overlap(boxes, axis: int) -> bool:
    spans = sorted((b.get_points()[0][axis], b.get_points()[1][axis]) for b in boxes)
    return all(a[1] <= b[0] + 0.5 for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize("n_classes", [2, 17, 101])
def test_confusion_names_every_class_readably(n_classes: int, tmp_path) -> None:
    result = _result(n_classes)
    fig = confusion_figure(result)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    names = result.evaluation.summary["class_names"]
    for labels, axis in ((ax.get_xticklabels(), 0), (ax.get_yticklabels(), 1)):
        assert [t.get_text() for t in labels] == names  # every class named, none thinned
        assert min(t.get_fontsize() for t in labels) >= 6
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert _no_overlap(boxes, axis), f"tick labels overlap at {n_classes} classes"
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert "Confusion matrix" in ax.get_title()
    annotated = [t for t in ax.texts if t.get_text().isdigit()]
    counts = np.asarray(result.evaluation.summary["confusion_matrix"])
    if n_classes <= 30:
        assert sorted(int(t.get_text()) for t in annotated) == sorted(counts[counts > 0])
    else:
        assert not annotated
    path = save_png(fig, tmp_path / "c.png")
    with Image.open(path) as im:
        px_per_class = im.height / n_classes
    assert px_per_class >= 10  # a 101-class matrix is a large image, not a blur


def test_past_the_named_limit_the_confusion_stops_growing_and_names_no_class(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr("featurestore.report.plots.CONFUSION_NAMED_MAX", 60)
    sizes = {}
    for n_classes in (60, 180):
        result = _result(n_classes, n=6 * n_classes)
        fig = confusion_figure(result)
        with Image.open(save_png(fig, tmp_path / f"c{n_classes}.png")) as im:
            sizes[n_classes] = im.size
        ax = fig.axes[0]
        shown = {t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()}
        named = shown & set(result.evaluation.summary["class_names"])
        if n_classes == 180:
            assert not named  # the axes count classes by index
            assert "180 classes, shown by index" in ax.get_title()
        else:
            assert len(named) == 60 and "shown by index" not in ax.get_title()
    assert max(sizes[180]) <= max(sizes[60])  # three times the classes, not the size


# ----------------------------------------------------------------------------- leaderboard
def _vertical_lines(ax) -> list[float]:
    """x of every full-height vertical line (axvline: two points, same x, y in axes units)."""
    return [
        float(line.get_xdata()[0])
        for line in ax.get_lines()
        if len(line.get_xdata()) == 2
        and line.get_xdata()[0] == line.get_xdata()[1]
        and list(line.get_ydata()) == [0, 1]
        and line.get_linestyle() != "None"  # not the axis-break marks
    ]


def test_leaderboard_axis_is_zoomed_to_the_data_with_anchors_as_lines(results) -> None:
    rows = [result_row(i, r, chosen=i == 1, scoring="accuracy") for i, r in enumerate(results, 1)]
    anchors = [Anchor("published", 0.9), Anchor("other", 0.85)]
    fig = leaderboard_figure(rows, anchors=anchors)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    values = [r["cv_score"] for r in rows] + [a.accuracy for a in anchors]
    values += [v for r in rows for v in r["accuracy_ci95"]]
    assert low > 0.0 and (low, high) != (0.0, 1.0)
    assert low <= min(values) and high >= max(values)
    assert high - low <= (max(values) - min(values)) * 1.2 + 0.03
    assert _vertical_lines(ax) == [0.9, 0.85]
    # each row: a CV marker and a test marker with the 95% interval as error bar
    drawn = [c for c in ax.containers]
    assert len(drawn) == 2 * len(rows)
    assert ax.get_yticklabels()[0].get_text().endswith("(chosen)")
    assert all(_labels(fig))


def test_leaderboard_on_another_measure_does_not_draw_accuracy_anchors(results) -> None:
    rows = [result_row(i, r, chosen=i == 1, scoring="accuracy") for i, r in enumerate(results, 1)]
    fig = leaderboard_figure(rows, scoring="balanced_accuracy", anchors=[Anchor("pub", 0.9)])
    ax = fig.axes[0]
    assert _vertical_lines(ax) == []
    title, xlabel, _ = _labels(fig)
    assert "anchors (accuracies) not drawn" in title and "balanced accuracy" in xlabel


def test_two_distant_clusters_get_a_broken_axis_each_zoomed() -> None:
    def row(cv: float, test: float, chosen: bool = False) -> dict:
        return {
            "feature_set": "f",
            "head": "h",
            "cv_score": cv,
            "cv_std": None,
            "accuracy": test,
            "accuracy_ci95": [test - 0.03, min(1.0, test + 0.02)],
            "chosen": chosen,
        }

    rows = [row(0.98, 0.97, True), row(0.96, 0.95), row(0.66, 0.60), row(0.58, 0.54)]
    fig = leaderboard_figure(rows, anchors=[Anchor("pub", 0.9477)])
    assert len(fig.axes) == 2
    (l0, h0), (l1, h1) = (ax.get_xlim() for ax in fig.axes)
    assert l0 <= 0.51 and 0.66 <= h0 < 0.75  # the raw-pixel cluster
    assert 0.85 < l1 <= 0.9177 and h1 >= 0.99  # features and the anchor, zoomed
    assert _vertical_lines(fig.axes[1]) == [0.9477]
    assert "broken where no row lies" in _labels(fig)[1]
    assert axis_ranges([(0.90, 0.95), (0.93, 0.99)]) == [pytest.approx((0.89, 1.005))]


# ----------------------------------------------------------------------------- per-image
def _images(load=None) -> EvaluatedImages:
    true = np.array([0, 1, 1, 0, 2, 2])
    predicted = np.array([0, 0, 1, 1, 0, 2])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.6, 0.3, 0.1],  # wrong, p=0.6
            [0.2, 0.7, 0.1],
            [0.1, 0.85, 0.05],  # wrong, p=0.85
            [0.95, 0.0, 0.05],  # wrong, p=0.95
            [0.1, 0.1, 0.8],
        ]
    )
    return EvaluatedImages(
        feature_set="fs",
        head="logreg",
        paths=[f"data/{c}/img{i}.png" for i, c in enumerate("abbacc")],
        keys=[f"k{i}" for i in range(6)],
        true=true,
        predicted=predicted,
        class_names=["ant", "bee", "wasp"],
        probabilities=probabilities,
        load=load,
    )


def test_predictions_csv_has_every_image_its_labels_and_probabilities() -> None:
    images = _images()
    rows = list(csv.DictReader(io.StringIO(predictions_csv(images))))
    assert [r["path"] for r in rows] == images.paths
    assert [r["label"] for r in rows] == ["ant", "bee", "bee", "ant", "wasp", "wasp"]
    assert [r["predicted"] for r in rows] == ["ant", "ant", "bee", "bee", "ant", "wasp"]
    assert [r["correct"] for r in rows] == ["1", "0", "1", "0", "0", "1"]
    for row, probs in zip(rows, images.probabilities, strict=True):
        assert [float(row[f"p_{c}"]) for c in images.class_names] == pytest.approx(probs)
        assert float(row["probability"]) == pytest.approx(max(probs))


def test_the_contact_sheet_shows_the_most_confident_mistakes_first() -> None:
    loaded = []

    def load(i: int) -> Image.Image:
        loaded.append(i)
        return Image.new("RGB", (8, 8), (40 * i, 0, 0))

    images = _images(load)
    assert worst_mistakes(images) == [4, 3, 1]
    fig = mistakes_figure(images)
    sup, axes = _texts(fig)
    assert "Most confident mistakes" in sup and "3 shown of 3 wrong among 6" in sup
    assert [t for t, _, _ in axes] == [
        "true: wasp\npredicted: ant (p=0.95)",
        "true: ant\npredicted: bee (p=0.85)",
        "true: bee\npredicted: ant (p=0.60)",
    ]
    assert [x for _, x, _ in axes] == ["c/img4.png", "a/img3.png", "b/img1.png"]
    assert loaded == [4, 3, 1]
    assert all(len(ax.get_images()) == 1 for ax in fig.axes)


def test_an_unloadable_image_keeps_its_tile_and_a_clean_run_says_so() -> None:
    def load(i: int) -> Image.Image:
        raise OSError("gone")

    fig = mistakes_figure(_images(load))
    assert len(fig.axes) == 3 and all(
        "cannot load: gone" in ax.texts[0].get_text() for ax in fig.axes
    )
    perfect = _images()
    perfect.predicted = perfect.true.copy()
    sup, _ = _texts(mistakes_figure(perfect))
    assert "none" in sup


def test_every_figure_is_titled_and_its_axes_labelled(results) -> None:
    rows = [result_row(i, r, chosen=i == 1, scoring="accuracy") for i, r in enumerate(results, 1)]
    figures = {
        "leaderboard": leaderboard_figure(rows),
        "roc": roc_figure(results[0])[0],
        "confusion": confusion_figure(results[0]),
    }
    for name, fig in figures.items():
        assert all(_labels(fig)), name
    sup, axes = _texts(mistakes_figure(_images(lambda i: Image.new("RGB", (4, 4)))))
    assert sup and all(title.startswith("true: ") and xlabel for title, xlabel, _ in axes)
