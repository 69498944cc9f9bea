"""Active-learning queries: the strategies on constructed probabilities and embeddings, and
``query`` end to end on the tiny random encoder."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from sslkit.query import (STRATEGIES, QueryResult, entropy, greedy_coreset, hybrid, kmeans_pp,
                          least_confidence, margin, query, query_frame, random_order, select)


def _clusters(sizes=(800, 50, 50, 50, 50), dim=32, noise=0.05, seed=0):
    """Well separated Gaussian clusters around orthogonal directions (norm 10): points and cluster ids."""
    rng = np.random.default_rng(seed)
    centers = 10.0 * np.eye(dim)[:len(sizes)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    points = centers[labels] + noise * rng.standard_normal((len(labels), dim))
    return points.astype(np.float32), labels


# ---------------------------------------------------------------------- uncertainty
GAPS_PROBS = np.array([
    [0.90, 0.05, 0.05],   # gap 0.85
    [0.50, 0.45, 0.05],   # gap 0.05
    [0.40, 0.35, 0.25],   # gap 0.05 (tie with row 1) but flatter
    [0.60, 0.30, 0.10],   # gap 0.30
    [0.34, 0.33, 0.33],   # gap 0.01
])


def test_margin_picks_the_smallest_top_two_gaps():
    assert margin(GAPS_PROBS) == pytest.approx([-0.85, -0.05, -0.05, -0.30, -0.01])
    res = select("margin", GAPS_PROBS, None, 3)
    assert res.indices.tolist() == [4, 1, 2]  # the tie goes to the lower position
    assert res.scores == pytest.approx([-0.01, -0.05, -0.05])
    assert (np.diff(res.scores) <= 0).all()


def test_least_confidence_and_entropy_orderings():
    assert least_confidence(GAPS_PROBS) == pytest.approx([0.10, 0.50, 0.60, 0.40, 0.66])
    assert select("least_confidence", GAPS_PROBS, None, 5).indices.tolist() == [4, 2, 1, 3, 0]
    h = entropy(GAPS_PROBS)
    assert h[4] == pytest.approx(-(0.34 * np.log(0.34) + 2 * 0.33 * np.log(0.33)))
    assert select("entropy", GAPS_PROBS, None, 5).indices.tolist() == [4, 2, 3, 1, 0]
    # certain rows score 0 (0 log 0 = 0), the uniform row log C
    assert entropy(np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])) == pytest.approx([0.0, np.log(3)])


# ---------------------------------------------------------------------- diversity
@pytest.mark.parametrize("seed", range(5))
def test_kmeans_pp_covers_unequal_clusters(seed):
    x, cluster = _clusters()
    res = kmeans_pp(x, 5, np.random.default_rng(seed))
    assert sorted(cluster[res.indices].tolist()) == [0, 1, 2, 3, 4]
    assert res.scores[0] == np.inf and (res.scores[1:] > 0.5).all()  # each later pick ~1 away


def test_coreset_covers_clusters_and_starts_away_from_the_labeled_set():
    x, cluster = _clusters()
    res = greedy_coreset(x, 5)
    assert sorted(cluster[res.indices].tolist()) == [0, 1, 2, 3, 4]
    assert cluster[res.indices[0]] == 0  # no labeled set: the most central item, in the big cluster
    labeled = x[cluster == 0][:10]
    res = greedy_coreset(x, 4, labeled_embeddings=labeled)
    assert sorted(cluster[res.indices].tolist()) == [1, 2, 3, 4]
    assert np.isfinite(res.scores).all() and (res.scores > 0.5).all()
    # the scores are distances at pick time: the covering radius shrinks
    assert (np.diff(greedy_coreset(x, 20).scores[1:]) <= 1e-6).all()


def test_coreset_with_the_labeled_set_through_select():
    x, cluster = _clusters()
    res = select("coreset", None, x, 4, labeled_embeddings=x[cluster == 0])
    assert 0 not in cluster[res.indices]


def test_hybrid_covers_clusters_within_a_class():
    x, cluster = _clusters()
    probs = np.tile([0.5, 0.5], (len(x), 1))  # every item equally uncertain, one predicted class
    res = hybrid(probs, x, 5, candidate_factor=1000)
    assert sorted(cluster[res.indices].tolist()) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------- hybrid balance
def _skewed_probs(n_items=200):
    """Items 0-39 predict class 0 with margins 0.01..0.05; items 40, 41, 42 predict classes 1, 2, 3
    with margins 0.03, 0.02, 0.04; everything else is confident (margin 0.8)."""
    probs = np.zeros((n_items, 4))
    probs[:, 0], probs[:, 1] = 0.9, 0.1
    gaps = np.linspace(0.01, 0.05, 40)
    probs[:40, 0], probs[:40, 1] = (1 + gaps) / 2, (1 - gaps) / 2
    for i, (c, gap) in zip((40, 41, 42), ((1, 0.03), (2, 0.02), (3, 0.04))):
        probs[i] = 0.0
        probs[i, c], probs[i, (c + 1) % 4] = (1 + gap) / 2, (1 - gap) / 2
    return probs


def test_hybrid_spreads_picks_over_predicted_classes():
    probs = _skewed_probs()
    emb = np.random.default_rng(0).standard_normal((len(probs), 16))
    assert set(probs[select("margin", probs, emb, 4).indices].argmax(1)) == {0}  # margin alone: class 0
    res = select("hybrid", probs, emb, 4)
    assert sorted(probs[res.indices].argmax(1).tolist()) == [0, 1, 2, 3]
    assert res.indices[0] == 0 and res.scores == pytest.approx(margin(probs)[res.indices])
    # a class out of candidates hands its quota on: 8 picks = 5 of class 0 + one of each other
    res = select("hybrid", probs, emb, 8)
    assert np.bincount(probs[res.indices].argmax(1), minlength=4).tolist() == [5, 1, 1, 1]
    assert len(set(res.indices.tolist())) == 8
    # two picks go to the classes whose most uncertain candidate comes first: 0 (0.01), then 2 (0.02)
    assert sorted(probs[select("hybrid", probs, emb, 2).indices].argmax(1).tolist()) == [0, 2]


def test_hybrid_only_picks_uncertain_candidates():
    probs = _skewed_probs()
    emb = np.random.default_rng(1).standard_normal((len(probs), 16))
    gap = -margin(probs)
    for n, factor in ((4, 10), (8, 10), (3, 2)):
        res = hybrid(probs, emb, n, candidate_factor=factor)
        limit = np.sort(gap)[min(len(probs), factor * n) - 1]
        assert len(res) == n and (gap[res.indices] <= limit + 1e-12).all()
    # with factor 1 the candidates are exactly the n smallest margins (all class 0 here)
    res = hybrid(probs, emb, 3, candidate_factor=1)
    assert sorted(res.indices.tolist()) == [0, 1, 2]


def test_hybrid_is_diverse_within_a_class():
    """Class 0's candidates form two tight groups (even and odd positions, the most uncertain
    three even); its two picks come one from each."""
    probs = _skewed_probs()[:40]
    group = np.arange(40) % 2
    group[:3] = 0
    emb = np.eye(8)[group] + 0.01 * np.random.default_rng(0).standard_normal((40, 8))
    res = hybrid(probs, emb, 2)
    assert res.indices[0] == 0 and sorted(group[res.indices].tolist()) == [0, 1]
    assert group[select("margin", probs, emb, 2).indices].tolist() == [0, 0]  # uncertainty alone: one group


# ---------------------------------------------------------------------- random, select contract
def test_random_is_deterministic_by_seed():
    a, b = select("random", None, np.zeros((50, 4)), 10, seed=3), select("random", None, np.zeros((50, 4)), 10, seed=3)
    assert a.indices.tolist() == b.indices.tolist() and (a.scores == 0).all()
    assert select("random", None, np.zeros((50, 4)), 10, seed=4).indices.tolist() != a.indices.tolist()
    assert len(set(a.indices.tolist())) == 10
    assert random_order(50, 10, 3).indices.tolist() == a.indices.tolist()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_returns_all_items_when_n_exceeds_the_pool(strategy):
    x, _ = _clusters(sizes=(3, 2, 2), dim=8)
    probs = softmax(np.random.default_rng(0).standard_normal((len(x), 3)), axis=1)
    res = select(strategy, probs, x, 50, seed=1)
    assert isinstance(res, QueryResult) and res.strategy == strategy
    assert sorted(res.indices.tolist()) == list(range(len(x))) and len(res.scores) == len(x)
    again = select(strategy, probs, x, 4, seed=1)
    assert again.indices.tolist() == select(strategy, probs, x, 4, seed=1).indices.tolist()


def test_bad_arguments_raise():
    probs = np.full((5, 2), 0.5)
    with pytest.raises(ValueError, match="known: random, least_confidence, margin, entropy, kmeans_pp"):
        select("badge", probs, None, 2)
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n must be"):
            select("margin", probs, None, n)
    with pytest.raises(ValueError, match="needs embeddings"):
        select("hybrid", probs, None, 2)
    with pytest.raises(ValueError, match="different numbers of rows"):
        select("hybrid", probs, np.zeros((4, 3)), 2)


def test_query_frame_lays_out_a_result():
    probs = _skewed_probs()
    res = select("margin", probs, None, 3)
    texts = [f"text {i}" for i in range(len(probs))]
    frame = query_frame(res, texts, probs=probs, label_names=["a", "b", "c", "d"])
    assert list(frame.columns) == ["rank", "idx", "text", "score", "predicted", "confidence"]
    assert frame["rank"].tolist() == [1, 2, 3] and frame["text"].tolist() == [texts[i] for i in res.indices]
    assert frame["predicted"].tolist() == ["a", "a", "a"]
    assert frame["confidence"].tolist() == pytest.approx(probs[res.indices].max(1))
    bare = query_frame(res, texts)  # without probs there is nothing to predict from
    assert bare["predicted"].isna().all() and bare["confidence"].isna().all()


# ---------------------------------------------------------------------- end to end
def test_query_matches_select_on_the_embed_outputs(mcid_budget, make_tiny_model):
    from sslkit.backbones import embed

    budget = mcid_budget(train=160, labeled=0.25)
    model = make_tiny_model(budget, seed=0)
    pool, labeled = budget.unlabeled.subset(np.arange(48)), budget.labeled  # few texts: the CPU is shared
    features, logits = embed(model, pool.texts, batch_size=32, return_logits=True)
    probs = softmax(logits.astype(np.float64), axis=1)
    labeled_features = embed(model, labeled.texts, batch_size=32)
    for strategy in ("hybrid", "coreset"):
        res = query(model, pool, 12, strategy=strategy, seed=0, labeled=labeled, batch_size=32)
        assert len(res) == 12 and len(set(res.indices.tolist())) == 12
        assert ((0 <= res.indices) & (res.indices < len(pool))).all()
        expected = select(strategy, probs, features, 12, seed=0, labeled_embeddings=labeled_features)
        assert res.indices.tolist() == expected.indices.tolist()
        assert res.scores == pytest.approx(expected.scores, rel=1e-5, abs=1e-6)
    frame = query_frame(res, pool)
    assert frame["id"].tolist() == [pool.ids[i] for i in res.indices]
    assert set(frame["predicted"]) <= set(budget.label_names)
    # a plain list of texts works the same
    assert query(model, list(pool.texts), 5, seed=0).indices.tolist() == \
        select("hybrid", probs, features, 5).indices.tolist()
