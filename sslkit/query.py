"""Active-learning queries: which unlabeled texts a person labels next.

A labeling budget buys the most where the model is unsure, but uncertainty alone spends it badly:
the least confident texts of a pool tend to be near-duplicates from one confusable pair of
classes, so a batch of them teaches the model one thing many times (the sampling bias of batch
uncertainty sampling). Diversity alone (cover the embedding space) ignores what the model already
knows. The strategies here, one scoring pass of the model over the pool away, are:

* uncertainty, with ``probs = softmax(logits)`` of shape [N, C] and scores where higher means more
  worth labeling: :func:`least_confidence`, :func:`margin`, :func:`entropy`;
* diversity on L2-normalised embeddings [N, D] with cosine distance ``d(a, b) = 1 - a.b``:
  :func:`kmeans_pp` (k-means++ seeding) and :func:`greedy_coreset` (farthest-first traversal from
  the labeled set). Both keep one array of each item's distance to its nearest chosen item and
  update it per pick, O(n N D) time and O(N) extra memory -- never an N x N matrix;
* :func:`hybrid`: uncertain, diverse and balanced over predicted classes (after Cluster-Margin);
* :func:`random_order`, the reference every strategy has to beat.

:func:`select` runs a strategy by name (:data:`STRATEGIES`) on arrays; :func:`query` scores a pool
with a model first (:func:`sslkit.backbones.embed`, the batched merged-LoRA inference path) and
:func:`query_frame` lays a result out as a table for a notebook.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .data import TextDataset

#: How many of the most uncertain pool items :func:`hybrid` chooses among, per requested item.
CANDIDATE_FACTOR = 10
#: Labeled embeddings per block when measuring the pool's distance to the labeled set.
_BLOCK = 512


@dataclass
class QueryResult:
    """The chosen pool positions, in the order chosen, and each one's score under ``strategy``.

    ``scores``: the uncertainty for uncertainty strategies (and -margin for ``hybrid``); for
    diversity strategies the cosine distance to the nearest item already chosen or labeled when it
    was picked (``inf`` for a first pick with nothing to measure against); 0 for ``random``.
    ``probs`` holds the pool's predicted probabilities when :func:`query` computed them."""

    indices: np.ndarray
    scores: np.ndarray
    strategy: str
    probs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------- uncertainty scores
def _probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got {p.shape}")
    return p


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """s_i = 1 - max_c p_ic (least-confidence sampling, Lewis & Gale 1994)."""
    p = _probs(probs)
    return 1.0 - p.max(axis=1) if p.shape[1] else np.zeros(len(p))


def _top2_gap(p: np.ndarray) -> np.ndarray:
    """p_(1) - p_(2), the gap between the two largest probabilities of each row (p_(2) = 0 if C = 1)."""
    if p.shape[1] < 2:
        return p.max(axis=1) if p.shape[1] else np.zeros(len(p))
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def margin(probs: np.ndarray) -> np.ndarray:
    """s_i = -(p_i(1) - p_i(2)), the negated gap between the two most probable classes ("breaking
    ties", Scheffer et al. 2001): the smallest margins score highest."""
    return -_top2_gap(_probs(probs))


def entropy(probs: np.ndarray) -> np.ndarray:
    """s_i = -sum_c p_ic log p_ic (Shannon 1948; 0 log 0 = 0), in nats."""
    p = _probs(probs)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)


def _top(scores: np.ndarray, n: int, strategy: str) -> QueryResult:
    """The n highest scores, ties to the lower position."""
    order = np.argsort(-scores, kind="stable")[:n]
    return QueryResult(order.astype(np.int64), scores[order].astype(np.float64), strategy)


