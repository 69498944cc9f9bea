"""Consistency methods (issue 4): Π-model, temporal ensembling, mean teacher.

All three train on a batch made of the labeled part and the unlabeled part (padded into one
batch) with loss = L_sup(labeled) + w(t) * L_cons(all), where L_cons compares a noisy prediction
with a target (:func:`sslkit.consistency.consistency_loss`: "mse" | "kl" | "l1" | "ce") and w(t) ramps up
after a first epoch at 0 (:func:`sslkit.consistency.consistency_weight`). The noise is chosen per
run: ``"dropout"`` (train-mode passes differ), ``"token"`` (deletion / swap / replacement at
``noise_rate``, :func:`sslkit.augment.token_noise`) or ``"fgm"`` (adversarial noise on the input
embeddings, :func:`sslkit.augment.adversarial_embeddings`).

* Π-model (Laine & Aila 2017): two noisy passes of the same batch; the second is the target. As in
  USB's implementation the target is detached, so it runs without a graph (cheaper than two
  differentiated passes; same fixed point).
* Temporal ensembling (Laine & Aila 2017): a per-example ensemble Z [N, C] over the whole training
  set (global ``idx``), Z <- alpha Z + (1 - alpha) z after each epoch, target Z / (1 - alpha^t), t the
  row's own number of updates. ``z_update="steps"`` (default, the paper's): z is the training pass's own
  (noisy, detached) prediction for every example a step visited, so no extra forward pass; rows not
  visited in an epoch keep their Z and t; a row with no target yet (never visited) is forwarded without
  a graph (its term is 0, its pass only feeds z). ``z_update="pass"``: z comes from one noisy,
  gradient-free pass over every training example at the end of the epoch -- an epoch of this trainer
  is one pass over the *labeled* set, which at 32 unlabeled texts per step visits ~1/9 of banking77's
  pool, so the per-step outputs alone leave most of Z empty; the price is that pass.
* FixMatch's loss as options (Sohn et al. 2020): ``noise_target=False`` (the target reads the text as
  is), ``target_dropout=False`` (the target's pass without dropout, with the LoRA updates folded in:
  cheaper), ``labeled_consistency=False`` (the term over the unlabeled rows only) and hard targets
  (``consistency="ce"``, ``threshold``): unlabeled rows below the threshold weigh 0 and are left out of
  the student's pass on one process (the same loss, fewer texts forwarded).
* Mean teacher (Tarvainen & Valpola 2017): the teacher is an EMA of the student's *trainable*
  weights only (LoRA adapters + head); the frozen base weights are shared through
  ``torch.func.functional_call``, never copied. Decay min(1 - 1/(step + 1), 0.99) during the
  ramp-up, ``ema_decay`` (0.999) after. The trainer scores student and teacher on dev after each
  epoch and tests the better (:meth:`MeanTeacher.eval_states`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from ..augment import adversarial_embeddings, model_token_noise, pad_token_id
from ..consistency import (consistency_loss, consistency_weight, ema_decay, ema_update_, ensemble_update_,
                           temporal_target)
from .base import Method, clean_logits, take_rows

#: Maximum consistency weight per loss when ``max_weight`` is None (MSE/L1 are summed over classes).
DEFAULT_MAX_WEIGHT = {"mse": 5.0, "kl": 1.0, "l1": 1.0, "ce": 1.0}
NOISES = ("dropout", "token", "fgm")


def _idx(lab: dict, unl: dict | None) -> torch.Tensor:
    """The global example indices of the labeled rows, then the unlabeled rows."""
    return lab["idx"] if unl is None else torch.cat([lab["idx"], unl["idx"]])


def cat_batches(lab: dict, unl: dict | None, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch from the labeled and unlabeled parts: (input_ids, attention_mask, idx), labeled rows
    first, right-padded with ``pad_id`` to the longer of the two."""
    if unl is None:
        return lab["input_ids"], lab["attention_mask"], _idx(lab, unl)
    T = max(lab["input_ids"].shape[1], unl["input_ids"].shape[1])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    ids = torch.cat([pad(lab["input_ids"], pad_id), pad(unl["input_ids"], pad_id)])
    mask = torch.cat([pad(lab["attention_mask"], 0), pad(unl["attention_mask"], 0)])
    return ids, mask, _idx(lab, unl)


