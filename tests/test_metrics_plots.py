"""Tests for sslkit.metrics (hand-computed examples) and sslkit.plots (figure structure)."""

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sslkit.metrics import (  # noqa: E402
    classification_metrics,
    confused_pairs,
    confusion,
    per_class_report,
    pseudo_label_quality,
)
from sslkit.plots import (  # noqa: E402
    plot_budget_split,
    plot_class_histogram,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_metric_bars,
    plot_text_lengths,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- metrics

# 3-class example used below. Per class (TP, FP, FN):
#   0: (1, 1, 1) -> P=1/2, R=1/2, F1=1/2
#   1: (2, 1, 0) -> P=2/3, R=1,   F1=4/5
#   2: (1, 0, 1) -> P=1,   R=1/2, F1=2/3
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]
MACRO_F1 = (1 / 2 + 4 / 5 + 2 / 3) / 3


def test_classification_metrics_three_classes_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(MACRO_F1)
    assert type(m["accuracy"]) is float and type(m["macro_f1"]) is float
    assert type(m["n"]) is int
    json.dumps(m)


def test_classification_metrics_label_names_include_absent_class():
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1])
    # F1 per class: 0 -> 1, 1 -> 2/3 (P=1/2, R=1), 2 -> 2/3 (P=1, R=1/2)
    present = classification_metrics(y_true, y_pred)
    assert present["accuracy"] == pytest.approx(3 / 4)
    assert present["macro_f1"] == pytest.approx(7 / 9)
    # a 4th, never-seen class counts as F1 = 0 when label_names is given
    named = classification_metrics(y_true, y_pred, label_names=["a", "b", "c", "d"])
    assert named["accuracy"] == pytest.approx(3 / 4)
    assert named["macro_f1"] == pytest.approx(7 / 12)


def test_classification_metrics_length_mismatch_raises():
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0])


