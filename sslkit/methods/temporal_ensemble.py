"""Temporal ensembling (Laine & Aila 2017): agree with the ensemble of your own past predictions.

loss = CE(f(x_l), y) + w(t) * d(f~(x_i), Z_i / (1 - alpha^t_i)). Z [N, C] holds, for every training
example (global ``idx``), an EMA of the model's noisy predictions, Z <- alpha Z + (1 - alpha) z after
each epoch, z being the prediction of the step that visited the example (no extra pass; the last
visit wins) and t the row's own number of updates. Rows not visited in an epoch keep their Z and t.

A row with no target yet (never visited) weighs 0: on one process it is forwarded without a graph,
its pass only feeding z, so no backward runs through it. An epoch of this trainer is one pass over
the *labeled* set, so a large pool is visited a slice at a time and early epochs hold few targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..consistency_math import consistency_loss, ensemble_update_, temporal_target
from .base import take_rows
from .consistency import ConsistencyMethod, batch_idx, parts_apart


@dataclass
class TemporalEnsemble(ConsistencyMethod):
    alpha: float = 0.6

    name = "temporal_ensemble"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        b = ctx.budget
        n = int(max(b.labeled.idx.max(initial=-1), b.unlabeled.idx.max(initial=-1))) + 1
        self.Z = torch.zeros(n, ctx.num_classes)
        self.updates = torch.zeros(n, dtype=torch.long)
        self._z = torch.zeros(n, ctx.num_classes)           # this epoch's outputs ...
        self._visited = torch.zeros(n, dtype=torch.bool)    # ... and the rows they are for

    @property
    def memory_mb(self) -> float:
        """Bytes the ensemble state takes (Z, update counts, the epoch's outputs and visit flags), in MB."""
        return sum(t.numel() * t.element_size() for t in (self.Z, self.updates, self._z, self._visited)) / 2**20

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        """Every step forwards the whole batch, also in the first epoch (w = 0): z must be recorded."""
        lab, unl = batch["labeled"], batch["unlabeled"]
        idx = batch_idx(lab, unl)
        n_l = lab["input_ids"].shape[0]
        w = self.weight(ctx)
        rows = idx.cpu()
        seen = self.updates[rows] > 0
        on = w > 0.0 and bool(seen.any())
        target = temporal_target(self.Z[rows], self.updates[rows], self.alpha).to(lab["input_ids"].device)
        if on and parts_apart(ctx, unl):
            logits = self._split_logits(ctx, lab, unl, target, seen.to(target.device))
        else:
            logits = self.batch_logits(ctx, lab, unl, target=target if on else None)
        self._record(ctx, idx, logits)
        sup = ctx.sup_loss(logits[:n_l], lab["labels"])
        if not on:
            return {"loss": sup, "sup": sup.detach()}
        per = consistency_loss(logits, target, self.consistency, reduction="none")
        cons = (per * seen.to(per.device, per.dtype)).sum() / per.shape[0]
        return {"loss": sup + w * cons, "sup": sup.detach(), "cons": cons.detach(), "w": torch.tensor(w)}

    def _split_logits(self, ctx, lab: dict, unl: dict, target: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The batch's noisy logits, unlabeled rows without a target forwarded without a graph."""
        n_l = lab["input_ids"].shape[0]
        logits = [self.noisy_logits(ctx, lab["input_ids"], lab["attention_mask"], target[:n_l])]
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

    def _record(self, ctx, idx: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep the step's predictions for the end-of-epoch update; with several processes every
        process gathers every row, so Z stays identical."""
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

    @torch.no_grad()
    def after_epoch(self, ctx) -> dict:
        """Z <- alpha Z + (1 - alpha) z on the rows this epoch's steps visited."""
        rows = torch.nonzero(self._visited).squeeze(1)
        ensemble_update_(self.Z, rows, self._z[rows], self.alpha)
        self.updates[rows] += 1
        self._visited[:] = False
        return {"z_mb": self.memory_mb, "z_rows": int(rows.numel())}

    def state_dict(self) -> dict:
        return {"Z": self.Z.clone(), "updates": self.updates.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.Z, self.updates = state["Z"].clone(), state["updates"].clone()