@dataclass
class _Consistency(Method):
    consistency: str = "mse"          # "mse" | "kl" | "l1" | "ce" (hard target where max prob >= threshold)
    threshold: float = 0.9            # "ce" only: the target's confidence needed for its label to count
    max_weight: float | None = None   # None: DEFAULT_MAX_WEIGHT[consistency]
    rampup: str = "sigmoid"           # "linear" | "sigmoid" | "cosine"
    rampup_epochs: float = 2.0        # after the first epoch (weight 0)
    scale_by_labeled: bool = False    # max weight * labeled fraction (Laine & Aila's w_max * M / N)
    noise: str = "dropout"            # "dropout" | "token" | "fgm"
    noise_rate: float = 0.1           # token noise: probability a token is deleted / swapped / replaced
    noise_labeled: bool = True        # token noise on the labeled rows too (their supervised loss sees it)
    noise_target: bool = True         # token noise on the target's pass too (False: the text as is, FixMatch's weak view)
    target_dropout: bool = True       # the target's pass in train mode (dropout on); False: eval mode, LoRA folded in
    labeled_consistency: bool = True  # the consistency term covers the labeled rows too; False: unlabeled only (FixMatch)
    fgm_eps: float = 1.0              # adversarial noise: L2 norm of the perturbation per example

    uses_unlabeled = True

    def setup(self, ctx) -> None:
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.consistency not in DEFAULT_MAX_WEIGHT:
            raise ValueError(f"consistency must be one of {sorted(DEFAULT_MAX_WEIGHT)}, got {self.consistency!r}")
        n_l, n_u = len(ctx.budget.labeled), len(ctx.budget.unlabeled)
        self._labeled_share = n_l / max(1, n_l + n_u)

    # ------------------------------------------------------------------ pieces
    def weight(self, ctx) -> float:
        w_max = DEFAULT_MAX_WEIGHT[self.consistency] if self.max_weight is None else self.max_weight
        if self.scale_by_labeled:
            w_max *= self._labeled_share
        return consistency_weight(ctx.step, ctx.steps_per_epoch, self.rampup_epochs, w_max, self.rampup)

    def noisy_input(self, ctx, ids: torch.Tensor, mask: torch.Tensor, n_clean: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token noise on the batch (the first ``n_clean`` rows, the labeled ones when
        ``noise_labeled`` is off, keep their text; the noise drawn for the rest is unchanged)."""
        if self.noise != "token" or n_clean >= ids.shape[0]:
            return ids, mask
        noisy_ids, noisy_mask = model_token_noise(ctx.unwrapped_model, ids, mask, self.noise_rate)
        if n_clean:
            noisy_ids[:n_clean], noisy_mask[:n_clean] = ids[:n_clean], mask[:n_clean]
        return noisy_ids, noisy_mask

    def noisy_logits(self, ctx, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None,
                     params: dict | None = None, n_labeled: int = 0, for_target: bool = False) -> torch.Tensor:
        """Logits of one noisy pass (train mode, so dropout is always on). ``params`` runs the model
        with those trainable tensors in place of its own (the mean teacher). The first ``n_labeled``
        rows are the labeled ones (kept free of token noise unless ``noise_labeled``). ``for_target``:
        the pass that makes the target, free of token noise when ``noise_target`` is off."""
        n_clean = 0 if self.noise_labeled else n_labeled
        if for_target and not self.noise_target:
            n_clean = ids.shape[0]
        if for_target and not self.target_dropout:
            return clean_logits(ctx.unwrapped_model, *self.noisy_input(ctx, ids, mask, n_clean), params)
        if params is not None:
            ids, mask = self.noisy_input(ctx, ids, mask, n_clean)
            return functional_call(ctx.unwrapped_model, params, (ids, mask))
        if self.noise == "fgm" and target is not None:
            # the ids go along: a transformer reads only the embeddings, FastText's IDF pooling weighs by id
            embeds = adversarial_embeddings(
                ctx.unwrapped_model, lambda e, m: ctx.model(input_ids=ids, attention_mask=m, inputs_embeds=e),
                ids, mask, target, eps=self.fgm_eps)
            return ctx.model(input_ids=ids, attention_mask=mask, inputs_embeds=embeds)
        ids, mask = self.noisy_input(ctx, ids, mask, n_clean)
        return ctx.model(input_ids=ids, attention_mask=mask)

    def batch_logits(self, ctx, lab: dict, unl: dict | None, target: torch.Tensor | None = None,
                     params: dict | None = None, for_target: bool = False) -> torch.Tensor:
        """:meth:`noisy_logits` of the labeled rows, then the unlabeled rows. One process: each part in
        its own forward, so neither is padded to the other's length (batches of similar lengths are
        drawn per part; banking77 at 32 + 96 texts: 1.37x fewer tokens than one padded batch). Several
        processes: one concatenated forward (DistributedDataParallel takes one differentiated forward
        per backward)."""
        n_l = lab["input_ids"].shape[0]
        if unl is None or ctx.accelerator.num_processes > 1:
            ids, mask, _ = cat_batches(lab, unl, pad_token_id(ctx.unwrapped_model))
            return self.noisy_logits(ctx, ids, mask, target, params, n_labeled=n_l, for_target=for_target)
        parts = ((lab, n_l, None if target is None else target[:n_l]),
                 (unl, 0, None if target is None else target[n_l:]))
        return torch.cat([self.noisy_logits(ctx, part["input_ids"], part["attention_mask"], t, params,
                                            n_labeled=n, for_target=for_target) for part, n, t in parts])

    @staticmethod
    def _parts_apart(ctx, unl: dict | None) -> bool:
        """One process with an unlabeled part: labeled and unlabeled rows may take separate forwards
        (several processes need the one concatenated forward DDP takes per backward)."""
        return unl is not None and ctx.accelerator.num_processes == 1

    def _unlabeled_only(self, ctx, unl: dict | None) -> bool:
        """``labeled_consistency`` off and the parts apart: the target's pass skips the labeled rows."""
        return not self.labeled_consistency and self._parts_apart(ctx, unl)

    def target_probs(self, ctx, lab: dict, unl: dict | None, params: dict | None = None) -> torch.Tensor:
        """softmax of the target's pass (no gradient): [labeled rows; unlabeled rows], or the unlabeled
        rows only where :meth:`_unlabeled_only`. ``params``: the mean teacher's weights."""
        with torch.no_grad():
            if self._unlabeled_only(ctx, unl):
                logits = self.noisy_logits(ctx, unl["input_ids"], unl["attention_mask"], params=params,
                                           for_target=True)
            else:
                logits = self.batch_logits(ctx, lab, unl, params=params, for_target=True)
        return torch.softmax(logits.float(), dim=-1)

    def student_loss(self, ctx, lab: dict, unl: dict | None, target: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's noisy pass against ``target`` (from :meth:`target_probs`): its labeled logits
        (for the supervised loss) and the consistency term, the mean over the target's rows.
        With hard targets (``"ce"``, threshold > 0) on one process, unlabeled rows whose target is
        below the threshold contribute exactly 0, so they are left out of the pass rather than
        forwarded and masked (FixMatch's mask applied before the forward: the same loss, fewer
        texts; the dropout and token noise drawn for the rest differ)."""
        n_l = lab["input_ids"].shape[0]
        hard = self.consistency == "ce" and self.threshold > 0
        if not self._parts_apart(ctx, unl) or (self.labeled_consistency and not hard):
            logits = self.batch_logits(ctx, lab, unl, target=target)
            first = 0 if self.labeled_consistency else n_l
            return logits[:n_l], consistency_loss(logits[first:], target[first:], self.consistency,
                                                  threshold=self.threshold)
        t_lab = target[:n_l] if self.labeled_consistency else None
        kept, t_kept = unl, target[-unl["input_ids"].shape[0]:]
        if hard:
            keep = t_kept.max(-1).values >= self.threshold
            kept, t_kept = take_rows(unl, keep), t_kept[keep]
            ctx.log("mask_rate", float(keep.float().mean()))  # the share of unlabeled rows in the student's pass
        lab_logits = self.noisy_logits(ctx, lab["input_ids"], lab["attention_mask"], t_lab, n_labeled=n_l)
        per = [] if t_lab is None else [consistency_loss(lab_logits, t_lab, self.consistency, reduction="none",
                                                         threshold=self.threshold)]
        if kept is not None:
            u_logits = self.noisy_logits(ctx, kept["input_ids"], kept["attention_mask"], t_kept)
            per.append(consistency_loss(u_logits, t_kept, self.consistency, reduction="none",
                                        threshold=self.threshold))
        cons = torch.cat(per).sum() / target.shape[0] if per else lab_logits.new_zeros(())
        return lab_logits, cons


@dataclass
class PiModel(_Consistency):
    """loss = CE(f(x_l)) + w(t) * d(f~(x), f~'(x)) over the labeled and unlabeled examples of the batch."""

    name = "pi_model"

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        lab, unl = batch["labeled"], batch["unlabeled"]
        w = self.weight(ctx)
        if w == 0.0:  # first epoch: the supervised part only (no second pass)
            logits = ctx.model(input_ids=lab["input_ids"], attention_mask=lab["attention_mask"])
            sup = ctx.sup_loss(logits, lab["labels"])
            return {"loss": sup, "sup": sup.detach(), "cons": torch.zeros(()), "w": torch.tensor(0.0)}
        target = self.target_probs(ctx, lab, unl)
        lab_logits, cons = self.student_loss(ctx, lab, unl, target)
        sup = ctx.sup_loss(lab_logits, lab["labels"])
        return {"loss": sup + w * cons, "sup": sup.detach(), "cons": cons.detach(), "w": torch.tensor(w)}


@dataclass
class TemporalEnsemble(_Consistency):
    """loss = CE(f(x_l)) + w(t) * d(f~(x_i), Z_i / (1 - alpha^t_i)); Z updated after each epoch."""

    alpha: float = 0.6
    z_update: str = "steps"           # "steps": Z from the steps' own outputs; "pass": one more pass over every example per epoch

    name = "temporal_ensemble"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if self.z_update not in ("pass", "steps"):
            raise ValueError(f"z_update must be 'pass' or 'steps', got {self.z_update!r}")
        b = ctx.budget
        n = int(max(b.labeled.idx.max(initial=-1), b.unlabeled.idx.max(initial=-1))) + 1
        self.Z = torch.zeros(n, ctx.num_classes)
        self.updates = torch.zeros(n, dtype=torch.long)
        if self.z_update == "steps":  # this epoch's outputs and which rows they are for
            self._z = torch.zeros(n, ctx.num_classes)
            self._visited = torch.zeros(n, dtype=torch.bool)

    def _record(self, ctx, idx: torch.Tensor, logits: torch.Tensor) -> None:
        """"steps": keep the step's predictions (the last visit wins) for the end-of-epoch update; with
        several processes every process gathers every row, so Z stays identical."""
        probs = torch.softmax(logits.detach().float(), dim=-1)
        acc = ctx.accelerator
        if acc.num_processes > 1:
            idx = acc.gather(acc.pad_across_processes(idx, pad_index=-1))
            probs = acc.gather(acc.pad_across_processes(probs))
            keep = idx >= 0
            idx, probs = idx[keep], probs[keep]
        rows = idx.cpu()
        self._z[rows] = probs.cpu()
        self._visited[rows] = True

    @property
    def memory_mb(self) -> float:
        """Bytes the ensemble state takes (Z float32 + update counts, and for "steps" the epoch's
        outputs and visit flags), in MB."""
        state = [self.Z, self.updates] + ([self._z, self._visited] if self.z_update == "steps" else [])
        return sum(t.numel() * t.element_size() for t in state) / 2**20

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        lab, unl = batch["labeled"], batch["unlabeled"]
        idx = _idx(lab, unl)
        n_l = lab["input_ids"].shape[0]
        w = self.weight(ctx)
        rows = idx.cpu()
        seen = self.updates[rows] > 0
        has_target = bool(seen.any())
        if (w == 0.0 or not has_target) and self.z_update == "pass":
            logits = ctx.model(input_ids=lab["input_ids"], attention_mask=lab["attention_mask"])
            sup = ctx.sup_loss(logits, lab["labels"])
            return {"loss": sup, "sup": sup.detach(), "cons": torch.zeros(()), "w": torch.tensor(w)}
        target = temporal_target(self.Z[rows], self.updates[rows], self.alpha).to(lab["input_ids"].device)
        if self.z_update == "steps" and w > 0.0 and has_target and self._parts_apart(ctx, unl):
            logits = self._steps_logits(ctx, lab, unl, target, seen.to(target.device))
        else:
            logits = self.batch_logits(ctx, lab, unl, target=target if has_target else None)
        if self.z_update == "steps":
            self._record(ctx, idx, logits)
        sup = ctx.sup_loss(logits[:n_l], lab["labels"])
        if w == 0.0 or not has_target:  # "steps" before Z has a target: z recorded, no term yet
            return {"loss": sup, "sup": sup.detach(), "cons": torch.zeros(()), "w": torch.tensor(w)}
        per = consistency_loss(logits, target, self.consistency, reduction="none",
                               threshold=self.threshold)
        cons = (per * seen.to(per.device, per.dtype)).sum() / per.shape[0]
        return {"loss": sup + w * cons, "sup": sup.detach(), "cons": cons.detach(), "w": torch.tensor(w)}

    def _steps_logits(self, ctx, lab: dict, unl: dict, target: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The batch's noisy logits for ``z_update="steps"`` (one process): an unlabeled row with no
        target yet (never visited: its term is 0, its pass only feeds z) is forwarded without a graph,
        so no backward runs through it. An epoch draws 32 x 29 of banking77's 8101 pool texts afresh,
        so in epochs 2-6 only 11-46% of the unlabeled rows have a target: the same loss, ~20% less work."""
        n_l = lab["input_ids"].shape[0]
        logits = [self.noisy_logits(ctx, lab["input_ids"], lab["attention_mask"], target[:n_l], n_labeled=n_l)]
        u_seen, t_u = seen[n_l:], target[n_l:]
        ctx.log("target_rate", float(u_seen.float().mean()))  # the share of unlabeled rows with a target
        pieces, rows = [], []
        for keep, grad in ((u_seen, True), (~u_seen, False)):
            part = take_rows(unl, keep)
            if part is None:
                continue
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                pieces.append(self.noisy_logits(ctx, part["input_ids"], part["attention_mask"], t_u[keep]))
            rows.append(torch.nonzero(keep).squeeze(1))
        logits.append(torch.cat(pieces)[torch.argsort(torch.cat(rows))])  # back in the batch's order
        return torch.cat(logits)

    @torch.no_grad()
    def after_epoch(self, ctx) -> dict:
        """Z <- alpha Z + (1 - alpha) z on this epoch's rows. "pass": z from one noisy pass (dropout,
        and token noise if chosen) over every training example; every process draws the same noise
        (a forked RNG seeded by (seed, epoch)), so Z stays identical. "steps": the rows the steps visited."""
        if self.z_update == "steps":
            rows = torch.nonzero(self._visited).squeeze(1)
            ensemble_update_(self.Z, rows, self._z[rows], self.alpha)
            self.updates[rows] += 1
            self._visited[:] = False
            return {"z_mb": self.memory_mb, "z_rows": int(rows.numel())}
        model = ctx.unwrapped_model
        tok = list(ctx.train_set.ids) + (list(ctx.pool.tok) if ctx.pool is not None else [])
        idx = np.concatenate([ctx.train_set.idx] + ([ctx.pool.idx] if ctx.pool is not None else []))
        order = np.argsort([len(t) for t in tok], kind="stable")
        bs = ctx.config.eval_batch_size
        device = next(model.parameters()).device
        probs = torch.empty(len(tok), ctx.num_classes)
        was_training = model.training
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.config.seed * 7919 + ctx.epoch)
            for start in range(0, len(order), bs):
                chunk = order[start:start + bs]
                b = model.collate([tok[i] for i in chunk])
                ids, mask = self.noisy_input(ctx, b["input_ids"].to(device), b["attention_mask"].to(device))
                probs[torch.as_tensor(chunk)] = torch.softmax(model(ids, mask).float(), dim=-1).cpu()
        model.train(was_training)
        rows = torch.as_tensor(idx, dtype=torch.long)
        ensemble_update_(self.Z, rows, probs, self.alpha)
        self.updates[rows] += 1
        return {"z_mb": self.memory_mb}

    def state_dict(self) -> dict:
        return {"Z": self.Z.clone(), "updates": self.updates.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.Z, self.updates = state["Z"].clone(), state["updates"].clone()


@dataclass
class MeanTeacher(_Consistency):
    """loss = CE(f_theta(x_l)) + w(t) * d(f_theta(x), f_theta'(x)), theta' <- d theta' + (1 - d) theta."""

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

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        lab, unl = batch["labeled"], batch["unlabeled"]
        w = self.weight(ctx)
        if w == 0.0:
            logits = ctx.model(input_ids=lab["input_ids"], attention_mask=lab["attention_mask"])
            sup = ctx.sup_loss(logits, lab["labels"])
            return {"loss": sup, "sup": sup.detach(), "cons": torch.zeros(()), "w": torch.tensor(0.0)}
        device = lab["input_ids"].device
        if next(iter(self.teacher.values())).device != device:  # after a resume onto a GPU
            self.teacher = {n: t.to(device) for n, t in self.teacher.items()}
        target = self.target_probs(ctx, lab, unl, params=self.teacher)
        lab_logits, cons = self.student_loss(ctx, lab, unl, target)
        sup = ctx.sup_loss(lab_logits, lab["labels"])
        return {"loss": sup + w * cons, "sup": sup.detach(), "cons": cons.detach(), "w": torch.tensor(w)}

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