def test_per_class_report_by_hand():
    df = per_class_report(Y_TRUE, Y_PRED, ["neg", "neu", "pos", "unused"])
    assert list(df.columns) == ["label", "precision", "recall", "f1", "support"]
    assert list(df["label"]) == ["neg", "neu", "pos", "unused"]  # class order kept
    np.testing.assert_allclose(df["precision"], [1 / 2, 2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(df["recall"], [1 / 2, 1.0, 1 / 2, 0.0])
    np.testing.assert_allclose(df["f1"], [1 / 2, 4 / 5, 2 / 3, 0.0])
    assert list(df["support"]) == [2, 2, 2, 0]


def test_confusion_shape_with_absent_classes():
    cm = confusion([0, 1, 1], [0, 3, 1], num_classes=5)
    assert cm.shape == (5, 5)
    assert cm[0, 0] == 1 and cm[1, 3] == 1 and cm[1, 1] == 1
    assert cm.sum() == 3
    assert cm[2].sum() == 0 and cm[4].sum() == 0

    rates = confusion([0, 1, 1], [0, 3, 1], num_classes=5, normalize="true")
    np.testing.assert_allclose(rates[1], [0, 0.5, 0, 0.5, 0])
    np.testing.assert_allclose(rates[2], 0.0)  # absent class -> zero row, not NaN


def test_confused_pairs_counts_both_directions_of_a_pair_against_a_loop():
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    conf = rng.random(300)
    table = confused_pairs(gold, pred, conf, confident=0.7)
    by_hand: dict = {}
    for g, p, c in zip(gold, pred, conf):
        if g != p:
            n, k = by_hand.get((min(g, p), max(g, p)), (0, 0))
            by_hand[(min(g, p), max(g, p))] = (n + 1, k + int(c >= 0.7))
    assert {pair: (int(r.errors), int(r.confident)) for pair, r in table.iterrows()} == by_hand
    assert table["errors"].is_monotonic_decreasing and table["share"].sum() == pytest.approx(1.0)


def test_confused_pairs_with_names_and_without_errors():
    table = confused_pairs(["refund", "card", "card"], ["card", "refund", "card"])
    assert list(table.index) == [("card", "refund")] and int(table["errors"].iloc[0]) == 2
    assert "confident" not in table
    assert confused_pairs([1, 2], [1, 2]).empty
    with pytest.raises(ValueError, match="gold and pred differ in length"):
        confused_pairs([1, 2], [1])


def test_pseudo_label_quality_with_missing_values():
    pseudo = np.array([-1, 0, 1, 2, -1, 1])
    gold = np.array([0, 0, 2, -1, 1, 1])
    q = pseudo_label_quality(pseudo, gold)
    # pseudo-labelled: idx 1,2,3,5; scored (gold known): 1 (right), 2 (wrong), 5 (right)
    assert q == {"n_pseudo": 4, "n_scored": 3, "precision": pytest.approx(2 / 3),
                 "coverage": pytest.approx(4 / 6)}
    assert type(q["precision"]) is float and type(q["n_scored"]) is int
    json.dumps(q)


def test_pseudo_label_quality_nan_when_nothing_scored():
    q = pseudo_label_quality([0, 1, -1], [-1, -1, 2])
    assert q["n_pseudo"] == 2 and q["n_scored"] == 0
    assert math.isnan(q["precision"])
    assert q["coverage"] == pytest.approx(2 / 3)

    none = pseudo_label_quality([-1, -1], [0, 1])
    assert none["n_pseudo"] == 0 and none["coverage"] == 0.0
    assert math.isnan(none["precision"])


# ---------------------------------------------------------------- plots


def _bar_heights(ax):
    return [p.get_height() for p in ax.patches]


def test_class_histogram_sorted_and_top(tmp_path):
    counts = {"a": 3, "b": 10, "c": 1, "d": 7}
    fig = plot_class_histogram(counts)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert _bar_heights(ax) == [10, 7, 3, 1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "d", "a", "c"]
    assert "max/min=10.0" in ax.get_title()
    fig.savefig(tmp_path / "hist.png")
    assert (tmp_path / "hist.png").stat().st_size > 0

    fig = plot_class_histogram(pd.Series(counts), top=2, title=None)
    ax = fig.axes[0]
    assert _bar_heights(ax) == [10, 7]
    assert "top 2 of 4" in ax.get_title()


def test_class_histogram_many_classes_into_given_axes():
    counts = {f"intent_{i:02d}": 100 - i for i in range(77)}
    fig0, ax0 = plt.subplots()
    fig = plot_class_histogram(counts, title="banking77", ax=ax0)
    assert fig is fig0
    assert len(ax0.patches) == 77
    assert ax0.get_title() == "banking77"
    assert ax0.get_xticklabels()[0].get_rotation() == 90
    assert 6 <= ax0.get_xticklabels()[0].get_fontsize() < 9


def test_text_lengths_one_histogram_per_split(tmp_path):
    rng = np.random.default_rng(0)
    lengths = {"train": rng.integers(3, 60, 200), "dev": rng.integers(3, 60, 50), "empty": []}
    fig = plot_text_lengths(lengths, unit="tokens")
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # stepfilled: one patch per non-empty split
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("train (n=200") and legend[1].startswith("dev (n=50")
    assert ax.get_xlabel() == "length (tokens)"
    fig.savefig(tmp_path / "lengths.png")


def test_budget_split_stacks_labeled_under_pool():
    fig = plot_budget_split([2, 3, 5], [20, 30, 0], ["x", "y", "z"])
    ax = fig.axes[0]
    assert len(ax.patches) == 6
    labeled, pool = ax.patches[:3], ax.patches[3:]
    assert [p.get_height() for p in labeled] == [2, 3, 5]
    assert [p.get_y() for p in pool] == [2, 3, 5]  # stacked on top of the labeled bars
    assert [p.get_height() for p in pool] == [20, 30, 0]
    assert "10 labeled of 60" in ax.get_title()
    with pytest.raises(ValueError):
        plot_budget_split([1, 2], [3], ["a", "b"])


def _heatmap_array(fig):
    ax = fig.axes[0]
    mesh = ax.collections[0]
    return ax, np.asarray(mesh.get_array())


def test_confusion_matrix_small_normalised(tmp_path):
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    fig = plot_confusion_matrix(cm, ["a", "b", "c"])
    ax, arr = _heatmap_array(fig)
    assert arr.size == 9
    np.testing.assert_allclose(arr.reshape(3, 3)[0], [0.8, 0.2, 0.0])
    np.testing.assert_allclose(arr.reshape(3, 3)[2], 0.0)  # empty row -> zeros
    assert "most-confused" not in ax.get_title()
    fig.savefig(tmp_path / "cm.png")

    fig = plot_confusion_matrix(cm, ["a", "b", "c"], normalize=False)
    _, arr = _heatmap_array(fig)
    np.testing.assert_allclose(arr.reshape(3, 3), cm)


def test_confusion_matrix_subsets_to_most_confused_classes():
    k, keep = 40, 10
    cm = np.diag(np.full(k, 50))
    confused = [3, 7, 11, 12, 20, 25, 30, 31, 38, 39]
    for i, j in zip(confused[::2], confused[1::2]):
        cm[i, j] = 10 + i  # plant errors between pairs of classes
        cm[j, i] = 5
    names = [f"c{i}" for i in range(k)]
    fig = plot_confusion_matrix(cm, names, max_classes=keep)
    ax, arr = _heatmap_array(fig)
    assert arr.size == keep * keep
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"c{i}" for i in confused]
    assert f"{keep} most-confused of {k} classes" in ax.get_title()
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, names[:-1])


