"""The training data as the trainer feeds it: token ids, the growing labeled set, the pool, loaders.

A loader's order depends only on (seed, epoch, round), so a resumed run replays the same batches.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .sampling import length_grouped_batches


class TokenizedSet(torch.utils.data.Dataset):
    """Token ids with their global example index, and labels / weights where known."""

    def __init__(self, ids: list[list[int]], idx: np.ndarray, labels: np.ndarray | None,
                 weights: np.ndarray | None = None):
        self.ids, self.idx, self.labels, self.weights = ids, idx, labels, weights

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        item = {"ids": self.ids[i], "idx": int(self.idx[i])}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        if self.weights is not None:
            item["weight"] = float(self.weights[i])
        return item


class TrainingSet(TokenizedSet):
    """The labeled examples a method trains on; pseudo-labeled pool rows are appended to it."""

    def __init__(self, ids, idx, labels):
        super().__init__(list(ids), np.asarray(idx), np.asarray(labels), np.ones(len(ids), dtype=np.float32))

    def extend(self, ids, idx, labels, weights) -> None:
        self.ids = self.ids + list(ids)
        self.idx = np.concatenate([self.idx, idx])
        self.labels = np.concatenate([self.labels, labels])
        self.weights = np.concatenate([self.weights, np.asarray(weights, dtype=np.float32)])


class Pool:
    """The unlabeled examples still in the pool: texts, token ids, global idx, ids, hidden gold."""

    def __init__(self, texts, ids, idx, user_ids, gold):
        self.texts, self.tok, self.idx = list(texts), list(ids), np.asarray(idx)
        self.user_ids, self.gold = list(user_ids), np.asarray(gold)

    def __len__(self) -> int:
        return len(self.texts)

    def view(self) -> TokenizedSet:
        """The pool as an unlabeled training set."""
        return TokenizedSet(self.tok, self.idx, None)

    def take(self, rows: np.ndarray) -> dict:
        """Remove ``rows`` (positions) from the pool and return what they held."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {"texts": [self.texts[r] for r in rows], "tok": [self.tok[r] for r in rows],
               "idx": self.idx[rows], "ids": [self.user_ids[r] for r in rows], "gold": self.gold[rows]}
        keep = np.setdiff1d(np.arange(len(self.texts)), rows)
        self.texts = [self.texts[r] for r in keep]
        self.tok = [self.tok[r] for r in keep]
        self.user_ids = [self.user_ids[r] for r in keep]
        self.idx, self.gold = self.idx[keep], self.gold[keep]
        return out

    def positions_of(self, global_idx) -> np.ndarray:
        where = {int(g): p for p, g in enumerate(self.idx)}
        return np.array([where[int(g)] for g in global_idx], dtype=np.int64)


def collate_fn(model) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Items of a :class:`TokenizedSet` -> a padded batch (the model's own padding side)."""
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        batch = model.collate([it["ids"] for it in items])
        batch["idx"] = torch.tensor([it["idx"] for it in items], dtype=torch.long)
        if "label" in items[0]:
            batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        if "weight" in items[0]:
            batch["weights"] = torch.tensor([it["weight"] for it in items], dtype=torch.float32)
        return batch

    return collate


class FixedBatches(torch.utils.data.Sampler):
    """A batch sampler over precomputed batches (lists of positions), e.g. P classes x K examples."""

    def __init__(self, batches: list[list[int]]):
        # batch_size None: accelerate then deals whole (possibly uneven) batches to processes
        self.batches, self.batch_size, self.drop_last = [list(map(int, b)) for b in batches], None, False

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epoch_loader(dataset: TokenizedSet, batch_size: int, seed: int, epoch: int, collate, batches=None,
                 group_by_length: int = 0) -> torch.utils.data.DataLoader:
    """A loader whose order depends only on (seed, epoch): resuming replays the same order.

    ``batches(labels, batch_size, rng)`` (a method's :meth:`~sslkit.methods.base.Method.labeled_batches`)
    may return the batches itself; else ``group_by_length > 1`` makes batches of similar lengths
    (:func:`sslkit.sampling.length_grouped_batches`: less padding), and 0 or 1 means a plain shuffle."""
    rng = np.random.default_rng([seed, epoch])
    order = batches(dataset.labels, batch_size, rng) if batches is not None else None
    if order is None and group_by_length > 1:
        order = length_grouped_batches([len(x) for x in dataset.ids], batch_size, group_by_length, rng)
    if order is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=FixedBatches(order), collate_fn=collate)
    perm = rng.permutation(len(dataset)).tolist()
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=perm, collate_fn=collate)


def stream(make_loader: Callable[[int], torch.utils.data.DataLoader], steps: int | None = None) -> Iterator[dict]:
    """Exactly ``steps`` batches (endless if None), re-shuffling (round r) whenever the data is
    exhausted."""
    round_, done = 0, 0
    while steps is None or done < steps:
        yielded = False
        for batch in make_loader(round_):
            yielded = True
            yield batch
            done += 1
            if steps is not None and done >= steps:
                return
        if not yielded:
            raise RuntimeError("a training loader yielded no batch (empty data, or batches all dropped)")
        round_ += 1
