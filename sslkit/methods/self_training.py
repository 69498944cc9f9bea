"""Adaptive-threshold self-training (issue 3): thresholds per step, pseudo-label rounds per epoch.

Per step, on the unlabeled part of the batch, the thresholds follow the EMA rule of
:class:`sslkit.thresholds.AdaptiveThreshold`. Optionally (``unlabeled_weight > 0``) the step also
trains on the batch's own pseudo-labels (FreeMatch-style self-training term):
L = L_sup + w_u * mean_i [label_i >= 0] * c_i * CE(f(u_i), label_i), c_i = confidence if weighted.
With ``strong_noise > 0`` the pseudo-label comes from a no-gradient pass on the text as is and the
loss is taken on a token-noised copy (deletion / swap / mask at that rate): FixMatch's weak / strong
views (Sohn et al. 2020), with token noise as the strong augmentation; ``target_dropout=False``
takes the weak view's pass (labels and threshold statistics) in eval mode, LoRA folded in.

After each epoch from ``first_round`` on (a round): the whole pool is scored in batches; accepted
examples (margin rule) are grouped by pseudo-label, the top ``top_k`` fraction of each class by
confidence (at least one per class with candidates) moves into the labeled set.

Threshold variants: ``"adaptive"`` (the rule, tau0=0.8, ema=0.9 by default), ``"fixed"``
(tau_c = fixed_tau = 0.95, never updated), ``"freematch"`` (FreeMatch's start: tau0 = 1/C, ema = 0.999).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import model_token_noise
from ..thresholds import AdaptiveThreshold, FixedThreshold, class_balanced_top_k
from .base import Method, clean_logits, take_rows
from .supervised import Supervised


@dataclass
class SelfTraining(Method):
    tau0: float = 0.8
    ema: float = 0.9
    margin: float = 0.05
    top_k: float = 0.1
    threshold: str = "adaptive"        # "adaptive" | "fixed" | "freematch"
    fixed_tau: float = 0.95
    weight_by_confidence: bool = False  # pseudo-labeled examples weigh their confidence in the loss
    unlabeled_weight: float = 0.0       # per-step pseudo-label term on the unlabeled batch (0: rounds only)
    strong_noise: float = 0.0           # token-noise rate of the student's view in that term (0: same input)
    target_dropout: bool = True         # the weak view's pass (labels, thresholds) with dropout; False: eval mode
    first_round: int = 1                # the first epoch after which a round runs
    rounds: int | None = None           # at most this many rounds (None: every epoch from first_round)

    name = "self_training"
    uses_unlabeled = True

    def setup(self, ctx) -> None:
        C = ctx.num_classes
        acc = ctx.accelerator
        reduce = (lambda t: acc.reduce(t, reduction="mean")) if acc.num_processes > 1 else None
        if self.threshold == "adaptive":
            self.th = AdaptiveThreshold(C, tau0=self.tau0, ema=self.ema, reduce=reduce)
        elif self.threshold == "freematch":
            self.th = AdaptiveThreshold(C, tau0=1.0 / C, ema=0.999, reduce=reduce)
        elif self.threshold == "fixed":
            self.th = FixedThreshold(C, tau0=self.fixed_tau)
        else:
            raise ValueError(f"threshold must be 'adaptive', 'fixed' or 'freematch', got {self.threshold!r}")
        self.rounds_done = 0

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        lab, unl = batch["labeled"], batch["unlabeled"]
        logits = ctx.model(input_ids=lab["input_ids"], attention_mask=lab["attention_mask"])
        sup = ctx.sup_loss(logits, lab["labels"], lab.get("weights") if self.weight_by_confidence else None)
        out = {"sup": sup.detach()}
        total = sup
        # a fixed threshold learns nothing per step: without the per-step term the batch is not scored
        if unl is not None and (self.unlabeled_weight > 0 or self.threshold != "fixed"):
            ids, attn = unl["input_ids"], unl["attention_mask"]
            if self.unlabeled_weight > 0 and not self.strong_noise:  # one pass: labels and loss on the text
                u_logits = ctx.model(input_ids=ids, attention_mask=attn)
                probs = torch.softmax(u_logits.detach().float(), dim=-1)
            else:  # the thresholds (and the weak view's pseudo-labels) from the text as is
                if self.target_dropout:
                    with torch.no_grad():
                        logits_w = ctx.model(input_ids=ids, attention_mask=attn)
                else:  # no dropout, LoRA folded in: cheaper, and the labels of the model as it predicts
                    logits_w = clean_logits(ctx.unwrapped_model, ids, attn)
                probs = torch.softmax(logits_w.float(), dim=-1)
            self.th.update(probs)
            if self.unlabeled_weight > 0:
                labels, _ = self.th.pseudo_labels(probs, self.margin)
                mask = (labels >= 0).float()
                conf = probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
                w = mask * (conf if self.weight_by_confidence else 1.0)
                rows = torch.ones_like(labels, dtype=torch.bool)
                if self.strong_noise:  # the loss on the strong view: a token-noised copy
                    if ctx.accelerator.num_processes == 1:
                        # rows without a pseudo-label weigh 0: left out of the strong pass instead of forwarded
                        # and masked (FixMatch's mask before the forward; several processes keep the whole batch)
                        rows = labels >= 0
                    part = take_rows({"input_ids": ids, "attention_mask": attn}, rows)
                    if part is not None:
                        s_ids, s_attn = model_token_noise(ctx.unwrapped_model, part["input_ids"],
                                                          part["attention_mask"], self.strong_noise)
                        u_logits = ctx.model(input_ids=s_ids, attention_mask=s_attn)
                if rows.any():
                    per = F.cross_entropy(u_logits.float(), labels[rows].clamp(min=0), reduction="none") * w[rows]
                    unsup = per.sum() / labels.shape[0]  # the mean over the whole unlabeled batch
                else:
                    unsup = sup.new_zeros(())
                total = total + self.unlabeled_weight * unsup
                out["unsup"] = unsup.detach()
                out["mask_rate"] = mask.mean()
        ctx.log("tau", float(self.th.tau))
        ctx.trace({"tau": float(self.th.tau), "tau_c": [round(float(x), 6) for x in self.th.tau_c]})
        return {"loss": total, **out}

    def after_epoch(self, ctx) -> dict:
        if ctx.epoch < self.first_round or not ctx.pool_size:
            return {}
        if self.rounds is not None and self.rounds_done >= self.rounds:
            return {}
        probs = ctx.score_pool()
        labels, _ = self.th.pseudo_labels(probs, self.margin)
        confidence = probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
        keep = class_balanced_top_k(labels, confidence, self.top_k)
        candidates = torch.bincount(labels[labels >= 0], minlength=ctx.num_classes)
        weights = confidence[keep] if self.weight_by_confidence else None
        stats = ctx.add_pseudo_labels(keep, labels[keep], confidence[keep], weights, candidates)
        self.rounds_done += 1
        return {f"round_{k}": v for k, v in stats.items() if k in ("candidates", "selected", "precision")}

    def state_dict(self) -> dict:
        return {"th": self.th.state_dict(), "rounds_done": self.rounds_done}

    def load_state_dict(self, state: dict) -> None:
        self.th.load_state_dict(state["th"])
        self.rounds_done = state["rounds_done"]


def grown_budget(budget, pseudo) -> "Budget":  # noqa: F821 - sslkit.data.Budget
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
    epoch. ``source_run`` names the self-training run whose pseudo-labels it uses."""

    source_run: str = ""

    name = "self_training_retrain"
