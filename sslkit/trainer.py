"""fit(): the one training loop, for every method.

The trainer owns devices (accelerate: CPU, one GPU with bf16, several processes through
``accelerate launch``), AdamW with per-group learning rates, warm-up + cosine schedule
(transformers' ``get_scheduler``), gradient clipping, dev evaluation every epoch, the best checkpoint
by dev macro-F1, test metrics of that checkpoint, early stopping, seeded reproducibility, resume from
the last epoch checkpoint, and the run record of DESIGN.md. A method only computes the loss of a
step and reacts to step/epoch ends (:class:`sslkit.methods.base.Method`).
"""
from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .backbone import Backbone, embed
from .data import Budget, TextDataset
from .losses import classification_loss
from .methods.base import Method
from .methods.supervised import Supervised
from .metrics import classification_metrics
from .runs import MetricsLog, config_hash, reports_dir, write_json

LAST_STATE = "last_epoch.pt"


@dataclass
class TrainConfig:
    """Everything about optimisation and bookkeeping (method knobs live in the method)."""

    epochs: int = 6
    batch_size: int = 32
    unlabeled_batch_size: int | None = None  # default: same as batch_size
    lr: float = 2e-3                 # LoRA adapters
    head_lr: float | None = None     # default: lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0
    focal_alpha: list[float] | None = None
    init_head: str = "prototypes"    # "prototypes" | "random"
    early_stopping: int | None = None  # patience in epochs without a better dev macro-F1
    eval_batch_size: int = 128
    mixed_precision: str = "no"      # "no" | "bf16" | "fp16"
    device: str = "auto"             # "auto" | "cpu" | "cuda"
    seed: int = 0
    log_every: int = 10
    progress: bool | None = None     # None: on, unless $SSLKIT_PROGRESS=0 (the book runner sets it)
    save_checkpoint: bool = True
    resume: bool = True
    run_dir: str | None = None       # default: reports/runs/<run_id>
    run_name: str | None = None      # prefix of the run id (default: dataset-budget-method-seed)

    @classmethod
    def from_kwargs(cls, config: "TrainConfig | None" = None, **overrides) -> "TrainConfig":
        base = asdict(config) if config is not None else {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**{**base, **overrides})


