"""FixMatch for text (Sohn et al. 2020): pseudo-labels from the text as is, the loss on a noised copy.

Per step, with B labeled and mu * B unlabeled texts u_i:

    q_i = softmax f(u_i)                  (weak view: the text as is, no dropout, no gradient)
    y_i = the threshold rule's label of q_i, or none (-1)
    L   = CE(f(x_l), y) + weight * 1/(mu B) * sum_i [y_i >= 0] CE(f(A(u_i)), y_i)

where A is the strong view: token deletion / swap / [MASK] replacement at rate ``strong_noise``
(:func:`sslkit.augment.token_noise`), the text counterpart of FixMatch's RandAugment. The threshold
is any rule of :mod:`sslkit.thresholds`: the adaptive rule with its margin (default; FreeMatch-style
self-adaptive thresholds, Wang et al. 2023), a fixed confidence (FixMatch's own), or FreeMatch's
start. On one process, texts without a label are left out of the strong pass (their term is 0), so
only the texts that count are forwarded.

``ema_decay``: also keep an exponential moving average of the trainable weights (FixMatch's
evaluation model): theta' <- d theta' + (1 - d) theta, with d = min(1 - 1/(step + 1), ``ema_decay``)
so the average starts as a plain mean; the trainer scores both on dev after each epoch and tests
the better (:meth:`FixMatch.eval_states`). None: no average. ``ema_teacher``: the average, not the
model, labels the pool (the weak view and the rounds), as in mean-teacher pseudo-labelling: its
predictions lag the model's by about 1/(1 - d) steps and are steadier (left at None: the model).

``warmup_epochs``: epochs of the supervised loss alone before the unlabeled term starts (the
model's first predictions are poor pseudo-labels for a fixed threshold). ``top_k``: after each
epoch, also move that share of each class's accepted pool texts into the labeled set, as
:class:`~sslkit.methods.self_training.SelfTraining` does (None: no rounds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..augment import model_token_noise
from ..consistency_math import ema_decay as ema_schedule, ema_update_
from ..thresholds import AdaptiveThreshold
from .base import Method, take_rows
from .self_training import observe, pseudo_label_round, setup_threshold, weak_probs


@dataclass
class FixMatch(Method):
    threshold: AdaptiveThreshold = field(default_factory=AdaptiveThreshold)
    mu: int = 3                   # unlabeled texts per labeled one in a step
    strong_noise: float = 0.2     # token-noise rate of the strong view
    weight: float = 1.0           # lambda_u
    warmup_epochs: int = 0        # supervised-only epochs before the unlabeled term
    top_k: float | None = None    # pseudo-label rounds after each epoch (None: none)
    ema_decay: float | None = None  # an averaged copy of the weights, scored beside them (None: none)
    ema_teacher: bool | None = None  # the average labels the pool (needs ema_decay; None: the model does)

    name = "fixmatch"
    uses_unlabeled = True

    def setup(self, ctx) -> None:
        if self.ema_teacher and self.ema_decay is None:
            raise ValueError("FixMatch(ema_teacher=True) needs ema_decay: the teacher is the average")
        setup_threshold(ctx, self.threshold)
        self.average = None if self.ema_decay is None else ctx.unwrapped_model.trainable_state_dict()

    def after_step(self, ctx) -> None:
        if self.average is not None:
            decay = ema_schedule(ctx.step, self.ema_decay, self.ema_decay, rampup_steps=ctx.total_steps)
            ema_update_(self.average, ctx.unwrapped_model.named_parameters(), decay)

    def eval_states(self, ctx) -> dict[str, dict[str, torch.Tensor]]:
        return {} if self.average is None else {"ema": {n: t.clone() for n, t in self.average.items()}}

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        unl = batch["unlabeled"]
        if unl is None or ctx.epoch <= self.warmup_epochs:
            return self.supervised_step(batch, ctx)
        with self.teacher(ctx):  # before any pass with gradient: the teacher's swap writes weights in place
            probs = weak_probs(ctx, unl)
        out = self.supervised_step(batch, ctx)
        if self.threshold.adapts:
            observe(ctx, self.threshold, probs)
        labels, weights = self.targets(probs)
        unsup = self.strong_view_loss(ctx, unl, labels, weights)
        share = (labels >= 0).float() if weights is None else weights
        return {**out, "loss": out["loss"] + self.weight * unsup, "unsup": unsup.detach(),
                "mask_rate": share.mean()}

    def targets(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pseudo-labels [n], -1 where none; per-text weights [n] or None) from weak probabilities:
        here the threshold rule's labels, each weighing 1."""
        return self.threshold.pseudo_labels(probs)[0], None

    def strong_view_loss(self, ctx, unl: dict, labels: torch.Tensor, weights: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """1/n sum_i w_i [y_i >= 0] CE(f(A(u_i)), y_i) over the n unlabeled rows (w_i = 1 unless
        ``weights`` [n] are given). Several processes keep every row in the pass (DDP takes the same
        graph on each), masked instead."""
        rows = labels >= 0 if ctx.accelerator.num_processes == 1 else torch.ones_like(labels, dtype=torch.bool)
        part = take_rows(unl, rows)
        if part is None:
            return labels.new_zeros((), dtype=torch.float32)
        ids, mask = model_token_noise(ctx.unwrapped_model, part["input_ids"], part["attention_mask"],
                                      self.strong_noise)
        logits = ctx.model(input_ids=ids, attention_mask=mask)
        kept = labels[rows]
        per = F.cross_entropy(logits.float(), kept.clamp(min=0), reduction="none") * (kept >= 0).float()
        if weights is not None:
            per = per * weights[rows].to(per.dtype)
        return per.sum() / labels.shape[0]

    def teacher(self, ctx):
        """A block within which the model holds the weights that label the pool: the average when
        ``ema_teacher``, else its own (then nothing is swapped)."""
        return ctx.unwrapped_model.holding(self.average if self.ema_teacher else None)

    def after_epoch(self, ctx) -> dict:
        if self.top_k is None:
            return {}
        with self.teacher(ctx):
            return pseudo_label_round(ctx, self.threshold, self.top_k)

    def state_dict(self) -> dict:
        out = {"threshold": self.threshold.state_dict()}
        if self.average is not None:
            out["average"] = {n: t.clone() for n, t in self.average.items()}
        return out

    def load_state_dict(self, state: dict) -> None:
        self.threshold.load_state_dict(state["threshold"])
        if "average" in state:
            self.average = {n: t.clone() for n, t in state["average"].items()}
