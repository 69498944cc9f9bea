"""fit(): the one training loop, for every method, in named phases.

    open the run       id from what changes results, reuse a finished record, resume an epoch checkpoint
    build the training data (labeled set, pool, pseudo-labels), prototype head, optimiser, schedule
    train an epoch     the method's loss per step, the optimiser step, the method's hooks
    evaluate           dev (and test if tracked) for the model and any extra weights the method offers;
                       the best on dev macro-F1, over epochs, is the checkpoint that gets tested
    save               the epoch checkpoint (resume state) every ``resume_every`` seconds of training
    finish             test metrics of the best checkpoint, predictions, saved adapter + head, summary

The trainer owns devices and precision (accelerate: CPU, one GPU, several processes through
``accelerate launch``), AdamW with per-group learning rates, warm-up + cosine schedule (transformers'
``get_scheduler``), gradient clipping, early stopping and seeded reproducibility. A method only
computes the loss of a step and reacts to step and epoch ends (:class:`sslkit.methods.base.Method`).
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .backbones import Backbone, embed
from .batches import Pool, TrainingSet, collate_fn, epoch_loader, stream
from .context import PSEUDO_COLUMNS, Context, PseudoLabels
from .data import Budget
from .devices import resolve_device, resolve_precision
from .inference import evaluate
from .methods.base import Method
from .presets import resolve_method
from .runs import (LAST_STATE, MetricsLog, budget_tag, finished_record, peak_memory_mb, reports_dir, run_config,
                   run_identity, versions, write_json)
from .tracking import Tracker


@dataclass
class TrainConfig:
    """Optimisation settings: everything here can change a result, so all of it enters the run id."""

    epochs: int = 6
    batch_size: int = 32
    group_by_length: int = 16        # batches of similar lengths from shuffled groups of this many batches (0: plain shuffle)
    lr: float = 2e-3                 # LoRA adapters
    head_lr: float | None = None     # default: lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    fused_optimizer: bool = False    # torch's fused AdamW: one kernel for the whole update (large tables)
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0
    early_stopping: int | None = None  # patience in epochs without a better dev macro-F1
    mixed_precision: str = "auto"    # "auto" (bf16 on a GPU that has it, else fp32) | "no" | "bf16" | "fp16"
    seed: int = 0
    steps_per_epoch: int | None = None  # default: one pass over the initial labeled set


@dataclass
class RunOptions:
    """Bookkeeping: where and how a run is recorded and shown. None of it changes a result."""

    device: str = "auto"             # "auto" | "cpu" | "cuda"
    eval_batch_size: int = 128
    log_every: int = 10
    progress: bool | None = None     # None: on, unless $SSLKIT_PROGRESS=0 (the book runner sets it)
    save_checkpoint: bool = True
    resume: bool = True
    resume_every: float = 30.0       # seconds of training between epoch checkpoints (0: after every epoch)
    run_dir: str | None = None       # default: reports/runs/<run_id>
    run_name: str | None = None      # prefix of the run id (default: dataset-budget-method-seed)
    label: str | None = None         # the method's name in the record (default: the preset's or the method's)
    track_test: bool = False         # also score test after every epoch (learning curves per round)
    reuse: bool = False              # a finished run of the same identity is loaded, not retrained
    tracker: str | None = None       # "mlflow" | "tensorboard" | both, comma-separated; None: $SSLKIT_TRACKER


def split_options(config: TrainConfig | None = None, **overrides: Any) -> tuple[TrainConfig, RunOptions]:
    """fit()'s keywords sorted into the two dataclasses; an unknown keyword fails with the known ones."""
    train_keys = {f.name for f in fields(TrainConfig)}
    run_keys = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(overrides) - train_keys - run_keys)
    if unknown:
        raise TypeError(f"unknown training options {unknown}; known: {sorted(train_keys | run_keys)}")
    base = asdict(config) if config is not None else {}
    train = TrainConfig(**{**base, **{k: v for k, v in overrides.items() if k in train_keys}})
    return train, RunOptions(**{k: v for k, v in overrides.items() if k in run_keys})


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
        return self.summary.get("test") or {}

    @property
    def dev(self) -> dict:
        return self.summary.get("dev") or {}

    def predictions(self) -> pd.DataFrame:
        """Test predictions of the best checkpoint: id, text, gold, pred, confidence."""
        return pd.read_csv(self.run_dir / "predictions.csv", keep_default_na=False)

    def pseudo_labels(self) -> pd.DataFrame:
        """The pool texts the rounds moved into the labeled set, every cell a string (ids stay as
        written): idx, id, text, label, confidence, weight, round, epoch and gold ("" where the pool's
        gold label is unknown). No rows when the run moved none."""
        table = self.run_dir / "pseudo_labels.csv"
        if not table.is_file():
            return pd.DataFrame(columns=PSEUDO_COLUMNS)
        return pd.read_csv(table, dtype=str, keep_default_na=False)


