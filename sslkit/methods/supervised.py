"""Supervised baseline: the labeled part of the batch only, loss = ctx.sup_loss (CE / focal)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Method


@dataclass
class Supervised(Method):
    """L = CE_smoothed(f(x), y) (or focal; configured in TrainConfig)."""

    name = "supervised"
    uses_unlabeled = False

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        return self.supervised_step(batch, ctx)
