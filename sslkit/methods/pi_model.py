"""Π-model (Laine & Aila 2017): two noisy passes of the same batch should agree.

loss = CE(f(x_l), y) + w(t) * d(f~(x), f~'(x)) over the labeled and unlabeled texts of the batch.
As in USB's implementation the second pass is the target and is detached, so it runs without a
graph (cheaper than two differentiated passes; the same fixed point).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .consistency import ConsistencyMethod


@dataclass
class PiModel(ConsistencyMethod):
    name = "pi_model"

    def target_probs(self, ctx, lab: dict, unl: dict | None) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(self.batch_logits(ctx, lab, unl).float(), dim=-1)
