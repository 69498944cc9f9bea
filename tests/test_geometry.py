"""Embedding geometry (issue 5): intra/inter-class cosine, their gap, silhouette; the t-SNE grid."""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from sslkit.metrics import embedding_geometry  # noqa: E402
from sslkit.plots import plot_tsne  # noqa: E402


def _hand(features, labels):
    """Direct double loop over ordered pairs i != j."""
    x = [list(map(float, row)) for row in features]
    y = list(map(int, labels))

    def cos(a, b):
        return sum(p * q for p, q in zip(a, b)) / math.sqrt(sum(p * p for p in a) * sum(q * q for q in b))

    same, diff = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j:
                (same if y[i] == y[j] else diff).append(cos(x[i], x[j]))
    return sum(same) / len(same), sum(diff) / len(diff)


def test_geometry_on_a_tiny_hand_computed_example():
    # class 0: two unit vectors 90 degrees apart; class 1: one vector opposite the first
    feats = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    g = embedding_geometry(feats, [0, 0, 1])
    # same-class pairs: (0,1),(1,0): cos 0 -> intra 0; different: (0,2),(2,0) cos -1, (1,2),(2,1) cos 0
    assert g["intra_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert g["inter_cosine"] == pytest.approx(-0.5)
    assert g["gap"] == pytest.approx(0.5)
    assert g["n"] == 3 and g["n_classes"] == 2
    assert g["silhouette"] == pytest.approx(silhouette_score(feats, [0, 0, 1], metric="cosine"))


@pytest.mark.parametrize("seed", range(3))
def test_geometry_matches_a_double_loop_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 40)
    x = rng.normal(size=(40, 6)) + 2.0 * np.eye(6)[y]
    g = embedding_geometry(x, y)
    intra, inter = _hand(x, y)
    assert g["intra_cosine"] == pytest.approx(intra, rel=1e-9)
    assert g["inter_cosine"] == pytest.approx(inter, rel=1e-9)
    assert g["gap"] == pytest.approx(intra - inter, rel=1e-9)
    assert g["silhouette"] == pytest.approx(silhouette_score(x, y, metric="cosine"), rel=1e-6)
    assert g["gap"] > 0  # the class offsets make same-class pairs closer
    json.dumps(g)  # plain floats


def test_geometry_is_scale_invariant_ignores_unknown_labels_and_handles_edges():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    g = embedding_geometry(x, y)
    scaled = embedding_geometry(x * rng.uniform(0.1, 10, size=(20, 1)), y)
    assert all(scaled[k] == pytest.approx(g[k]) for k in ("intra_cosine", "inter_cosine", "silhouette"))
    with_unknown = embedding_geometry(np.vstack([x, rng.normal(size=(3, 4))]), np.r_[y, [-1, -1, -1]])
    assert with_unknown["gap"] == pytest.approx(g["gap"]) and with_unknown["n"] == 20
    one_class = embedding_geometry(x, np.zeros(20, int))
    assert math.isnan(one_class["inter_cosine"]) and math.isnan(one_class["silhouette"])
    singletons = embedding_geometry(x[:4], [0, 1, 2, 3])
    assert math.isnan(singletons["intra_cosine"]) and not math.isnan(singletons["inter_cosine"])
    assert math.isnan(embedding_geometry(x, y, silhouette=False)["silhouette"])
    with pytest.raises(ValueError, match="differ in length"):
        embedding_geometry(x, y[:5])


def test_plot_tsne_draws_one_panel_per_embedding_on_a_readable_class_subset():
    rng = np.random.default_rng(0)
    n_classes = 25
    y = np.r_[np.repeat(np.arange(n_classes), 6), [3, 3, 3, 3]]  # class 3 is the most frequent
    feats = rng.normal(size=(len(y), 16)) + 3.0 * np.eye(16)[y % 16]
    panels = {"before training": feats, "cross-entropy": feats * 2, "focal + SupCon": feats + 1.0,
              "focal + margin": -feats}
    names = [f"intent {c}" for c in range(n_classes)]
    # sklearn's t-SNE on one OpenMP thread: on 2 busy cores its 2-thread barriers made a 52-point map
    # take 0.5 to 30 s (0.1 s on one thread); the maps are not what this test checks
    with threadpool_limits(1, user_api="openmp"):
        fig = plot_tsne(panels, y, names, max_classes=8, seed=0)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == list(panels)
    assert len(fig.axes) == len(visible) == 4  # a 2 x 2 grid
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(legend_labels) == 8 and "intent 3" in legend_labels
    assert "8 of 25 classes" in fig._suptitle.get_text()
    n_points = sum(len(c.get_offsets()) for c in visible[0].collections)
    assert n_points == int(np.isin(y, [int(s.split()[1]) for s in legend_labels]).sum())
    plt.close(fig)
    # the grid's shape does not depend on the maps: 4 examples (too few for t-SNE, no 8 more runs)
    few = {k: v[:4] for k, v in panels.items()}
    three = plot_tsne({k: few[k] for k in list(few)[:3]}, y[:4], names, max_classes=8)
    assert len(three.axes) == 3  # one row
    assert all("too few points" in [t.get_text() for t in ax.texts] for ax in three.axes)
    plt.close(three)
    five = plot_tsne({**few, "focal": feats[:4] * 3}, y[:4], names, max_classes=8)
    assert len(five.axes) == 6 and sum(ax.get_visible() for ax in five.axes) == 5  # 2 x 3, one hidden
    plt.close(five)
    with pytest.raises(ValueError, match="feature rows"):
        plot_tsne({"a": feats[:5]}, y, names)
