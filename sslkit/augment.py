"""Noise for the consistency methods: token noise on id batches and adversarial (FGM/VAT) noise on
input embeddings. Dropout noise needs no code: two passes in train mode differ.

Token noise (EDA-style operations, Wei & Zou 2019): every eligible token (attended, not special)
is chosen with probability ``rate``; a chosen token is deleted, swapped with its right neighbour,
or replaced by the mask/unknown token, the operation drawn uniformly from ``ops``.

Adversarial noise (FGM, Miyato et al. 2017; the direction found as in VAT, Miyato et al. 2018):
r = eps * g / ||g||_2 per example, g = d KL(p || p(e + d)) / d d at a small random d, where e are the
input embeddings and p the current (detached) prediction.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

TOKEN_OPS = ("delete", "swap", "replace")


def pad_token_id(model) -> int:
    """The backbone tokenizer's pad id (0 when it has none, as for FastText)."""
    tok = getattr(model, "tokenizer", None)
    pid = getattr(tok, "pad_token_id", None) if tok is not None else None
    return int(pid) if pid is not None else 0


def model_token_noise(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rate: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_noise` with the backbone's special ids, mask id and pad id."""
    return token_noise(input_ids, attention_mask, rate, special_ids=sorted(model.special_token_ids),
                       mask_id=model.mask_token_id, pad_id=pad_token_id(model))


def token_noise(input_ids: torch.Tensor, attention_mask: torch.Tensor, rate: float, *,
                special_ids: Sequence[int] = (), mask_id: int, pad_id: int = 0,
                ops: Sequence[str] = TOKEN_OPS, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of a padded id batch [B, T] and its mask; ids stay valid (only existing ids,
    ``mask_id`` and ``pad_id`` appear), special tokens never move, deleted tokens close up to the left."""
    unknown = set(ops) - set(TOKEN_OPS)
    if unknown or not ops:
        raise ValueError(f"token noise ops must be a non-empty subset of {TOKEN_OPS}, got {list(ops)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"token noise rate must be in [0, 1], got {rate}")
    ids, mask = input_ids.clone(), attention_mask.clone()
    device = ids.device
    special = torch.zeros_like(ids, dtype=torch.bool)
    for s in special_ids:
        special |= ids == int(s)
    eligible = mask.bool() & ~special
    chosen = eligible & (torch.rand(ids.shape, generator=generator).to(device) < rate)
    op = torch.randint(len(ops), ids.shape, generator=generator).to(device)
    ops = list(ops)

    if "replace" in ops:
        ids[chosen & (op == ops.index("replace"))] = int(mask_id)
    if "swap" in ops:
        s = chosen & (op == ops.index("swap"))
        s[:, :-1] &= eligible[:, 1:].clone()  # the right neighbour must be a real, non-special token
        s[:, -1] = False
        prev = s[:, :-1].clone()
        s[:, 1:] &= ~prev                       # no overlapping swaps
        right = torch.zeros_like(s)
        right[:, 1:] = s[:, :-1]
        new = ids.clone()
        new[:, :-1][s[:, :-1]] = ids[:, 1:][s[:, :-1]]
        new[:, 1:][right[:, 1:]] = ids[:, :-1][right[:, 1:]]
        ids = new
    if "delete" in ops:
        keep = mask.bool() & ~(chosen & (op == ops.index("delete")))
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        ids = torch.gather(ids, 1, order)
        keep = torch.gather(keep, 1, order)
        ids = torch.where(keep, ids, torch.full_like(ids, int(pad_id)))
        mask = keep.to(attention_mask.dtype)
    return ids, mask


def _l2_normalise(d: torch.Tensor) -> torch.Tensor:
    flat = d.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)).view_as(d)


def adversarial_embeddings(model, forward, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           target_probs: torch.Tensor, eps: float = 1.0, xi: float = 1e-1) -> torch.Tensor:
    """Input embeddings plus the FGM/VAT adversarial perturbation r = eps * g / ||g|| (per example,
    over the attended positions). ``model`` gives ``input_embeddings(ids)``; ``forward(inputs_embeds,
    attention_mask)`` returns logits (the prepared, possibly distributed model). The embeddings
    keep their graph (trainable embeddings still learn); r itself is a constant."""
    embeds = model.input_embeddings(input_ids)
    m = attention_mask.unsqueeze(-1).to(embeds.dtype)
    d = (xi * _l2_normalise(torch.randn_like(embeds) * m)).requires_grad_(True)
    with torch.enable_grad():
        logits = forward(embeds.detach() + d, attention_mask)
        adv = F.kl_div(F.log_softmax(logits.float(), -1), target_probs.detach().float(), reduction="batchmean")
        (g,) = torch.autograd.grad(adv, d)
    r = eps * _l2_normalise(g * m)
    return embeds + r.detach()