#: fit() keywords per backbone family; the FastText presets take sslkit.backbones.fasttext.train_defaults_for on top.
PRETRAINED_TRAIN_DEFAULTS = {"epochs": 6, "batch_size": 32, "lr": 2e-3}


def train_defaults(backbone: str = "minilm", **overrides: Any) -> dict:
    """The fit() keywords a notebook passes: the backbone's recommended values (LoRA on a pretrained
    model: 6 epochs, batch 32, lr 2e-3; FastText: :data:`sslkit.backbones.fasttext.TRAIN_DEFAULTS`), then every
    override that is not None -- so a notebook parameter left at None means "the backbone's default"."""
    from .backbones.fasttext import is_fasttext, train_defaults_for

    out = dict(PRETRAINED_TRAIN_DEFAULTS)
    if is_fasttext(backbone):
        out.update(train_defaults_for(backbone))
    out.update({k: v for k, v in overrides.items() if v is not None})
    split_options(**out)  # unknown keywords fail here, with the list of known ones
    return out


def results_table(results: dict[str, RunResult], baseline: str | None = None) -> pd.DataFrame:
    """One row per named run: test accuracy / macro-F1 (and the change against ``baseline``), best
    epoch, the weights tested, pseudo-labels, minutes and training samples per second."""
    rows = {}
    for name, r in results.items():
        s = r.summary
        rows[name] = {"accuracy": r.test.get("accuracy"), "macro_f1": r.test.get("macro_f1"),
                      "best_epoch": s.get("best_epoch"), "tested": s.get("best_variant", "model"),
                      "n_pseudo": s.get("n_pseudo_labeled", 0), "minutes": s.get("minutes"),
                      "samples_per_s": s.get("train_samples_per_second"), "seed": s.get("seed"),
                      "run_id": r.run_id}
    table = pd.DataFrame.from_dict(rows, orient="index")
    if baseline is not None and baseline in table.index:
        table.insert(2, "delta_accuracy", table["accuracy"] - table.loc[baseline, "accuracy"])
    return table


# --------------------------------------------------------------------------- the phases' state
@dataclass
class _Run:
    """The run's identity and records (phase "open the run")."""

    run_id: str
    run_dir: Path
    identity: str                    # the hash of run_config: same identity, same result
    label: str                       # the method's name in the record (a preset's name, else the method's)
    config: TrainConfig
    options: RunOptions
    accelerator: Any
    metrics: MetricsLog
    traces: MetricsLog
    started: float
    tracker: Tracker
    resume_state: dict | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def state_path(self) -> Path:
        return self.run_dir / LAST_STATE


@dataclass
class _Progress:
    """Where training stands: the best checkpoint so far and the counters a resume restores."""

    start_epoch: int = 1
    best: dict = field(default_factory=lambda: {"dev_macro_f1": -1.0, "epoch": 0, "state": None})
    # dev / test of the best checkpoint as scored during training: the final report reuses them
    # (same weights, same texts, same code: the same numbers) instead of scoring again
    best_eval: dict = field(default_factory=dict)
    bad_epochs: int = 0
    train_seconds: float = 0.0
    saved_at: float = 0.0            # the training time in the last epoch checkpoint
    n_seen: int = 0
    stopped_early: bool = False


