"""Loss functions as pure tensor functions (testable on random tensors).

classification_loss: cross-entropy with label smoothing, optionally focal (Lin et al. 2017,
"Focal Loss for Dense Object Detection"):

    FL_i = alpha_{y_i} * (1 - p_{i, y_i})^gamma * CE_i,    CE_i = -sum_c q_{ic} log p_{ic}

where q is the (smoothed) target distribution, q = (1 - eps) onehot(y) + eps / C. With gamma = 0 and
no alpha this is torch's cross-entropy with ``label_smoothing=eps``. The mean is over examples.

Supervised contrastive losses on a batch of features (formulas in their docstrings):
:func:`supcon_loss` (Khosla et al. 2020), :func:`focal_contrastive_loss` (SupCon's pair
probabilities with a focal weight) and :func:`margin_contrastive_loss` (batch-all triplets).
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


# --------------------------------------------------------------------------- contrastive losses
# features [B, D] (normalised inside), labels [B]; s_ij = cos(z_i, z_j); P(i) = the other examples
# with i's label, N(i) = the examples with another label. All three are vectorised over the batch
# (a [B, B] similarity matrix; the margin loss a [B, B, B] triplet tensor) and computed in float32.


def _similarity_and_masks(features: torch.Tensor, labels: torch.Tensor):
    """s = Z Z^T with Z = normalise(features); masks: self (i = j), positive (same label, i != j),
    negative (another label)."""
    if features.dim() != 2:
        raise ValueError(f"features must be [B, D], got shape {tuple(features.shape)}")
    labels = labels.reshape(-1)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {features.shape[0]} feature rows")
    z = F.normalize(features.float(), dim=-1)
    sim = z @ z.T
    eye = torch.eye(len(labels), dtype=torch.bool, device=features.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    return sim, eye, same & ~eye, ~same


def _contrastive_log_prob(sim: torch.Tensor, eye: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p_ij = s_ij/tau - log sum_{k != i} exp(s_ik/tau), with the row max over k != i
    subtracted before exponentiating (so the sum is >= 1 and its log finite). The diagonal is
    meaningless (-inf); callers only read it through masks."""
    logits = (sim / temperature).masked_fill(eye, float("-inf"))
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    return logits - torch.log(torch.exp(logits).sum(dim=1, keepdim=True))


def _anchored_log_prob(features: torch.Tensor, labels: torch.Tensor, temperature: float):
    """(log p_ij, positive mask, |P(i)|, anchor mask) for SupCon-style losses, or None when no
    example has a positive (the caller then returns 0)."""
    sim, eye, pos, _ = _similarity_and_masks(features, labels)
    n_pos = pos.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return None
    return _contrastive_log_prob(sim, eye, temperature), pos, n_pos, anchors


def _zero(features: torch.Tensor) -> torch.Tensor:
    """0 connected to the graph (backward gives zero gradients, never NaN; DDP sees every param)."""
    return features.float().sum() * 0.0


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float | None = None,
) -> torch.Tensor:
    r"""Supervised contrastive loss (SupCon, Khosla et al. 2020, "Supervised Contrastive Learning",
    NeurIPS; the L^sup_out form, eq. 2).

        log p_ij = s_ij / tau - log sum_{k != i} exp(s_ik / tau)
        loss_i   = -(tau / tau_base) * mean_{j in P(i)} log p_ij
        loss     = mean of loss_i over anchors with |P(i)| >= 1    (0, never NaN, if there is none)

    ``tau_base`` defaults to ``tau`` (scale 1). Anchors whose class has a single example in the
    batch still act as negatives for the others but are not anchors themselves.
    """
    tau_base = temperature if base_temperature is None else base_temperature
    parts = _anchored_log_prob(features, labels, temperature)
    if parts is None:
        return _zero(features)
    log_p, pos, n_pos, anchors = parts
    mean_log_p = torch.where(pos, log_p, torch.zeros_like(log_p)).sum(1) / n_pos.clamp(min=1)
    loss_i = -(temperature / tau_base) * mean_log_p
    return loss_i[anchors].mean()


def focal_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    gamma: float = 2.0,
) -> torch.Tensor:
    r"""Focal supervised contrastive loss: SupCon's p_ij with the focal modulation of Lin et al.
    (2017) applied per positive pair (as in "Focal contrastive loss", Zhang et al. 2022, and
    FoCL-style hard-positive weighting):

        p_ij   = exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)
        loss_i = mean_{j in P(i)} -(1 - p_ij)^gamma * log p_ij
        loss   = mean of loss_i over anchors with |P(i)| >= 1    (0 if there is none)

    Easy positive pairs (p_ij near 1) are down-weighted; ``gamma = 0`` gives SupCon with
    ``tau_base = tau``.
    """
    parts = _anchored_log_prob(features, labels, temperature)
    if parts is None:
        return _zero(features)
    log_p, pos, n_pos, anchors = parts
    # off the positives (the -inf diagonal included) a harmless finite stand-in; masked out below
    log_p = torch.where(pos, log_p, torch.full_like(log_p, -1.0))
    # clamp: (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1 (a lone pair in the batch)
    term = -(1.0 - log_p.exp()).clamp(min=1e-12).pow(gamma) * log_p if gamma else -log_p
    loss_i = torch.where(pos, term, torch.zeros_like(term)).sum(1) / n_pos.clamp(min=1)
    return loss_i[anchors].mean()


def margin_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
) -> torch.Tensor:
    r"""Batch-all triplet loss on cosine similarities (Schroff et al. 2015, "FaceNet"; the batch-all
    variant of Hermans et al. 2017, "In Defense of the Triplet Loss"):

        loss = mean over all triplets (i, j in P(i), k in N(i)) of relu(margin + s_ik - s_ij)

    (0 when the batch holds no such triplet). Every positive must be closer to the anchor than
    every negative by ``margin`` in cosine similarity.
    """
    sim, _, pos, neg = _similarity_and_masks(features, labels)
    valid = pos.unsqueeze(2) & neg.unsqueeze(1)  # [i, j, k]
    count = valid.sum()
    if int(count) == 0:
        return _zero(features)
    hinge = F.relu(margin + sim.unsqueeze(1) - sim.unsqueeze(2))  # [i, j, k] = margin + s_ik - s_ij
    return torch.where(valid, hinge, torch.zeros_like(hinge)).sum() / count
