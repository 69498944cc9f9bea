"""Self-training with adaptive thresholds: thresholds follow the model per step, pseudo-label rounds per epoch.

Per step, the thresholds (any rule of :mod:`sslkit.thresholds`; the adaptive one by default) are
updated from the model's predictions on the unlabeled part of the batch, read from the text as is
(a pass without dropout: :func:`weak_probs`). The loss is the supervised one.

After each epoch (a round): the whole remaining pool is scored in batches; the examples the rule
accepts are grouped by pseudo-label, and the ``top_k`` fraction of each class by confidence (at
least one per class with candidates) moves into the labeled set (:func:`pseudo_label_round`).
:class:`Retrain` is the optional second stage: a fresh model on human + pseudo-labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import Budget
from ..thresholds import AdaptiveThreshold, class_balanced_top_k
from .base import Method, clean_logits
from .supervised import Supervised


def weak_probs(ctx, part: dict) -> torch.Tensor:
    """softmax of the model on a batch part as it is: no dropout, no gradient, LoRA folded in
    (FixMatch's weak view, and the predictions a threshold rule learns from)."""
    logits = clean_logits(ctx.unwrapped_model, part["input_ids"], part["attention_mask"])
    return torch.softmax(logits.float(), dim=-1)


def setup_threshold(ctx, threshold: AdaptiveThreshold) -> None:
    """Size ``threshold`` for the run's classes; with several processes its batch statistics are
    averaged across them, so every process holds the same thresholds."""
    acc = ctx.accelerator
    reduce = (lambda t: acc.reduce(t, reduction="mean")) if acc.num_processes > 1 else None
    threshold.setup(ctx.num_classes, reduce)


def observe(ctx, threshold: AdaptiveThreshold, probs: torch.Tensor) -> None:
    """One update of the rule from a batch of probabilities, logged (tau) and traced (every tau_c)."""
    threshold.update(probs)
    ctx.log("tau", float(threshold.tau))
    ctx.trace({"tau": float(threshold.tau), "tau_c": [round(float(x), 6) for x in threshold.tau_c]})


def pseudo_label_round(ctx, threshold: AdaptiveThreshold, top_k: float, weight_by_confidence: bool = False
                       ) -> dict:
    """Score the pool, keep the class-balanced ``top_k`` of what ``threshold`` accepts and move it
    into the labeled set (weighted by confidence if asked). Returns the round's loggable stats."""
    if not ctx.pool_size:
        return {}
    probs = ctx.score_pool()
    labels, _ = threshold.pseudo_labels(probs)
    confidence = probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    keep = class_balanced_top_k(labels, confidence, top_k)
    candidates = torch.bincount(labels[labels >= 0], minlength=ctx.num_classes)
    weights = confidence[keep] if weight_by_confidence else None
    stats = ctx.pseudo.add(keep, labels[keep], confidence[keep], weights, candidates)
    return {f"round_{k}": v for k, v in stats.items() if k in ("candidates", "selected", "precision")}


@dataclass
class SelfTraining(Method):
    """L = CE(f(x_l), y) on human + pseudo-labels; thresholds per step, a round per epoch."""

    threshold: AdaptiveThreshold = field(default_factory=AdaptiveThreshold)
    top_k: float = 0.1                  # share of each pseudo-class's candidates moved per round
    weight_by_confidence: bool = False  # pseudo-labeled examples weigh their confidence in the loss
    rounds: int | None = None           # at most this many rounds (None: one after every epoch)

    name = "self_training"
    uses_unlabeled = True

    def setup(self, ctx) -> None:
        setup_threshold(ctx, self.threshold)
        self.rounds_done = 0

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        lab, unl = batch["labeled"], batch["unlabeled"]
        logits = ctx.model(input_ids=lab["input_ids"], attention_mask=lab["attention_mask"])
        sup = ctx.sup_loss(logits, lab["labels"], lab.get("weights") if self.weight_by_confidence else None)
        if unl is not None and self.threshold.adapts:
            observe(ctx, self.threshold, weak_probs(ctx, unl))
        return {"loss": sup, "sup": sup.detach()}

    def after_epoch(self, ctx) -> dict:
        if self.rounds is not None and self.rounds_done >= self.rounds:
            return {}
        self.rounds_done += 1
        return pseudo_label_round(ctx, self.threshold, self.top_k, self.weight_by_confidence)

    def state_dict(self) -> dict:
        return {"threshold": self.threshold.state_dict(), "rounds_done": self.rounds_done}

    def load_state_dict(self, state: dict) -> None:
        self.threshold.load_state_dict(state["threshold"])
        self.rounds_done = state["rounds_done"]


def grown_budget(budget: Budget, pseudo) -> Budget:
    """The budget after self-training: labeled = human labels + pseudo-labels (rows of a run's
    pseudo_labels.csv, matched by ``idx``), pool = the rest. Gold labels stay hidden in the pool."""
    import dataclasses

    import numpy as np

    names = {n: i for i, n in enumerate(budget.label_names)}
    idx = np.asarray(pseudo["idx"], dtype=np.int64)
    labels = np.asarray([names[str(x)] for x in pseudo["label"]], dtype=np.int64)
    pos = {int(g): p for p, g in enumerate(budget.unlabeled.idx)}
    missing = [int(i) for i in idx if int(i) not in pos]
    if missing:
        raise ValueError(f"pseudo-labels for examples not in the pool: idx {missing[:5]}")
    rows = np.array([pos[int(i)] for i in idx], dtype=np.int64)
    moved = budget.unlabeled.subset(rows)
    moved.labels = labels
    keep = np.setdiff1d(np.arange(len(budget.unlabeled)), rows)
    labeled = dataclasses.replace(
        budget.labeled, texts=budget.labeled.texts + moved.texts, ids=budget.labeled.ids + moved.ids,
        labels=np.concatenate([budget.labeled.labels, labels]), idx=np.concatenate([budget.labeled.idx, moved.idx]))
    return dataclasses.replace(budget, labeled=labeled, unlabeled=budget.unlabeled.subset(keep),
                               unlabeled_gold=budget.unlabeled_gold[keep])


@dataclass
class Retrain(Supervised):
    """Second stage of self-training: a fresh model (prototype head from the grown labeled set)
    trained with the supervised loss on human + pseudo-labels, one pass over the grown set per
    epoch. ``source_run`` names the run whose pseudo-labels it uses; ``min_confidence`` says which:
    None for that run's rounds (pseudo_labels.csv), a number for every pool text its final model
    labels with at least that confidence (:func:`sslkit.recipe.distillation_labels`)."""

    source_run: str = ""
    min_confidence: float | None = None

    name = "self_training_retrain"
