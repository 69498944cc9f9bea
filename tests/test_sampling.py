"""Length-grouped batches: every example once per pass, less padding, seeded, and what fit() uses."""
from __future__ import annotations

import numpy as np
import pytest

from sslkit.sampling import length_grouped_batches
from sslkit.batches import TokenizedSet, epoch_loader
from sslkit.trainer import TrainConfig


def _padded_share(lengths: np.ndarray, batches: list[list[int]]) -> float:
    """Real tokens / tokens after padding each batch to its longest text."""
    return lengths.sum() / sum(len(b) * lengths[b].max() for b in batches)


@pytest.mark.parametrize("n,batch_size,group", [(1000, 32, 16), (97, 8, 4), (5, 32, 16), (64, 32, 1), (0, 4, 2)])
def test_every_position_once_and_batch_sizes(n, batch_size, group):
    lengths = np.random.default_rng(1).integers(3, 65, n)
    batches = length_grouped_batches(lengths, batch_size, group, rng=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    short = sum(len(b) < batch_size for b in batches)
    assert short <= max(1, -(-n // (batch_size * max(group, 1))))  # at most one short batch per mega-batch


def test_grouping_cuts_padding_and_keeps_batches_shuffled():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(2.6, 0.5, 4000).astype(int), 3, 64)  # skewed, as real texts
    plain = length_grouped_batches(lengths, 32, group=1, rng=0)
    grouped = length_grouped_batches(lengths, 32, group=16, rng=0)
    assert _padded_share(lengths, grouped) > _padded_share(lengths, plain) + 0.3
    # within a batch the lengths are close; the order of batches is no long-to-short curriculum
    spans = [lengths[b].max() - lengths[b].min() for b in grouped]
    assert np.median(spans) <= 2
    means = np.array([lengths[b].mean() for b in grouped])
    assert abs(np.corrcoef(np.arange(len(means)), means)[0, 1]) < 0.2


def test_seeded_and_different_per_seed():
    lengths = np.arange(300) % 40
    a = length_grouped_batches(lengths, 16, 4, rng=np.random.default_rng(3))
    b = length_grouped_batches(lengths, 16, 4, rng=np.random.default_rng(3))
    c = length_grouped_batches(lengths, 16, 4, rng=np.random.default_rng(4))
    assert a == b and a != c


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_batches([1, 2, 3], 0)


def _loader_batches(group: int, seed: int = 0, epoch: int = 1):
    ids = [[1] * (3 + (i * 7) % 50) for i in range(200)]
    ds = TokenizedSet(ids, np.arange(200) + 1000, None)

    def collate(items):
        return {"idx": [it["idx"] for it in items], "len": [len(it["ids"]) for it in items]}

    return list(epoch_loader(ds, 20, seed, epoch, collate, group_by_length=group))


def test_the_trainer_loader_groups_by_length_by_default_and_replays_its_order():
    assert TrainConfig().group_by_length > 1
    grouped, plain = _loader_batches(TrainConfig().group_by_length), _loader_batches(0)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b["idx"]) == list(range(1000, 1200))
    span = lambda bs: np.mean([max(b["len"]) - min(b["len"]) for b in bs])  # noqa: E731
    assert span(grouped) < span(plain) / 3
    assert _loader_batches(16) == _loader_batches(16)                  # resume replays the same order
    assert _loader_batches(16, epoch=2) != _loader_batches(16, epoch=1)  # a new order every epoch
