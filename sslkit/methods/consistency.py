"""What the consistency methods share: loss = L_sup(labeled) + w(t) * L_cons(labeled and unlabeled).

L_cons compares the model's prediction under noise with a target distribution
(:func:`sslkit.consistency_math.consistency_loss`: "mse" | "kl" | "l1") and w(t) is 0 in the first
epoch, then ramps up (:func:`sslkit.consistency_math.consistency_weight`). The noise is chosen per
run: ``"dropout"`` (train-mode passes differ), ``"token"`` (deletion / swap / replacement at
``noise_rate``, :func:`sslkit.augment.token_noise`, plus dropout) or ``"fgm"`` (adversarial noise on
the input embeddings, :func:`sslkit.augment.adversarial_embeddings`). Where the methods differ is
the target: :mod:`~sslkit.methods.pi_model`, :mod:`~sslkit.methods.temporal_ensemble`,
:mod:`~sslkit.methods.mean_teacher`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from ..augment import adversarial_embeddings, model_token_noise, pad_token_id
from ..consistency_math import consistency_loss, consistency_weight
from .base import Method

#: Maximum consistency weight per loss when ``max_weight`` is None (MSE/L1 are summed over classes).
DEFAULT_MAX_WEIGHT = {"mse": 5.0, "kl": 1.0, "l1": 1.0}
NOISES = ("dropout", "token", "fgm")


def batch_idx(lab: dict, unl: dict | None) -> torch.Tensor:
    """The global example indices of the labeled rows, then the unlabeled rows."""
    return lab["idx"] if unl is None else torch.cat([lab["idx"], unl["idx"]])


def cat_batches(lab: dict, unl: dict | None, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch from the labeled and unlabeled parts: (input_ids, attention_mask, idx), labeled rows
    first, right-padded with ``pad_id`` to the longer of the two."""
    if unl is None:
        return lab["input_ids"], lab["attention_mask"], batch_idx(lab, unl)
    T = max(lab["input_ids"].shape[1], unl["input_ids"].shape[1])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    ids = torch.cat([pad(lab["input_ids"], pad_id), pad(unl["input_ids"], pad_id)])
    mask = torch.cat([pad(lab["attention_mask"], 0), pad(unl["attention_mask"], 0)])
    return ids, mask, batch_idx(lab, unl)


def parts_apart(ctx, unl: dict | None) -> bool:
    """One process with an unlabeled part: labeled and unlabeled rows may take separate forwards
    (several processes need the one concatenated forward DDP takes per backward)."""
    return unl is not None and ctx.accelerator.num_processes == 1


@dataclass
class ConsistencyMethod(Method):
    consistency: str = "mse"          # "mse" | "kl" | "l1"
    max_weight: float | None = None   # None: DEFAULT_MAX_WEIGHT[consistency]
    rampup: str = "sigmoid"           # "linear" | "sigmoid" | "cosine"
    rampup_epochs: float = 2.0        # after the first epoch (weight 0)
    noise: str = "dropout"            # "dropout" | "token" | "fgm"
    noise_rate: float = 0.1           # token noise: probability a token is deleted / swapped / replaced
    fgm_eps: float = 1.0              # adversarial noise: L2 norm of the perturbation per example

    uses_unlabeled = True

    def setup(self, ctx) -> None:
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.consistency not in DEFAULT_MAX_WEIGHT:
            raise ValueError(f"consistency must be one of {sorted(DEFAULT_MAX_WEIGHT)}, got {self.consistency!r}")

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        w = self.weight(ctx)
        if w == 0.0:  # the first epoch: the supervised part only, no second pass
            return self.supervised_step(batch, ctx)
        lab, unl = batch["labeled"], batch["unlabeled"]
        target = self.target_probs(ctx, lab, unl)
        lab_logits, cons = self.student_loss(ctx, lab, unl, target)
        sup = ctx.sup_loss(lab_logits, lab["labels"])
        return {"loss": sup + w * cons, "sup": sup.detach(), "cons": cons.detach(), "w": torch.tensor(w)}

    def target_probs(self, ctx, lab: dict, unl: dict | None) -> torch.Tensor:
        """The target distribution [labeled rows; unlabeled rows], without gradient."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pieces
    def weight(self, ctx) -> float:
        w_max = DEFAULT_MAX_WEIGHT[self.consistency] if self.max_weight is None else self.max_weight
        return consistency_weight(ctx.step, ctx.steps_per_epoch, self.rampup_epochs, w_max, self.rampup)

    def noisy_input(self, ctx, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token noise on every row when ``noise="token"``; the batch unchanged otherwise."""
        if self.noise != "token":
            return ids, mask
        return model_token_noise(ctx.unwrapped_model, ids, mask, self.noise_rate)

    def noisy_logits(self, ctx, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None,
                     params: dict | None = None) -> torch.Tensor:
        """Logits of one noisy pass (train mode, so dropout is always on). ``params`` runs the model
        with those trainable tensors in place of its own (the mean teacher). FGM needs the
        ``target`` its adversarial direction increases the distance to."""
        if params is not None:
            ids, mask = self.noisy_input(ctx, ids, mask)
            return functional_call(ctx.unwrapped_model, params, (ids, mask))
        if self.noise == "fgm" and target is not None:
            # the ids go along: a transformer reads only the embeddings, FastText's IDF pooling weighs by id
            embeds = adversarial_embeddings(
                ctx.unwrapped_model, lambda e, m: ctx.model(input_ids=ids, attention_mask=m, inputs_embeds=e),
                ids, mask, target, eps=self.fgm_eps)
            return ctx.model(input_ids=ids, attention_mask=mask, inputs_embeds=embeds)
        ids, mask = self.noisy_input(ctx, ids, mask)
        return ctx.model(input_ids=ids, attention_mask=mask)

    def batch_logits(self, ctx, lab: dict, unl: dict | None, target: torch.Tensor | None = None,
                     params: dict | None = None) -> torch.Tensor:
        """:meth:`noisy_logits` of the labeled rows, then the unlabeled rows. On one process each
        part takes its own forward, so neither is padded to the other's length (batches of similar
        lengths are drawn per part); several processes take one concatenated forward."""
        if not parts_apart(ctx, unl):
            ids, mask, _ = cat_batches(lab, unl, pad_token_id(ctx.unwrapped_model))
            return self.noisy_logits(ctx, ids, mask, target, params)
        n_l = lab["input_ids"].shape[0]
        parts = ((lab, None if target is None else target[:n_l]), (unl, None if target is None else target[n_l:]))
        return torch.cat([self.noisy_logits(ctx, part["input_ids"], part["attention_mask"], t, params)
                          for part, t in parts])

    def student_loss(self, ctx, lab: dict, unl: dict | None, target: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's noisy pass against ``target``: its labeled logits (for the supervised loss)
        and the consistency term, the mean over every row of the batch."""
        logits = self.batch_logits(ctx, lab, unl, target=target)
        return logits[:lab["input_ids"].shape[0]], consistency_loss(logits, target, self.consistency)
