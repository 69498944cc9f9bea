"""Loss functions as pure tensor functions (testable on random tensors).

classification_loss: cross-entropy with label smoothing, optionally focal (Lin et al. 2017,
"Focal Loss for Dense Object Detection"):

    FL_i = alpha_{y_i} * (1 - p_{i, y_i})^gamma * CE_i,    CE_i = -sum_c q_{ic} log p_{ic}

where q is the (smoothed) target distribution, q = (1 - eps) onehot(y) + eps / C. With gamma = 0 and
no alpha this is torch's cross-entropy with ``label_smoothing=eps``. The mean is over examples.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Sequence[float] | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss on softmax outputs. logits [B, C], target [B] (class indices).

    alpha: optional per-class weights [C]; the example weight is alpha[y_i].
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    ce = F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=label_smoothing)
    p_true = log_p.gather(1, target.unsqueeze(1)).squeeze(1).exp()
    loss = ce if gamma == 0 else (1.0 - p_true).clamp(min=0).pow(gamma) * ce
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        if alpha_t.numel() != logits.shape[-1]:
            raise ValueError(f"focal alpha has {alpha_t.numel()} weights for {logits.shape[-1]} classes")
        loss = alpha_t[target] * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def classification_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    focal_alpha: Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy (with label smoothing); focal when ``focal_gamma > 0`` or ``focal_alpha`` given."""
    if focal_gamma == 0 and focal_alpha is None:
        return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing, reduction=reduction)
    return focal_loss(logits, target, gamma=focal_gamma, alpha=focal_alpha, label_smoothing=label_smoothing,
                      reduction=reduction)
