"""The Method protocol: what a training step computes and what happens between epochs.

The trainer (:func:`sslkit.trainer.fit`) owns devices, optimisation, evaluation, checkpoints and
records; a method only sees a ``batch`` and a ``ctx`` (:class:`sslkit.context.Context`).

``batch["labeled"]`` holds ``input_ids``, ``attention_mask``, ``labels`` and ``idx`` (the global
example index, stable under shuffling and across processes); ``batch["unlabeled"]`` holds the same
keys without ``labels`` for methods with ``uses_unlabeled = True`` (else it is None).
"""
from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from typing import Any

import torch

from ..runs import dataclass_values


@torch.no_grad()
def clean_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """Logits of a pass without dropout and without gradient (a target's or a weak view's pass):
    eval mode, and for the model's own weights the LoRA updates folded in
    (:meth:`~sslkit.backbones.Backbone.merged_lora`, ~1.7x the texts per second on CPU); ``params``
    runs the model with those trainable tensors instead (a mean teacher). The model goes back to
    the mode it was in."""
    from torch.func import functional_call

    was_training = model.training
    model.eval()
    try:
        if params is not None:
            return functional_call(model, params, (ids, mask))
        with model.merged_lora():
            return model(ids, mask)
    finally:
        model.train(was_training)


def take_rows(part: dict, rows: torch.Tensor) -> dict | None:
    """The rows of a batch part where the bool mask ``rows`` [B] is set (every per-row tensor:
    input_ids, attention_mask, idx, ...), cut to the columns any kept row uses (so padding that only
    dropped rows needed goes too; works for left or right padding). None when no row is kept."""
    if not bool(rows.any()):
        return None
    B = rows.shape[0]
    out = {k: v[rows] if torch.is_tensor(v) and v.dim() and v.shape[0] == B else v for k, v in part.items()}
    cols = out["attention_mask"].bool().any(0)
    if not bool(cols.all()):
        out["input_ids"], out["attention_mask"] = out["input_ids"][:, cols], out["attention_mask"][:, cols]
    return out


@dataclass
class Method:
    """Base class: override :meth:`loss`; the hooks default to doing nothing."""

    name = "method"
    uses_unlabeled = False
    #: unlabeled texts per labeled one in a step (FixMatch's mu); the trainer sizes the pool's batches by it
    mu = 1

    def configure_model(self, model: Any) -> None:
        """Called once before the optimiser is built: attach trainable submodules the method needs
        (a contrastive projection head), so they are optimised, placed and saved with the model."""

    def setup(self, ctx: Any) -> None:
        """Called once before training (e.g. build an EMA teacher, allocate per-example state)."""

    def loss(self, batch: dict, ctx: Any) -> dict[str, torch.Tensor]:
        """Return {"loss": total, ...parts}; every part is logged."""
        raise NotImplementedError

    @staticmethod
    def supervised_step(batch: dict, ctx: Any) -> dict[str, torch.Tensor]:
        """The labeled part alone, L = ctx.sup_loss(f(x_l), y): the baseline's step, and every
        semi-supervised method's step while its unlabeled term weighs 0 (a warm-up)."""
        lab = batch["labeled"]
        logits = ctx.model(input_ids=lab["input_ids"], attention_mask=lab["attention_mask"])
        sup = ctx.sup_loss(logits, lab["labels"])
        return {"loss": sup, "sup": sup.detach()}

    def after_step(self, ctx: Any) -> None:
        """Called after each optimiser step (e.g. EMA update, threshold update)."""

    def after_epoch(self, ctx: Any) -> dict:
        """Called after each epoch, before evaluation; returns loggable stats."""
        return {}

    def labeled_batches(self, labels, batch_size: int, rng) -> list[list[int]] | None:
        """Batches of positions into the labeled training set (whose labels are ``labels``) for one
        pass, drawn with ``rng`` (seeded per epoch by the trainer); None: a plain shuffle. E.g. the
        P classes x K examples batches supervised contrastive losses need."""
        return None

    def eval_states(self, ctx: Any) -> dict[str, dict[str, torch.Tensor]]:
        """Extra trainable states the trainer scores on dev after each epoch beside the model
        itself, by name (a mean teacher's EMA weights); the best on dev is the one tested."""
        return {}

    def state_dict(self) -> dict:
        """Per-run state that must survive a resume (tensors, counters)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def config(self) -> dict:
        """The method's knobs, recorded in config.json (a knob that is itself configurable, such as
        a threshold rule, records its own ``config()``). A knob at None is an option left off and is
        not recorded: a method gains an optional part without every earlier run changing identity."""
        if not is_dataclass(self):
            return {"name": self.name}
        knobs = {k: v.config() if hasattr(v, "config") else v for k, v in dataclass_values(self).items()
                 if v is not None}
        return {"name": self.name, **knobs}