# ---------------------------------------------------------------------- diversity
def _normalise(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape [N, D], got {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _distance_to_set(x: np.ndarray, others: np.ndarray | None) -> np.ndarray:
    """min_j (1 - x_i . o_j) for each row of x (inf without ``others``), in blocks of ``others``."""
    dist = np.full(len(x), np.inf, dtype=np.float32)
    if others is None or len(others) == 0:
        return dist
    o = _normalise(others)
    if o.shape[1] != x.shape[1]:
        raise ValueError(f"labeled embeddings have {o.shape[1]} dimensions, the pool {x.shape[1]}")
    for start in range(0, len(o), _BLOCK):
        np.minimum(dist, (1.0 - o[start:start + _BLOCK] @ x.T).min(axis=0), out=dist)
    return dist


Chooser = Callable[[np.ndarray, np.ndarray], int]


def _traverse(x: np.ndarray, n: int, dist: np.ndarray, choose: Chooser, first: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Pick n rows of normalised ``x`` one at a time: ``first`` (if given), then ``choose(dist,
    available)``; after each pick, dist_i <- min(dist_i, 1 - x_i . x_pick). Returns the picks and
    each one's distance to the nearest earlier pick (or start set) when it was picked."""
    dist = dist.copy()
    available = np.ones(len(x), dtype=bool)
    picks, scores = [], []
    for step in range(min(n, len(x))):
        i = first if (step == 0 and first is not None) else choose(dist, available)
        picks.append(i)
        scores.append(float(dist[i]))
        available[i] = False
        np.minimum(dist, 1.0 - x @ x[i], out=dist)
    return np.asarray(picks, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def _farthest(dist: np.ndarray, available: np.ndarray) -> int:
    return int(np.where(available, dist, -np.inf).argmax())


def kmeans_pp(embeddings: np.ndarray, n: int, rng: np.random.Generator | int | None = None) -> QueryResult:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on L2-normalised embeddings: the first item
    uniformly at random, then each next item i with probability D(i)^2 / sum_j D(j)^2, where D(i) is
    the cosine distance from i to its nearest chosen item (uniform over the rest if all D are 0)."""
    x = _normalise(embeddings)
    rng = np.random.default_rng(rng)

    def d2_sample(dist: np.ndarray, available: np.ndarray) -> int:
        w = np.where(available, np.square(np.maximum(dist, 0.0), dtype=np.float64), 0.0)
        if not w.sum() > 0:
            w = available.astype(np.float64)
        cumulative = np.cumsum(w)
        return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))

    if len(x) == 0 or n < 1:
        return QueryResult(np.zeros(0, np.int64), np.zeros(0), "kmeans_pp")
    first = int(rng.integers(len(x)))
    picks, scores = _traverse(x, n, _distance_to_set(x, None), d2_sample, first)
    return QueryResult(picks, scores, "kmeans_pp")


def greedy_coreset(embeddings: np.ndarray, n: int, labeled_embeddings: np.ndarray | None = None
                   ) -> QueryResult:
    """Greedy k-center core-set (Sener & Savarese 2018): repeatedly pick the pool item farthest
    from everything labeled or chosen, argmax_i min_j (1 - x_i . x_j) on L2-normalised embeddings
    (farthest-first traversal, a 2-approximation of the k-center cover). Without a labeled set the
    traversal starts at the most central item, argmax_i x_i . mean(x). Deterministic."""
    x = _normalise(embeddings)
    dist = _distance_to_set(x, labeled_embeddings)
    first = None
    if len(x) and not np.isfinite(dist).any():
        first = int(np.argmax(x @ x.mean(axis=0)))
    picks, scores = _traverse(x, n, dist, _farthest, first)
    return QueryResult(picks, scores, "coreset")


# ---------------------------------------------------------------------- hybrid
def _round_robin_quotas(sizes: Sequence[int], n: int) -> list[int]:
    """Deal n picks one at a time over groups in order, skipping a group once it has no items left
    (so a small group's leftover quota goes to the others)."""
    quotas, left = [0] * len(sizes), n
    while left > 0:
        dealt = 0
        for j, size in enumerate(sizes):
            if left > 0 and quotas[j] < size:
                quotas[j] += 1
                left -= 1
                dealt += 1
        if not dealt:
            break
    return quotas


def _interleave(groups: Sequence[np.ndarray]) -> np.ndarray:
    """The first item of each group in order, then the second of each, and so on."""
    rounds = max((len(g) for g in groups), default=0)
    return np.asarray([g[r] for r in range(rounds) for g in groups if r < len(g)], dtype=np.int64)


def hybrid(probs: np.ndarray, embeddings: np.ndarray, n: int, candidate_factor: int = CANDIDATE_FACTOR
           ) -> QueryResult:
    """Uncertain, diverse and class-balanced (in the spirit of Cluster-Margin, Citovsky et al. 2021).

    1. Candidates: the min(N, candidate_factor * n) items with the smallest margin p_(1) - p_(2).
    2. Group them by predicted class argmax_c p_ic; classes ordered by their most uncertain candidate.
    3. Deal the n picks round-robin over those classes; a class out of candidates drops out, so its
       leftover quota goes to the others.
    4. Within a class, farthest-first on L2-normalised embeddings (cosine distance) starting from its
       most uncertain candidate.

    The picks come interleaved across classes (each class's first pick, then each one's second...);
    each one's score is its margin score -(p_(1) - p_(2)). Deterministic."""
    p, x = _probs(probs), _normalise(embeddings)
    if len(p) != len(x):
        raise ValueError(f"probs has {len(p)} rows, embeddings {len(x)}")
    if candidate_factor < 1:
        raise ValueError("candidate_factor must be >= 1")
    gap = _top2_gap(p)
    candidates = np.argsort(gap, kind="stable")[:min(len(p), candidate_factor * n)]
    predicted = p.argmax(axis=1) if p.shape[1] else np.zeros(len(p), dtype=np.int64)
    by_class: dict[int, list[int]] = {}
    for i in candidates:  # most uncertain first, so dict order = classes by most uncertain candidate
        by_class.setdefault(int(predicted[i]), []).append(int(i))
    groups = [np.asarray(g, dtype=np.int64) for g in by_class.values()]
    quotas = _round_robin_quotas([len(g) for g in groups], n)
    chosen = []
    for g, quota in zip(groups, quotas):
        local, _ = _traverse(x[g], quota, _distance_to_set(x[g], None), _farthest, first=0)
        chosen.append(g[local])
    indices = _interleave(chosen)
    return QueryResult(indices, -gap[indices], "hybrid")


# ---------------------------------------------------------------------- random, registry, select
def random_order(num_items: int, n: int, rng: np.random.Generator | int | None = None) -> QueryResult:
    """The first min(n, N) positions of a random permutation of the pool (scores 0): the reference."""
    order = np.random.default_rng(rng).permutation(num_items)[:n].astype(np.int64)
    return QueryResult(order, np.zeros(len(order)), "random")


class Strategy(NamedTuple):
    """A registered strategy: what it reads ("probs", "embeddings") and how it picks."""

    name: str
    needs: tuple[str, ...]
    summary: str
    #: (probs, embeddings, n, rng, labeled_embeddings) -> QueryResult
    run: Callable[..., QueryResult]


_STRATEGY_LIST = [
    Strategy("random", (), "a random permutation (the reference)",
             lambda p, e, n, rng, lab: random_order(len(p) if p is not None else len(e), n, rng)),
    Strategy("least_confidence", ("probs",), "1 - max_c p",
             lambda p, e, n, rng, lab: _top(least_confidence(p), n, "least_confidence")),
    Strategy("margin", ("probs",), "smallest top-1 minus top-2 probability",
             lambda p, e, n, rng, lab: _top(margin(p), n, "margin")),
    Strategy("entropy", ("probs",), "-sum_c p log p",
             lambda p, e, n, rng, lab: _top(entropy(p), n, "entropy")),
    Strategy("kmeans_pp", ("embeddings",), "k-means++ seeding (D^2 sampling) on the embeddings",
             lambda p, e, n, rng, lab: kmeans_pp(e, n, rng)),
    Strategy("coreset", ("embeddings",), "farthest-first from the labeled set (greedy k-center)",
             lambda p, e, n, rng, lab: greedy_coreset(e, n, lab)),
    Strategy("hybrid", ("probs", "embeddings"), "smallest margins, balanced over predicted classes, diverse",
             lambda p, e, n, rng, lab: hybrid(p, e, n)),
]
#: Every strategy :func:`select` knows, by name.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _STRATEGY_LIST}


def _pool_size(probs: np.ndarray | None, embeddings: np.ndarray | None) -> int:
    sizes = {len(a) for a in (probs, embeddings) if a is not None}
    if len(sizes) > 1:
        raise ValueError(f"probs and embeddings have different numbers of rows: {sorted(sizes)}")
    if not sizes:
        raise ValueError("select() needs probs or embeddings")
    return sizes.pop()


def select(strategy: str, probs: np.ndarray | None, embeddings: np.ndarray | None, n: int, seed: int = 0,
           labeled_embeddings: np.ndarray | None = None) -> QueryResult:
    """Choose min(n, N) pool positions with the strategy named ``strategy`` (see :data:`STRATEGIES`).

    ``probs`` [N, C] and ``embeddings`` [N, D] describe the pool (either may be None when the
    strategy does not read it); ``labeled_embeddings`` is the core-set's starting set. Deterministic
    for a given ``seed``. With n > N every item comes back; comparing ``len(result)`` to n tells."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}")
    spec = STRATEGIES[strategy]
    given = {"probs": probs, "embeddings": embeddings}
    missing = [k for k in spec.needs if given[k] is None]
    if missing:
        raise ValueError(f"strategy {strategy!r} needs {' and '.join(missing)}")
    pool = _pool_size(probs, embeddings)
    return spec.run(probs, embeddings, min(int(n), pool), np.random.default_rng(seed), labeled_embeddings)


# ---------------------------------------------------------------------- with a model
def _texts(data: Sequence[str] | TextDataset) -> list[str]:
    return list(data.texts) if isinstance(data, TextDataset) else list(data)


def query(model, pool: Sequence[str] | TextDataset, n: int, strategy: str = "hybrid", seed: int = 0,
          labeled: Sequence[str] | TextDataset | None = None, batch_size: int = 128) -> QueryResult:
    """Score ``pool`` with ``model`` and choose the n texts to label next with ``strategy``.

    One pass of :func:`sslkit.backbones.embed` (``return_logits=True``) gives the pooled embeddings
    and logits, probs = softmax(logits); ``labeled`` texts are embedded too when the strategy starts
    from the labeled set (``coreset``). The result keeps the pool's probs for :func:`query_frame`."""
    from scipy.special import softmax

    from .backbones import embed

    texts = _texts(pool)
    if not texts:
        raise ValueError("the pool is empty")
    features, logits = embed(model, texts, batch_size=batch_size, return_logits=True)
    probs = softmax(logits.astype(np.float64), axis=1)
    labeled_features = None
    if labeled is not None and strategy == "coreset" and len(_texts(labeled)):
        labeled_features = embed(model, _texts(labeled), batch_size=batch_size)
    result = select(strategy, probs, features, n, seed=seed, labeled_embeddings=labeled_features)
    result.probs = probs
    return result


def query_frame(result: QueryResult, pool: Sequence[str] | TextDataset, probs: np.ndarray | None = None,
                label_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The chosen texts as a table: rank (1..n), idx (pool position), text, score, predicted (a
    label name when names are known, else the class number) and confidence (max_c p), the last two
    from ``probs`` or ``result.probs`` (None without either). A TextDataset pool adds its ``id``
    column and supplies ``label_names`` when none are given."""
    probs = result.probs if probs is None else np.asarray(probs)
    if label_names is None and isinstance(pool, TextDataset) and pool.label_names:
        label_names = pool.label_names
    texts, idx = _texts(pool), np.asarray(result.indices, dtype=np.int64)
    frame = pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "idx": idx, "text": [texts[i] for i in idx],
                          "score": np.asarray(result.scores, dtype=np.float64)})
    if isinstance(pool, TextDataset):
        frame.insert(2, "id", [pool.ids[i] for i in idx])
    if probs is None:
        frame["predicted"], frame["confidence"] = None, None
        return frame
    chosen = np.asarray(probs)[idx]
    classes = chosen.argmax(axis=1)
    frame["predicted"] = [label_names[c] for c in classes] if label_names is not None else classes
    frame["confidence"] = chosen.max(axis=1)
    return frame
