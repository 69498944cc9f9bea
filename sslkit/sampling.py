"""Batch samplers as pure functions: positions in, lists of positions out (testable without a model).

:func:`pk_batches` builds "P classes x K examples" batches for supervised contrastive losses, which
need at least one positive (another example of the anchor's class) in the batch: with a plain
shuffle of banking77 at 10% labels (77 classes, ~12 labels each) a batch of 32 holds a same-class
pair for only a few anchors, so most anchors would contribute nothing.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _chunk_sizes(n: int, k: int, cap: int) -> list[int]:
    """Split n examples of one class into ceil(n / k) groups, as even as possible (so at most k
    each). Where that would leave a group of one (only k = 2 with n odd), the last three form one
    group instead -- unless a batch (``cap``) cannot hold three."""
    if n <= 0:
        return []
    groups = math.ceil(n / k)
    if k >= 2 and n >= 2 and n // groups < 2 and cap >= 3:
        groups = n // 2
    base, extra = divmod(n, groups)
    return [base + 1] * extra + [base] * (groups - extra)


def pk_batches(
    labels: Sequence[int] | np.ndarray,
    batch_size: int,
    k: int = 4,
    rng: np.random.Generator | int | None = None,
) -> list[list[int]]:
    """One pass over the examples in batches of P classes x K examples.

    Each class's positions are shuffled and cut into ceil(n_c / k) groups of at most ``k``, sizes
    as even as possible (n_c = 5, k = 4 gives 3 + 2): a class with n_c >= 2 never leaves a group of
    one (k = 2, n_c odd: one group of 3). A class with a single example is a group of one -- it
    still appears, paired with nothing, and the loss must cope.
    The groups are shuffled, then each batch takes, in that order, the groups that still fit and
    bring a class the batch does not hold yet, then any group that fits, then fills the room left
    by splitting groups so that no example is alone with its class (two parts of >= 2, or a part
    joining its class already in the batch) and, failing that, by splitting anyway. So every batch
    but the last of a pass holds exactly ``batch_size`` examples -- ceil(n / batch_size) batches,
    one pass per "epoch" of the trainer -- with about P = batch_size / k distinct classes x
    K = k examples, and a lone example of a class with several is rare. Every position appears
    exactly once per pass. Labels < 0 (none) are groups of one. Deterministic given ``rng`` (a Generator or a seed).

    Returns a list of batches, each a list of Python ints (positions into ``labels``).
    """
    labels = np.asarray(labels).reshape(-1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    k = min(k, batch_size)
    groups: list[tuple[int, list[int]]] = []  # (class, positions)
    known = labels >= 0
    for c in np.unique(labels[known]):
        pos = rng.permutation(np.flatnonzero(labels == c)).tolist()
        start = 0
        for size in _chunk_sizes(len(pos), k, batch_size):
            groups.append((int(c), pos[start:start + size]))
            start += size
    groups.extend((-1 - i, [int(p)]) for i, p in enumerate(np.flatnonzero(~known)))
    pending = [groups[g] for g in rng.permutation(len(groups))]
    batches: list[list[int]] = []
    while pending:
        batch: list[int] = []
        classes: set[int] = set()
        # 1) whole groups, in order, that fit and bring a class not yet in the batch (P classes);
        # 2) whole groups that fit; 3) fill the rest by splitting groups (see _take)
        for step in ("distinct", "whole", "split", "any"):
            rest = []
            for c, group in pending:
                room = batch_size - len(batch)
                take = _take(len(group), room, c in classes, step)
                if take:
                    batch.extend(group[:take])
                    classes.add(c)
                    group = group[take:]
                if group:
                    rest.append((c, group))
            pending = rest
            if len(batch) == batch_size or not pending:
                break
        batches.append([int(p) for p in batch])
    return batches


def _take(size: int, room: int, class_in_batch: bool, step: str) -> int:
    """How many examples of a group of ``size`` go into a batch with ``room`` left (0: none).

    "distinct": the whole group if it fits and its class is new; "whole": the whole group if it
    fits; "split": as many as fit such that neither part is a lone example of its class (the part
    taken has >= 2 or joins its class already in the batch; the part left is 0 or >= 2);
    "any": as many as fit (a last resort, so that only the last batch of a pass is short)."""
    if room <= 0:
        return 0
    if step == "distinct":
        return size if size <= room and not class_in_batch else 0
    if step == "whole":
        return size if size <= room else 0
    if step == "split":
        for t in range(min(size, room), 0, -1):
            if (t >= 2 or class_in_batch) and (size - t == 0 or size - t >= 2):
                return t
        return 0
    return min(size, room)


def length_grouped_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    group: int = 16,
    rng: np.random.Generator | int | None = None,
) -> list[list[int]]:
    """One shuffled pass in batches of texts of similar length (less padding, same examples).

    The positions are shuffled, cut into "mega-batches" of ``group * batch_size``, each mega-batch
    is sorted by length (ties keep the shuffled order) and cut into batches of ``batch_size``, and
    the batches of all mega-batches are shuffled together -- the scheme of Hugging Face's
    ``LengthGroupedSampler``, with the batch order shuffled rather than longest first, so an epoch
    is no long-to-short curriculum. Padding is to the longest text of a batch, so a batch of
    similar lengths costs its real tokens: on banking77 (MiniLM tokens: median 13, max 64) a random
    batch of 32 is 32% real tokens, a grouped one (group 16) 89%, and a training step ~3x cheaper.
    ``group <= 1`` is a plain shuffle. Every position appears exactly once; at most one batch per
    mega-batch is short. Deterministic given ``rng`` (a Generator or a seed).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    lengths = np.asarray(lengths)
    perm = rng.permutation(len(lengths))
    if group <= 1:
        return [perm[s:s + batch_size].tolist() for s in range(0, len(perm), batch_size)]
    mega = group * batch_size
    batches: list[list[int]] = []
    for s in range(0, len(perm), mega):
        chunk = perm[s:s + mega]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[t:t + batch_size].tolist() for t in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
