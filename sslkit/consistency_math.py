"""The math of the consistency methods, as pure functions testable on random tensors.

* consistency losses between a student's logits and a (detached) target distribution;
* ramp-up schedules w(t) for the consistency weight (Laine & Aila 2017; Tarvainen & Valpola 2017);
* the temporal-ensemble target with start-up bias correction, Z / (1 - alpha^t);
* the mean-teacher EMA decay schedule and the in-place EMA update of a state dict.

The methods that use it live in :mod:`sslkit.methods`.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F

CONSISTENCY_LOSSES = ("mse", "kl", "l1", "ce")
RAMPUPS = ("linear", "sigmoid", "cosine")


def consistency_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, kind: str = "mse",
                     reduction: str = "mean", threshold: float = 0.0) -> torch.Tensor:
    """Distance between p = softmax(student_logits) [B, C] and a target distribution q [B, C].

    * ``"mse"``: sum_c (p_c - q_c)^2   (Laine & Aila 2017's squared difference, summed over classes)
    * ``"kl"``:  KL(q || p) = sum_c q_c (log q_c - log p_c)   (terms with q_c = 0 contribute 0)
    * ``"l1"``:  sum_c |p_c - q_c|
    * ``"ce"``:  [max_c q_c >= threshold] * -log p_j, j = argmax_c q_c   (the target's hard label where
      it is confident: pseudo-labels as in FixMatch, Sohn et al. 2020; rows below the threshold give 0)
    Per example, then the mean over the batch (``reduction="none"`` keeps [B]). The target is
    detached: gradients flow only through the student.
    """
    q = target_probs.detach().float()
    logp = F.log_softmax(student_logits.float(), dim=-1)
    if kind == "mse":
        per = ((logp.exp() - q) ** 2).sum(-1)
    elif kind == "kl":
        per = (torch.xlogy(q, q) - q * logp).sum(-1)
    elif kind == "l1":
        per = (logp.exp() - q).abs().sum(-1)
    elif kind == "ce":
        conf, hard = q.max(-1)
        per = -logp.gather(-1, hard.unsqueeze(-1)).squeeze(-1) * (conf >= threshold).to(logp.dtype)
    else:
        raise ValueError(f"consistency must be one of {CONSISTENCY_LOSSES}, got {kind!r}")
    if reduction == "none":
        return per
    return per.mean() if per.numel() else per.sum()


def rampup(t: float, shape: str = "sigmoid") -> float:
    """w(t) in [0, 1] for progress t in [0, 1] through the ramp-up.

    linear: t;  sigmoid: exp(-5 (1 - t)^2) (Laine & Aila 2017);  cosine: (1 - cos(pi t)) / 2.
    """
    t = min(max(float(t), 0.0), 1.0)
    if shape == "linear":
        return t
    if shape == "sigmoid":
        return math.exp(-5.0 * (1.0 - t) ** 2)
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    raise ValueError(f"rampup must be one of {RAMPUPS}, got {shape!r}")


def consistency_weight(step: int, steps_per_epoch: int, rampup_epochs: float, max_weight: float,
                       shape: str = "sigmoid") -> float:
    """The consistency weight at a (0-based) training step: 0 throughout the first epoch, then
    ``max_weight * rampup(t)`` with t = (step - steps_per_epoch) / (rampup_epochs * steps_per_epoch);
    ``max_weight`` from the end of the ramp-up on."""
    if step < steps_per_epoch:
        return 0.0
    if rampup_epochs <= 0:
        return float(max_weight)
    t = (step - steps_per_epoch) / (rampup_epochs * steps_per_epoch)
    return float(max_weight) * rampup(t, shape)


def temporal_target(Z: torch.Tensor, updates: torch.Tensor | int, alpha: float = 0.6) -> torch.Tensor:
    """Laine & Aila (2017) temporal-ensemble target with start-up bias correction:
    z~ = Z / (1 - alpha^t), t = the number of updates Z (started at 0) has received (per row when a
    tensor). Rows with t = 0 have no target yet and come back as zeros."""
    t = torch.as_tensor(updates, dtype=Z.dtype, device=Z.device)
    denom = 1.0 - alpha ** t
    if denom.dim() == 1:
        denom = denom.unsqueeze(-1)
    return torch.where(denom > 0, Z / denom.clamp(min=1e-12), torch.zeros_like(Z))


def ensemble_update_(Z: torch.Tensor, rows: torch.Tensor, z: torch.Tensor, alpha: float = 0.6) -> None:
    """In place: Z[rows] <- alpha Z[rows] + (1 - alpha) z."""
    Z[rows] = alpha * Z[rows] + (1.0 - alpha) * z.to(Z.dtype)


def ema_decay(step: int, decay: float = 0.999, rampup_decay: float = 0.99, rampup_steps: int = 0) -> float:
    """Tarvainen & Valpola (2017): min(1 - 1/(step + 1), rampup_decay) during the ramp-up
    (step < rampup_steps), ``decay`` afterwards. ``step`` counts optimiser steps from 0."""
    if step < rampup_steps:
        return min(1.0 - 1.0 / (step + 1), rampup_decay)
    return decay


@torch.no_grad()
def ema_update_(teacher: Mapping[str, torch.Tensor], student: Iterable[tuple[str, torch.Tensor]],
                decay: float) -> None:
    """In place, for every name of ``teacher``: teacher <- decay * teacher + (1 - decay) * student."""
    for name, value in student:
        if name in teacher:
            teacher[name].mul_(decay).add_(value.detach().to(teacher[name].dtype), alpha=1.0 - decay)
