"""What a method sees during training (:class:`Context`) and the pseudo-labels it moves (:class:`PseudoLabels`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .backbones import Backbone
from .batches import Pool, TrainingSet
from .data import Budget
from .inference import predict_logits
from .losses import classification_loss
from .runs import MetricsLog, atomic_write_text

PSEUDO_COLUMNS = ["idx", "id", "text", "label", "confidence", "weight", "round", "epoch", "gold"]


def _numpy(values, dtype) -> np.ndarray:
    return np.asarray(torch.as_tensor(values).detach().float().cpu() if dtype == np.float32
                      else torch.as_tensor(values).cpu(), dtype=dtype).reshape(-1)


class PseudoLabels:
    """Pool rows moved into the labeled set with a model's label, round by round.

    It owns the pool and the growing training set, keeps one record per moved row (written to
    ``pseudo_labels.csv``) and one per round (``rounds.jsonl``, with per-class candidates,
    selections and, where the pool's gold labels are known, precision). Gold labels are read here
    only, never by a method."""

    def __init__(self, pool: Pool | None, train_set: TrainingSet, label_names: list[str],
                 run_dir: Path | None = None, write: bool = True):
        self.pool, self.train_set, self.label_names = pool, train_set, list(label_names)
        self.run_dir, self.write = run_dir, write and run_dir is not None
        self.rows: list[dict] = []
        self.log = MetricsLog(run_dir / "rounds.jsonl") if self.write else None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def rounds(self) -> int:
        return len({r["round"] for r in self.rows})

    def add(self, rows, labels, confidence, weights=None, candidates=None, epoch: int = 0) -> dict:
        """Move pool ``rows`` (positions in the current pool) into the labeled set; returns the
        round's stats without the per-class part."""
        rows, labels = _numpy(rows, np.int64), _numpy(labels, np.int64)
        confidence = _numpy(confidence, np.float32)
        weights = np.ones(len(rows), np.float32) if weights is None else _numpy(weights, np.float32)
        round_ = self.rounds
        moved = self.pool.take(rows)
        self.train_set.extend(moved["tok"], moved["idx"], labels, weights)
        names = np.asarray(self.label_names, dtype=object)
        for i in range(len(rows)):
            gold = moved["gold"][i]
            self.rows.append({"idx": int(moved["idx"][i]), "id": moved["ids"][i], "text": moved["texts"][i],
                              "label": names[labels[i]], "confidence": float(confidence[i]),
                              "weight": float(weights[i]), "round": round_, "epoch": epoch,
                              "gold": names[gold] if gold >= 0 else ""})
        stats = round_stats(round_, epoch, labels, moved["gold"], candidates, len(self.pool), self.label_names)
        if self.write:
            self.log.write(stats)
            atomic_write_text(self.run_dir / "pseudo_labels.csv",
                              pd.DataFrame(self.rows, columns=PSEUDO_COLUMNS).to_csv(index=False))
        return {k: v for k, v in stats.items() if k != "per_class"}

    def replay(self, rows: list[dict]) -> None:
        """Redo the moves of earlier rounds (from a resume state), in their order, in one take."""
        if not rows:
            return
        moved = self.pool.take(self.pool.positions_of([r["idx"] for r in rows]))
        class_of = {name: c for c, name in enumerate(self.label_names)}
        self.train_set.extend(moved["tok"], moved["idx"], [class_of[r["label"]] for r in rows],
                              [r["weight"] for r in rows])
        self.rows.extend(rows)

    def precision(self) -> float | None:
        """The share of moved rows whose label equals the hidden gold label (None: no gold known)."""
        scored = [r for r in self.rows if r.get("gold")]
        return sum(r["label"] == r["gold"] for r in scored) / len(scored) if scored else None


def round_stats(round_: int, epoch: int, labels: np.ndarray, gold: np.ndarray, candidates, pool_left: int,
                label_names: list[str]) -> dict:
    """Diagnostics of one pseudo-label round, per class and overall (gold used only here)."""
    C = len(label_names)
    selected = np.bincount(labels, minlength=C)
    cand = np.asarray(candidates.cpu() if torch.is_tensor(candidates) else candidates) \
        if candidates is not None else selected
    scored = gold >= 0
    correct = np.bincount(labels[scored & (labels == gold)], minlength=C)
    n_scored = np.bincount(labels[scored], minlength=C)
    per_class = [{"class": label_names[c], "candidates": int(cand[c]), "selected": int(selected[c]),
                  "precision": float(correct[c] / n_scored[c]) if n_scored[c] else None} for c in range(C)]
    return {"round": round_, "epoch": epoch, "candidates": int(np.sum(cand)), "selected": int(len(labels)),
            "precision": float(correct.sum() / n_scored.sum()) if n_scored.sum() else None,
            "pool": int(pool_left), "per_class": per_class}


@dataclass
class Context:
    """What a method sees: the model, the accelerator, the data budget, the position in training."""

    model: Any
    accelerator: Any
    budget: Budget | None
    config: Any                      # sslkit.trainer.TrainConfig
    num_classes: int
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    run_dir: Path | None = None
    logged: dict = field(default_factory=dict)
    pseudo: PseudoLabels | None = None   # the pool and the pseudo-labels moved out of it
    traces: MetricsLog | None = None     # per-step traces (traces.jsonl)
    eval_batch_size: int = 128

    def trace(self, record: dict) -> None:
        """Write a per-step trace line (e.g. thresholds) to traces.jsonl."""
        if self.traces is not None and self.accelerator.is_main_process:
            self.traces.write({"epoch": self.epoch, "step": self.step, **record})

    @property
    def pool(self) -> Pool | None:
        return None if self.pseudo is None else self.pseudo.pool

    @property
    def pool_size(self) -> int:
        return 0 if self.pool is None else len(self.pool)

    def score_pool(self) -> torch.Tensor:
        """Softmax probabilities [U, C] of the current model on the whole remaining pool, batched."""
        if not self.pool_size:
            return torch.zeros(0, self.num_classes)
        logits = predict_logits(self.unwrapped_model, self.pool.texts, self.eval_batch_size, self.accelerator)
        return torch.softmax(torch.as_tensor(logits), dim=-1)

    def log(self, name: str, value) -> None:
        """Record a scalar for the current step; written to metrics.jsonl with the next log line."""
        self.logged[name] = float(value) if torch.is_tensor(value) else value

    def sup_loss(self, logits: torch.Tensor, labels: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
        """The configured supervised loss (cross-entropy with label smoothing, or focal), optionally
        weighted per example (pseudo-labels weighted by confidence): sum_i w_i l_i / B."""
        c = self.config
        if weight is None:
            return classification_loss(logits, labels, c.label_smoothing, c.focal_gamma)
        per = classification_loss(logits, labels, c.label_smoothing, c.focal_gamma, reduction="none")
        return (per * weight.to(per.dtype)).mean()

    @property
    def progress(self) -> float:
        """Training progress in [0, 1] (for ramp-ups)."""
        return self.step / max(1, self.total_steps)

    @property
    def unwrapped_model(self) -> Backbone:
        return self.accelerator.unwrap_model(self.model)
