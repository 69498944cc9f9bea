"""SoftMatch for text (Chen et al. 2023): FixMatch's loss on every pool text, weighted by confidence.

Per step, with weak-view probabilities q_i of the mu * B unlabeled texts u_i:

    q~_i = normalize(q_i / p_model)                  (uniform alignment, :func:`~sslkit.thresholds.align_to_uniform`)
    y_i  = argmax q~_i,   p_i = max q~_i
    w_i  = 1 if p_i >= m else exp(-(p_i - m)^2 / (2 v / 4))        (:func:`~sslkit.thresholds.soft_weights`)
    L    = CE(f(x_l), y) + weight * 1/(mu B) * sum_i w_i CE(f(A(u_i)), y_i)

where p_model, m and v are running means (decay ``soft_ema``) of the mean prediction and of the
mean and variance of p_i (:class:`~sslkit.thresholds.SoftWeighting`). Where FixMatch drops a text
below its threshold, SoftMatch keeps it with a weight that falls off smoothly below the average
confidence: more texts teach, and a wrong pseudo-label near the boundary costs little. The paper's
decay 0.999 suits its 2^20 steps; a run here has a few hundred, hence 0.99.

Everything else is FixMatch's (:class:`~sslkit.methods.fixmatch.FixMatch`): the strong view, the
threshold rule (here it only picks the pseudo-label rounds' texts, ``top_k``) and the weight average.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..thresholds import SoftWeighting
from .fixmatch import FixMatch


@dataclass
class SoftMatch(FixMatch):
    soft_ema: float = 0.99   # decay of SoftMatch's running statistics

    name = "softmatch"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.weighting = SoftWeighting(ctx.num_classes, ema=self.soft_ema)
        acc = ctx.accelerator
        self.reduce = (lambda t: acc.reduce(t, reduction="mean")) if acc.num_processes > 1 else None

    def targets(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every text's aligned argmax, weighted by :class:`~sslkit.thresholds.SoftWeighting`."""
        return self.weighting(probs, self.reduce)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.weighting.load_state_dict(state["weighting"])