@dataclass
class _Training:
    """What the loop works with (phase "build")."""

    model: Backbone                  # the unwrapped model
    prepared: Any                    # the model as accelerate prepared it (DDP-wrapped on several processes)
    method: Method
    optimizer: Any
    scheduler: Any
    ctx: Context
    pseudo: PseudoLabels
    collate: Any
    progress: _Progress = field(default_factory=_Progress)
    epoch_record: dict = field(default_factory=dict)  # the current epoch's line of metrics.jsonl

    @property
    def trainable(self) -> list:
        """The parameters that train (LoRA, head): the only ones with gradients to clip."""
        return [p for p in self.prepared.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- fit
def fit(model: Backbone, budget: Budget, method: Method | str | None = None, config: TrainConfig | None = None,
        **overrides: Any) -> RunResult:
    """Train ``model`` on ``budget`` with ``method``: a :class:`~sslkit.methods.base.Method`, or the
    name of a preset (:func:`sslkit.presets.preset_names`); default supervised.

    Keyword overrides set :class:`TrainConfig` or :class:`RunOptions` fields, e.g.
    ``fit(m, b, "fixmatch", epochs=6, lr=2e-3)``; a preset's own training settings come first.
    Writes reports/runs/<run_id>/ and returns a :class:`RunResult`. If that folder holds an epoch
    checkpoint of the same identity, training resumes after that epoch. Without a dev split (a
    user's file) the last epoch is kept.
    """
    method, label, overrides = resolve_method(method, overrides)
    config, options = split_options(config, **overrides)
    label = options.label or label
    run = open_run(model, budget, method, label, config, options)
    if isinstance(run, RunResult):
        return run
    training = build_training(run, model, budget, method)
    if run.resume_state is not None:
        restore(run, training)
    for epoch in range(training.progress.start_epoch, config.epochs + 1):
        train_epoch(run, training, epoch)
        stop = evaluate_epoch(run, training, budget, epoch)
        save_epoch_state(run, training, epoch)
        if stop:
            training.progress.stopped_early = True
            break
    return finish(run, training, budget)


def open_run(model: Backbone, budget: Budget, method: Method, label: str, config: TrainConfig,
             options: RunOptions) -> _Run | RunResult:
    """The run id (a hash of what changes results), its folder and logs; a finished record of the
    same identity when ``reuse`` (returned as the RunResult), an epoch checkpoint to resume from."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    device = resolve_device(options.device)
    precision = resolve_precision(config.mixed_precision, device)
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    set_seed(config.seed)
    rconf = run_config(model, budget, method, config, device=device, precision=precision)
    identity = run_identity(rconf)
    name = options.run_name or f"{budget.dataset}-{budget_tag(budget)}-{label}-s{config.seed}"
    run_id = f"{name}-{identity}"
    run_dir = Path(options.run_dir) if options.run_dir else reports_dir() / "runs" / run_id
    if options.reuse:
        found = _finished_run(run_dir, identity, search=options.run_dir is None)
        if found is not None:
            return RunResult(run_id=found[0].name, run_dir=found[0], **found[1])
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(run_id=run_id, run_dir=run_dir, identity=identity, label=label, config=config, options=options,
               accelerator=accelerator, metrics=MetricsLog(run_dir / "metrics.jsonl"),
               traces=MetricsLog(run_dir / "traces.jsonl"), started=time.time(),
               tracker=Tracker(options.tracker or "auto"))
    if options.resume and run.state_path.is_file():
        saved = torch.load(run.state_path, map_location="cpu", weights_only=False)
        if saved.get("identity") == identity:
            run.resume_state = saved
    if run.resume_state is None and run.main:
        for stale in ("metrics.jsonl", "traces.jsonl", "rounds.jsonl", "summary.json",
                      "predictions.csv", "pseudo_labels.csv"):
            (run_dir / stale).unlink(missing_ok=True)
    config_record = {"run_id": run_id, "label": label, "notebook": os.environ.get("SSLKIT_NOTEBOOK"),
                     "identity": identity, "versions": versions(), **rconf}
    if run.main:
        write_json(run_dir / "config.json", config_record)
    run.tracker.start(run_id, config_record)  # a view of the record in MLflow / TensorBoard, when asked for
    _say(run, f"{run_id}: {'resuming' if run.resume_state else 'training'} on {device} ({precision})")
    return run


def _finished_run(run_dir: Path, identity: str, search: bool) -> tuple[Path, dict] | None:
    """A finished record of ``identity``: in ``run_dir``, else (``search``) under any other name in
    the same runs folder. The identity hashes everything that decides the result, so a run that
    another label trained (the recipe's FixMatch stage, trained as "recipe") is the same run."""
    done = finished_record(run_dir, identity)
    if done is not None:
        return run_dir, done
    others = sorted(p for p in run_dir.parent.glob(f"*-{identity}") if p != run_dir) if search else []
    for other in others:
        done = finished_record(other, identity)
        if done is not None:
            return other, done
    return None


def build_training(run: _Run, model: Backbone, budget: Budget, method: Method) -> _Training:
    """Labeled set and pool, prototype head, the method's modules, optimiser and schedule, context."""
    from transformers import get_scheduler

    config, acc = run.config, run.accelerator
    # label-free corpus statistics (FastText IDF weights): all training texts, every method alike
    model.adapt_to_corpus(list(budget.labeled.texts) + list(budget.unlabeled.texts))
    labeled = budget.labeled
    train_set = TrainingSet(model.tokenize(labeled.texts), labeled.idx, labeled.labels)
    pool = None
    if method.uses_unlabeled and len(budget.unlabeled):
        u = budget.unlabeled
        pool = Pool(u.texts, model.tokenize(u.texts), u.idx, u.ids, budget.unlabeled_gold)
    pseudo = PseudoLabels(pool, train_set, budget.label_names, run.run_dir, write=run.main)
    if run.resume_state is None:  # LoRA's B = 0, so these are the pretrained features
        model.init_head_from_prototypes(embed(model, labeled.texts, batch_size=run.options.eval_batch_size),
                                        labeled.labels)
    method.configure_model(model)  # e.g. a projection head: before the optimiser sees the parameters
    optimizer = _optimizer(model, config)
    steps_per_epoch = config.steps_per_epoch or math.ceil(len(train_set) / (config.batch_size * acc.num_processes))
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_scheduler(config.scheduler, optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_steps) * acc.num_processes,
                              num_training_steps=total_steps * acc.num_processes)
    prepared, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    ctx = Context(model=prepared, accelerator=acc, budget=budget, config=config,
                  num_classes=len(budget.label_names), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                  run_dir=run.run_dir, pseudo=pseudo, traces=run.traces,
                  eval_batch_size=run.options.eval_batch_size)
    method.setup(ctx)
    return _Training(model=model, prepared=prepared, method=method, optimizer=optimizer, scheduler=scheduler,
                     ctx=ctx, pseudo=pseudo, collate=collate_fn(model))


def _optimizer(model: Backbone, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over two parameter groups, the head's (``head_lr``) and the rest's (``lr``)."""
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config.head_lr or config.lr}]
    if body_params:
        groups.append({"params": body_params, "lr": config.lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay,
                             fused=True if config.fused_optimizer else None)


def restore(run: _Run, training: _Training) -> None:
    """Continue after the epoch checkpoint: weights, optimiser, schedule, method state, pseudo-labels."""
    state, p = run.resume_state, training.progress
    training.model.load_trainable_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.method.load_state_dict(state["method"])
    training.pseudo.replay(state.get("pseudo", []))
    p.best, p.bad_epochs, p.start_epoch = state["best"], state["bad_epochs"], state["epoch"] + 1
    p.train_seconds = p.saved_at = state["train_seconds"]
    p.n_seen = state["n_seen"]
    training.ctx.step = state["step"]
    if run.main:
        for log in (run.metrics, run.traces, MetricsLog(run.run_dir / "rounds.jsonl")):
            log.truncate_after(state["epoch"])
    run.accelerator.print(f"resuming {run.run_id} after epoch {state['epoch']}")


def _batches(run: _Run, training: _Training, epoch: int):
    """This epoch's labeled batches (one pass over the labeled set, or ``steps_per_epoch``) zipped
    with an endless stream of pool batches, ``method.mu`` times larger."""
    config, acc, ctx = run.config, run.accelerator, training.ctx
    labeled = stream(lambda r: acc.prepare_data_loader(epoch_loader(
        training.pseudo.train_set, config.batch_size, config.seed, epoch * 1000 + r, training.collate,
        batches=training.method.labeled_batches, group_by_length=config.group_by_length)), ctx.steps_per_epoch)
    unlabeled = None
    if ctx.pool_size:
        view = ctx.pool.view()
        unlabeled = stream(lambda r: acc.prepare_data_loader(epoch_loader(
            view, training.method.mu * config.batch_size, config.seed + 7919, epoch * 1000 + r,
            training.collate, group_by_length=config.group_by_length)))
    for batch in labeled:
        yield {"labeled": batch, "unlabeled": next(unlabeled) if unlabeled else None}


def train_epoch(run: _Run, training: _Training, epoch: int) -> None:
    """One epoch of optimiser steps; the method's after_step / after_epoch hooks; the loss logged."""
    config, acc, ctx, p = run.config, run.accelerator, training.ctx, training.progress
    ctx.epoch = epoch
    torch.manual_seed(config.seed * 1000 + epoch)  # dropout: the same stream with or without a resume
    training.prepared.train()
    # the losses stay on the device: reading one waits for the GPU, so they are read once per log
    # line and once per epoch, not every step (the CPU queues the next step meanwhile)
    t0, losses = time.time(), []
    bar = _bar(run, _batches(run, training, epoch), total=ctx.steps_per_epoch,
               desc=f"{run.label} s{config.seed} · epoch {epoch}/{config.epochs}")
    for batch in bar:
        out = training.method.loss(batch, ctx)
        acc.backward(out["loss"])
        if config.max_grad_norm:
            acc.clip_grad_norm_(training.trainable, config.max_grad_norm)
        training.optimizer.step()
        training.scheduler.step()
        training.optimizer.zero_grad(set_to_none=True)
        ctx.step += 1
        p.n_seen += batch["labeled"]["input_ids"].shape[0] * acc.num_processes
        training.method.after_step(ctx)
        losses.append(out["loss"].detach())
        if ctx.step % run.options.log_every == 0 and run.main:
            line = {"epoch": epoch, "step": ctx.step, "train_loss": float(losses[-1]),
                    "lr": training.scheduler.get_last_lr()[-1],
                    **{k: float(v) for k, v in out.items() if k != "loss"}, **ctx.logged}
            bar.set_postfix(loss=f"{line['train_loss']:.3f}")
            run.metrics.write(line)
            run.tracker.log(line, step=ctx.step)
            ctx.logged = {}
    seconds = time.time() - t0
    p.train_seconds += seconds
    stats = training.method.after_epoch(ctx) or {}  # a round may move pool rows: the sizes below are after it
    training.epoch_record = {"epoch": epoch, "step": ctx.step, "epoch_loss": float(torch.stack(losses).float().mean()) if losses else None,
                             "epoch_seconds": seconds, "n_train": len(training.pseudo.train_set),
                             "pool": ctx.pool_size, **stats}


def evaluate_epoch(run: _Run, training: _Training, budget: Budget, epoch: int) -> bool:
    """Score the model, and every extra set of weights the method offers (a mean teacher), on dev;
    keep the best over epochs. Returns whether early stopping ends training here."""
    model, p, record = training.model, training.progress, training.epoch_record
    student = model.trainable_state_dict()
    variants = {"": student, **{f"_{k}": v for k, v in training.method.eval_states(training.ctx).items()}}
    improved = False
    for suffix, state in variants.items():
        with model.holding(state if suffix else None):
            scored = _score_splits(run, model, budget)
        for split, result in scored.items():
            record.update({f"{split}_{m}{suffix}": result["metrics"][m] for m in ("accuracy", "macro_f1")})
        # no dev split: the last epoch (of the model itself) is the best
        score = scored["dev"]["metrics"]["macro_f1"] if "dev" in scored else float(epoch)
        if score > p.best["dev_macro_f1"]:
            p.best = {"dev_macro_f1": score, "epoch": epoch, "state": state, "variant": suffix[1:] or "model"}
            p.best_eval, improved = scored, True
    p.bad_epochs = 0 if improved else p.bad_epochs + 1
    record["best_epoch"] = p.best["epoch"]
    if run.main:
        run.metrics.write(record)
        run.tracker.log(record, step=training.ctx.step)
        _say(run, f"{run.label} s{run.config.seed} · epoch {epoch}: loss {record['epoch_loss']:.4f} dev acc "
                  f"{record.get('dev_accuracy', float('nan')):.4f} macro-F1 "
                  f"{record.get('dev_macro_f1', float('nan')):.4f} ({record['epoch_seconds']:.0f}s)")
    return run.config.early_stopping is not None and p.bad_epochs >= run.config.early_stopping


def _score_splits(run: _Run, model: Backbone, budget: Budget) -> dict:
    """dev (when the budget has one) and test (when tracked) of the model as it is."""
    splits = ["dev"] + (["test"] if run.options.track_test else [])
    return {s: evaluate(model, getattr(budget, s), run.options.eval_batch_size, run.accelerator)
            for s in splits if getattr(budget, s) is not None}


def save_epoch_state(run: _Run, training: _Training, epoch: int) -> None:
    """The resume state, once ``resume_every`` seconds of training went in since the last one, and
    not after the last epoch (a FastText epoch takes under a second; writing its state costs a
    noticeable share of that, while a LoRA epoch saves every time)."""
    p = training.progress
    if p.train_seconds - p.saved_at >= run.options.resume_every and epoch < run.config.epochs:
        p.saved_at = p.train_seconds
        if run.main:
            tmp = str(run.state_path) + ".tmp"
            torch.save({"identity": run.identity, "epoch": epoch, "step": training.ctx.step,
                        "model": training.model.trainable_state_dict(),
                        "optimizer": training.optimizer.state_dict(), "scheduler": training.scheduler.state_dict(),
                        "method": training.method.state_dict(), "best": p.best, "bad_epochs": p.bad_epochs,
                        "train_seconds": p.train_seconds, "n_seen": p.n_seen, "pseudo": training.pseudo.rows}, tmp)
            os.replace(tmp, run.state_path)
    run.accelerator.wait_for_everyone()


def finish(run: _Run, training: _Training, budget: Budget) -> RunResult:
    """The best checkpoint: its dev / test metrics, test predictions, saved adapter + head, summary."""
    model, p = training.model, training.progress
    if p.best["state"] is not None:
        model.load_trainable_state_dict(p.best["state"])
    model.eval()
    scored = {}
    for split in ("dev", "test"):  # reuse the scores of these very weights from training where there are some
        data = getattr(budget, split)
        scored[split] = p.best_eval.get(split) or (
            evaluate(model, data, run.options.eval_batch_size, run.accelerator) if data is not None else None)
    summary = _summary(run, training, budget, scored)
    if run.main:
        if scored["test"] is not None:
            _write_predictions(run.run_dir, budget, scored["test"])
        if run.options.save_checkpoint:
            ckpt = run.run_dir / "checkpoint"
            if ckpt.exists():
                shutil.rmtree(ckpt)
            model.save(ckpt, label_names=budget.label_names)
        write_json(run.run_dir / "summary.json", summary)
        run.state_path.unlink(missing_ok=True)  # finished: the epoch checkpoint is no longer needed
    run.tracker.finish(summary)
    run.accelerator.wait_for_everyone()
    return RunResult(run_id=run.run_id, run_dir=run.run_dir, summary=summary,
                     history=pd.DataFrame(run.metrics.read()), model=model)


def _summary(run: _Run, training: _Training, budget: Budget, scored: dict) -> dict:
    p, model, acc = training.progress, training.model, run.accelerator
    return {
        "run_id": run.run_id, "notebook": os.environ.get("SSLKIT_NOTEBOOK"), "dataset": budget.dataset,
        "budget": budget_tag(budget), "method": run.label, "algorithm": training.method.name,
        "backbone": model.info.name, "seed": run.config.seed,
        "n_labeled": len(budget.labeled), "n_unlabeled": len(budget.unlabeled),
        "n_pseudo_labeled": len(training.pseudo), "pseudo_label_precision": training.pseudo.precision(),
        "best_epoch": p.best["epoch"], "best_variant": p.best.get("variant", "model"),
        "epochs_run": training.ctx.epoch, "stopped_early": p.stopped_early,
        "dev": scored["dev"]["metrics"] if scored["dev"] else None,
        "test": scored["test"]["metrics"] if scored["test"] else None,
        "train_seconds": p.train_seconds, "minutes": (time.time() - run.started) / 60.0,
        "train_samples_per_second": p.n_seen / p.train_seconds if p.train_seconds else None,
        "trainable_parameters": model.num_parameters(trainable=True),
        "device": str(acc.device), "num_processes": acc.num_processes, "mixed_precision": acc.mixed_precision,
        **peak_memory_mb(acc.device),
    }


def _write_predictions(run_dir: Path, budget: Budget, test: dict) -> None:
    names = np.asarray(budget.label_names, dtype=object)
    known = budget.test.labels >= 0
    gold = np.where(known, names[np.clip(budget.test.labels, 0, None)], "")
    pd.DataFrame({"id": budget.test.ids, "text": budget.test.texts, "gold": gold,
                  "pred": names[test["pred"]], "confidence": test["confidence"]}
                 ).to_csv(run_dir / "predictions.csv", index=False)


def _progress_mode(run: _Run) -> str | None:
    """Where progress goes: "terminal" (the book runner's terminal, below), "auto" (a widget in
    Jupyter, text elsewhere) or None (off: ``progress=False``, ``$SSLKIT_PROGRESS=0``, other processes).

    Under ``sslkit book`` / ``sslkit run`` on a terminal, $SSLKIT_PROGRESS=terminal: the bars go to
    the terminal the kernel inherited from the command (:func:`_terminal`), so they show there
    while the executed notebook stays free of them."""
    env = os.environ.get("SSLKIT_PROGRESS", "1")
    if not run.main or run.options.progress is False or (env == "0" and not run.options.progress):
        return None
    return "terminal" if env == "terminal" else "auto"


@functools.lru_cache(maxsize=1)
def _terminal():
    """The terminal the kernel was started from. ipykernel sends whatever reaches file descriptor 2
    into the notebook too, and keeps the original descriptor as ``sys.stderr.fileno()``; writing
    there reaches the terminal alone (in a plain process it is descriptor 2 itself)."""
    return open(sys.stderr.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process


def _bar(run: _Run, iterable, total: int, desc: str):
    mode = _progress_mode(run)
    if mode == "terminal":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=_terminal(), leave=False, dynamic_ncols=True)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=mode is None, leave=False)


def _say(run: _Run, line: str) -> None:
    """One line of progress (an epoch's scores, a run starting) where the bars go."""
    mode = _progress_mode(run)
    if mode is not None:
        from tqdm import tqdm

        tqdm.write(line, file=_terminal() if mode == "terminal" else None)