@dataclass
class Context:
    """What a method sees: the model, the accelerator, the data budget, the position in training."""

    model: Any
    accelerator: Any
    budget: Budget
    config: TrainConfig
    num_classes: int
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    run_dir: Path | None = None
    logged: dict = field(default_factory=dict)

    def log(self, name: str, value) -> None:
        """Record a scalar for the current step; written to metrics.jsonl with the next log line."""
        self.logged[name] = float(value) if torch.is_tensor(value) else value

    def sup_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured supervised loss (cross-entropy with label smoothing, or focal)."""
        c = self.config
        return classification_loss(logits, labels, c.label_smoothing, c.focal_gamma, c.focal_alpha)

    @property
    def progress(self) -> float:
        """Training progress in [0, 1] (for ramp-ups)."""
        return self.step / max(1, self.total_steps)

    @property
    def unwrapped_model(self) -> Backbone:
        return self.accelerator.unwrap_model(self.model)


@dataclass
class RunResult:
    """What fit() returns: the summary plus where the record lives."""

    run_id: str
    run_dir: Path
    summary: dict
    history: pd.DataFrame
    model: Backbone

    @property
    def test(self) -> dict:
        return self.summary.get("test", {})

    @property
    def dev(self) -> dict:
        return self.summary.get("dev", {})

    def predictions(self) -> pd.DataFrame:
        """Test predictions of the best checkpoint: id, text, gold, pred, confidence."""
        return pd.read_csv(self.run_dir / "predictions.csv", keep_default_na=False)


# --------------------------------------------------------------------------- data plumbing
class _Tokenized(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]], idx: np.ndarray, labels: np.ndarray | None):
        self.ids, self.idx, self.labels = ids, idx, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        item = {"ids": self.ids[i], "idx": int(self.idx[i])}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item


def _collate_fn(model: Backbone):
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        batch = model.collate([it["ids"] for it in items])
        batch["idx"] = torch.tensor([it["idx"] for it in items], dtype=torch.long)
        if "label" in items[0]:
            batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        return batch

    return collate


def _epoch_loader(dataset: _Tokenized, batch_size: int, seed: int, epoch: int, collate, drop_last=False):
    """A loader whose shuffle depends only on (seed, epoch): resuming replays the same order."""
    perm = np.random.default_rng([seed, epoch]).permutation(len(dataset)).tolist()
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=perm,
                                       collate_fn=collate, drop_last=drop_last)


def _cycle(make_loader) -> Iterator[dict]:
    round_ = 0
    while True:
        for batch in make_loader(round_):
            yield batch
        round_ += 1


# --------------------------------------------------------------------------- evaluation
def predict_logits(model: Backbone, texts: Sequence[str], batch_size: int = 128,
                   accelerator=None) -> np.ndarray:
    """Logits for texts in input order. One process: plain batched inference (the same code path a
    reloaded checkpoint uses, so results match exactly). Several processes: shards + gather."""
    if accelerator is None or accelerator.num_processes == 1:
        _, logits = embed(model, texts, batch_size=batch_size, return_logits=True)
        return logits
    ids = model.tokenize(texts)
    ds = _Tokenized(ids, np.arange(len(ids)), None)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=_collate_fn(model))
    loader = accelerator.prepare_data_loader(loader)
    model.eval()
    out_logits, out_idx = [], []
    with torch.no_grad():
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits, idx = accelerator.gather_for_metrics((logits.float(), batch["idx"]))
            out_logits.append(logits.cpu())
            out_idx.append(idx.cpu())
    model.train()
    logits = torch.cat(out_logits).numpy()
    order = torch.cat(out_idx).numpy()
    result = np.zeros_like(logits)
    result[order] = logits
    return result


def evaluate(model: Backbone, dataset: TextDataset, batch_size: int = 128, accelerator=None) -> dict:
    """accuracy / macro-F1 on a labeled split, plus the raw predictions."""
    logits = predict_logits(model, dataset.texts, batch_size, accelerator)
    probs = torch.softmax(torch.as_tensor(logits), dim=-1).numpy()
    pred = probs.argmax(1)
    known = dataset.labels >= 0  # blank labels in a user's dev/test file are not scored
    metrics = classification_metrics(dataset.labels[known], pred[known], dataset.label_names)
    return {"metrics": metrics, "pred": pred, "confidence": probs.max(1), "probs": probs}


# --------------------------------------------------------------------------- records
def _versions() -> dict:
    import accelerate
    import peft
    import transformers

    from . import __version__

    return {"sslkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "numpy": np.__version__}


def budget_tag(budget: Budget) -> str:
    if budget.labeled_fraction is not None:
        return f"{budget.labeled_fraction:g}"
    if budget.per_class is not None:
        return f"{budget.per_class}pc"
    return "natural"


def run_config(model: Backbone, budget: Budget, method: Method, config: TrainConfig) -> dict:
    """Everything needed to rerun a run (and its identity: the run id hashes it)."""
    train = {k: v for k, v in asdict(config).items() if k not in ("progress", "run_dir", "resume")}
    return {
        "dataset": budget.dataset,
        "budget": budget.describe(),
        "backbone": {k: v for k, v in asdict(model.info).items() if k not in ("label_names", "path")},
        "method": method.config(),
        "train": train,
    }


def _peak_memory_mb(device: torch.device) -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _progress_enabled(config: TrainConfig, accelerator) -> bool:
    if not accelerator.is_main_process:
        return False
    if config.progress is not None:
        return config.progress
    return os.environ.get("SSLKIT_PROGRESS", "1") != "0"


# --------------------------------------------------------------------------- fit
def fit(
    model: Backbone,
    budget: Budget,
    method: Method | None = None,
    config: TrainConfig | None = None,
    **overrides: Any,
) -> RunResult:
    """Train ``model`` on ``budget`` with ``method`` (default :class:`Supervised`).

    Keyword overrides set :class:`TrainConfig` fields, e.g. ``fit(m, b, epochs=6, lr=2e-3)``.
    Writes reports/runs/<run_id>/ and returns a :class:`RunResult`. If that folder holds an epoch
    checkpoint of the same config, training resumes after that epoch.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm  # plain bars: no ipywidgets needed, text in papermill output
    from transformers import get_scheduler

    method = method or Supervised()
    config = TrainConfig.from_kwargs(config, **overrides)
    if budget.dev is None:
        raise ValueError("fit() needs a dev split to select the best epoch (Budget.dev is None)")
    cpu = config.device == "cpu"
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)
    set_seed(config.seed)
    started = time.time()

    rconf = run_config(model, budget, method, config)
    rconf_hash = config_hash(rconf)
    name = config.run_name or f"{budget.dataset}-{budget_tag(budget)}-{method.name}-s{config.seed}"
    run_id = f"{name}-{rconf_hash}"
    run_dir = Path(config.run_dir) if config.run_dir else reports_dir() / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir / "metrics.jsonl")

    # ---- resume?
    state_path = run_dir / LAST_STATE
    resume_state = None
    if config.resume and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("config_hash") == rconf_hash:
            resume_state = saved
    if resume_state is None and accelerator.is_main_process:
        for stale in ("metrics.jsonl", "summary.json", "predictions.csv"):
            (run_dir / stale).unlink(missing_ok=True)
    notebook = os.environ.get("SSLKIT_NOTEBOOK")
    if accelerator.is_main_process:
        write_json(run_dir / "config.json", {"run_id": run_id, "notebook": notebook,
                                             "versions": _versions(), "argv": sys.argv, **rconf})

    # ---- data
    labeled = budget.labeled
    tok_l = _Tokenized(model.tokenize(labeled.texts), labeled.idx, labeled.labels)
    collate = _collate_fn(model)
    tok_u = None
    if method.uses_unlabeled and len(budget.unlabeled):
        tok_u = _Tokenized(model.tokenize(budget.unlabeled.texts), budget.unlabeled.idx, None)

    # ---- head init from prototypes (LoRA's B = 0, so these are the pretrained features)
    if resume_state is None and config.init_head == "prototypes":
        feats = embed(model, labeled.texts, batch_size=config.eval_batch_size)
        model.init_head_from_prototypes(feats, labeled.labels)

    # ---- optimiser: LoRA and head groups, no decay on the head scale-free cosine weights' norm
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config.head_lr or config.lr}]
    if body_params:
        groups.append({"params": body_params, "lr": config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    steps_per_epoch = math.ceil(len(tok_l) / (config.batch_size * accelerator.num_processes))
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_scheduler(config.scheduler, optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_steps * accelerator.num_processes),
                              num_training_steps=total_steps * accelerator.num_processes)
    pmodel, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ctx = Context(model=pmodel, accelerator=accelerator, budget=budget, config=config,
                  num_classes=len(budget.label_names), steps_per_epoch=steps_per_epoch,
                  total_steps=total_steps, run_dir=run_dir)
    method.setup(ctx)

    start_epoch, best = 1, {"dev_macro_f1": -1.0, "epoch": 0, "state": None}
    bad_epochs = 0
    if resume_state is not None:
        model.load_trainable_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        method.load_state_dict(resume_state["method"])
        best = resume_state["best"]
        bad_epochs = resume_state["bad_epochs"]
        start_epoch = resume_state["epoch"] + 1
        ctx.step = resume_state["step"]
        if accelerator.is_main_process:
            log.truncate_after(resume_state["epoch"])
        accelerator.print(f"resuming {run_id} after epoch {resume_state['epoch']}")

    show = _progress_enabled(config, accelerator)
    train_seconds = resume_state["train_seconds"] if resume_state else 0.0
    n_seen = resume_state["n_seen"] if resume_state else 0
    stopped_early = False
    for epoch in range(start_epoch, config.epochs + 1):
        ctx.epoch = epoch
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout: same stream with or without resume
        loader = accelerator.prepare_data_loader(
            _epoch_loader(tok_l, config.batch_size, config.seed, epoch, collate))
        unl_iter = None
        if tok_u is not None:
            ubs = config.unlabeled_batch_size or config.batch_size
            unl_iter = _cycle(lambda r: accelerator.prepare_data_loader(
                _epoch_loader(tok_u, ubs, config.seed + 7919, epoch * 1000 + r, collate, drop_last=False)))
        pmodel.train()
        t0 = time.time()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not show, leave=False)
        for lab_batch in bar:
            batch = {"labeled": lab_batch, "unlabeled": next(unl_iter) if unl_iter else None}
            out = method.loss(batch, ctx)
            accelerator.backward(out["loss"])
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(pmodel.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ctx.step += 1
            n_seen += lab_batch["input_ids"].shape[0] * accelerator.num_processes
            method.after_step(ctx)
            loss_value = float(out["loss"].detach())
            losses.append(loss_value)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if ctx.step % config.log_every == 0 and accelerator.is_main_process:
                parts = {k: float(v) for k, v in out.items() if k != "loss"}
                log.write({"epoch": epoch, "step": ctx.step, "train_loss": loss_value,
                           "lr": scheduler.get_last_lr()[-1], **parts, **ctx.logged})
                ctx.logged = {}
        epoch_seconds = time.time() - t0
        train_seconds += epoch_seconds
        stats = method.after_epoch(ctx) or {}

        dev = evaluate(accelerator.unwrap_model(pmodel), budget.dev, config.eval_batch_size, accelerator)
        dev_m = dev["metrics"]
        improved = dev_m["macro_f1"] > best["dev_macro_f1"]
        if improved:
            best = {"dev_macro_f1": dev_m["macro_f1"], "epoch": epoch,
                    "state": accelerator.unwrap_model(pmodel).trainable_state_dict()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if accelerator.is_main_process:
            log.write({"epoch": epoch, "step": ctx.step, "epoch_loss": float(np.mean(losses)) if losses else None,
                       "dev_accuracy": dev_m["accuracy"], "dev_macro_f1": dev_m["macro_f1"],
                       "epoch_seconds": epoch_seconds, "best_epoch": best["epoch"], **stats})
            if show:
                tqdm.write(f"epoch {epoch}: loss {np.mean(losses):.4f} dev acc {dev_m['accuracy']:.4f} "
                           f"macro-F1 {dev_m['macro_f1']:.4f} ({epoch_seconds:.0f}s)")
            torch.save({"config_hash": rconf_hash, "epoch": epoch, "step": ctx.step,
                        "model": accelerator.unwrap_model(pmodel).trainable_state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "method": method.state_dict(), "best": best, "bad_epochs": bad_epochs,
                        "train_seconds": train_seconds, "n_seen": n_seen},
                       str(state_path) + ".tmp")
            os.replace(str(state_path) + ".tmp", state_path)
        accelerator.wait_for_everyone()
        if config.early_stopping is not None and bad_epochs >= config.early_stopping:
            stopped_early = True
            break

    # ---- the best checkpoint: test metrics, predictions, saved adapter + head
    final = accelerator.unwrap_model(pmodel)
    if best["state"] is not None:
        final.load_trainable_state_dict(best["state"])
    final.eval()
    dev = evaluate(final, budget.dev, config.eval_batch_size, accelerator)
    test = evaluate(final, budget.test, config.eval_batch_size, accelerator) if budget.test is not None else None
    summary = {
        "run_id": run_id, "notebook": notebook, "dataset": budget.dataset, "budget": budget_tag(budget),
        "method": method.name, "backbone": model.info.name, "seed": config.seed,
        "n_labeled": len(budget.labeled), "n_unlabeled": len(budget.unlabeled),
        "best_epoch": best["epoch"], "epochs_run": ctx.epoch, "stopped_early": stopped_early,
        "dev": dev["metrics"], "test": test["metrics"] if test else None,
        "train_seconds": train_seconds, "minutes": (time.time() - started) / 60.0,
        "train_samples_per_second": n_seen / train_seconds if train_seconds else None,
        "trainable_parameters": model.num_parameters(trainable=True),
        "device": str(accelerator.device), "num_processes": accelerator.num_processes,
        "mixed_precision": config.mixed_precision, **_peak_memory_mb(accelerator.device),
    }
    if accelerator.is_main_process:
        if test is not None:
            names = np.asarray(budget.label_names, dtype=object)
            pd.DataFrame({"id": budget.test.ids, "text": budget.test.texts,
                          "gold": names[budget.test.labels], "pred": names[test["pred"]],
                          "confidence": test["confidence"]}).to_csv(run_dir / "predictions.csv", index=False)
        if config.save_checkpoint:
            ckpt = run_dir / "checkpoint"
            if ckpt.exists():
                shutil.rmtree(ckpt)
            final.save(ckpt, label_names=budget.label_names)
        write_json(run_dir / "summary.json", summary)
        state_path.unlink(missing_ok=True)  # finished: the epoch checkpoint is no longer needed
    accelerator.wait_for_everyone()
    history = pd.DataFrame(log.read())
    return RunResult(run_id=run_id, run_dir=run_dir, summary=summary, history=history, model=final)