HISTORY = [
    {"epoch": 0, "step": 10, "train_loss": 1.2, "lr": 1e-4},
    {"epoch": 0, "step": 20, "train_loss": 0.9, "lr": 9e-5},
    {"epoch": 0, "step": 20, "dev_accuracy": 0.6, "dev_macro_f1": 0.55},
    {"epoch": 1, "step": 30, "train_loss": 0.7, "lr": 8e-5},
    {"epoch": 1, "step": 40, "train_loss": 0.5, "lr": 7e-5},
    {"epoch": 1, "step": 40, "dev_accuracy": 0.7, "dev_macro_f1": 0.66},
]


def test_learning_curves_full_history(tmp_path):
    fig = plot_learning_curves(HISTORY, title="run-1")
    assert isinstance(fig, Figure)
    ax_loss, ax_dev = fig.axes
    assert len(ax_loss.lines) == 1
    np.testing.assert_allclose(ax_loss.lines[0].get_xdata(), [10, 20, 30, 40])
    np.testing.assert_allclose(ax_loss.lines[0].get_ydata(), [1.2, 0.9, 0.7, 0.5])
    assert len(ax_dev.lines) == 2
    np.testing.assert_allclose(ax_dev.lines[0].get_xdata(), [0, 1])
    np.testing.assert_allclose(ax_dev.lines[1].get_ydata(), [0.55, 0.66])
    assert fig._suptitle is not None and fig._suptitle.get_text() == "run-1"
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_learning_curves_partial_columns():
    # only a "loss" column (alias), no dev metrics, as a DataFrame
    df = pd.DataFrame([{"epoch": 0, "step": 1, "loss": 2.0}, {"epoch": 0, "step": 2, "loss": 1.5}])
    fig = plot_learning_curves(df)
    ax_loss, ax_dev = fig.axes
    np.testing.assert_allclose(ax_loss.lines[0].get_ydata(), [2.0, 1.5])
    assert len(ax_dev.lines) == 0
    assert any("no dev metrics" in t.get_text() for t in ax_dev.texts)

    # only dev accuracy, no loss and no macro-F1
    fig = plot_learning_curves([{"epoch": 0, "step": 5, "dev_accuracy": 0.4},
                                {"epoch": 1, "step": 9, "dev_accuracy": 0.5}])
    ax_loss, ax_dev = fig.axes
    assert len(ax_loss.lines) == 0
    assert any("no training loss" in t.get_text() for t in ax_loss.texts)
    assert len(ax_dev.lines) == 1

    # empty history still gives a two-panel figure
    assert len(plot_learning_curves([]).axes) == 2


def test_metric_bars_sorted_with_labels(tmp_path):
    table = pd.DataFrame({"model": ["frozen+logreg", "LoRA", "prototypes"],
                          "accuracy": [0.85, 0.91, 0.817]})
    fig = plot_metric_bars(table)
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    # best on top: barh draws bottom-up, so widths increase with y
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.817, 0.85, 0.91])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["prototypes", "frozen+logreg", "LoRA"]
    assert {"0.910", "0.850", "0.817"} <= {t.get_text() for t in ax.texts}
    fig.savefig(tmp_path / "bars.png")


def test_metric_bars_aggregates_seeds_and_checks_columns():
    table = pd.DataFrame({"method": ["a", "a", "b"], "macro_f1": [0.5, 0.7, 0.4]})
    fig = plot_metric_bars(table, metric="macro_f1", label_col="method")
    ax = fig.axes[0]
    assert len(ax.patches) == 2
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.4, 0.6])
    assert any(t.get_text().startswith("0.600 ±") for t in ax.texts)
    with pytest.raises(KeyError):
        plot_metric_bars(table, metric="accuracy", label_col="method")
