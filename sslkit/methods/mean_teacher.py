"""Mean teacher (Tarvainen & Valpola 2017): agree with an exponential moving average of yourself.

loss = CE(f_theta(x_l), y) + w(t) * d(f_theta(x), f_theta'(x)),  theta' <- d theta' + (1 - d) theta.

The teacher is an EMA of the student's *trainable* weights only (LoRA adapters + head); the frozen
base weights are shared through ``torch.func.functional_call``, never copied. Decay
min(1 - 1/(step + 1), ``rampup_decay``) during the ramp-up, ``ema_decay`` after. The trainer scores
student and teacher on dev after each epoch and tests the better (:meth:`MeanTeacher.eval_states`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..consistency_math import ema_decay, ema_update_
from .consistency import ConsistencyMethod


@dataclass
class MeanTeacher(ConsistencyMethod):
    ema_decay: float = 0.999
    rampup_decay: float = 0.99

    name = "mean_teacher"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.teacher = {n: p.detach().clone() for n, p in ctx.unwrapped_model.named_parameters()
                        if p.requires_grad}

    @property
    def memory_mb(self) -> float:
        """Extra memory of the teacher: its copy of the trainable tensors, in MB."""
        return sum(t.numel() * t.element_size() for t in self.teacher.values()) / 2**20

    def target_probs(self, ctx, lab: dict, unl: dict | None) -> torch.Tensor:
        device = lab["input_ids"].device
        if next(iter(self.teacher.values())).device != device:  # after a resume onto a GPU
            self.teacher = {n: t.to(device) for n, t in self.teacher.items()}
        with torch.no_grad():
            return torch.softmax(self.batch_logits(ctx, lab, unl, params=self.teacher).float(), dim=-1)

    def after_step(self, ctx) -> None:
        rampup_steps = int((1 + self.rampup_epochs) * ctx.steps_per_epoch)
        decay = ema_decay(ctx.step, self.ema_decay, self.rampup_decay, rampup_steps)
        ema_update_(self.teacher, ctx.unwrapped_model.named_parameters(), decay)

    def eval_states(self, ctx) -> dict[str, dict[str, torch.Tensor]]:
        return {"teacher": {n: t.clone() for n, t in self.teacher.items()}}

    def state_dict(self) -> dict:
        return {"teacher": {n: t.clone() for n, t in self.teacher.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.teacher = {n: t.clone() for n, t in state["teacher"].items()}
