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
from .runs import MetricsLog, config_hash, dataclass_values, reports_dir, write_json
from .sampling import length_grouped_batches

LAST_STATE = "last_epoch.pt"


@dataclass
class TrainConfig:
    """Everything about optimisation and bookkeeping (method knobs live in the method)."""

    epochs: int = 6
    batch_size: int = 32
    unlabeled_batch_size: int | None = None  # default: same as batch_size
    group_by_length: int = 16        # batches of similar lengths from shuffled groups of this many batches (0: plain shuffle)
    lr: float = 2e-3                 # LoRA adapters
    head_lr: float | None = None     # default: lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    fused_optimizer: bool = False    # torch's fused AdamW (one kernel per step; same update up to the last bit)
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
    resume_every: float = 30.0       # seconds of training between epoch checkpoints (0: after every epoch)
    run_dir: str | None = None       # default: reports/runs/<run_id>
    run_name: str | None = None      # prefix of the run id (default: dataset-budget-method-seed)
    steps_per_epoch: int | None = None  # default: one pass over the initial labeled set
    track_test: bool = False         # also score test after every epoch (learning curves per round)
    reuse: bool = False              # a finished run of the same config is loaded, not retrained

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
    train_set: Any = None            # _TrainingSet: the labeled examples, growing with pseudo-labels
    pool: Any = None                 # _Pool: the unlabeled examples not yet moved
    traces: Any = None               # MetricsLog of per-step traces (traces.jsonl)

    def trace(self, record: dict) -> None:
        """Write a per-step trace line (e.g. thresholds) to traces.jsonl."""
        if self.traces is not None and self.accelerator.is_main_process:
            self.traces.write({"epoch": self.epoch, "step": self.step, **record})

    @property
    def pool_size(self) -> int:
        return 0 if self.pool is None else len(self.pool)

    def score_pool(self, batch_size: int | None = None) -> torch.Tensor:
        """Softmax probabilities [U, C] of the current model on the whole remaining pool, batched."""
        if not self.pool_size:
            return torch.zeros(0, self.num_classes)
        logits = predict_logits(self.unwrapped_model, self.pool.texts,
                                batch_size or self.config.eval_batch_size, self.accelerator)
        return torch.softmax(torch.as_tensor(logits), dim=-1)

    def add_pseudo_labels(self, rows, labels, confidence, weights=None, candidates=None) -> dict:
        """Move pool ``rows`` (positions in the current pool) into the labeled set with pseudo-labels.

        The trainer, not the method, scores them against the hidden gold labels (when known) and
        records round diagnostics: per class candidates, selected, precision, and the pool size.
        """
        return self._add_pseudo(self, rows, labels, confidence, weights, candidates)

    _add_pseudo: Any = None

    def log(self, name: str, value) -> None:
        """Record a scalar for the current step; written to metrics.jsonl with the next log line."""
        self.logged[name] = float(value) if torch.is_tensor(value) else value

    def sup_loss(self, logits: torch.Tensor, labels: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
        """The configured supervised loss (cross-entropy with label smoothing, or focal), optionally
        weighted per example (pseudo-labels weighted by confidence): sum_i w_i l_i / B."""
        c = self.config
        if weight is None:
            return classification_loss(logits, labels, c.label_smoothing, c.focal_gamma, c.focal_alpha)
        per = classification_loss(logits, labels, c.label_smoothing, c.focal_gamma, c.focal_alpha,
                                  reduction="none")
        return (per * weight.to(per.dtype)).mean()

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


#: fit() keywords per backbone family; the FastText presets take sslkit.fasttext.train_defaults_for on top.
PRETRAINED_TRAIN_DEFAULTS = {"epochs": 6, "batch_size": 32, "lr": 2e-3}


def train_defaults(backbone: str = "minilm", **overrides: Any) -> dict:
    """The fit() keywords a notebook passes: the backbone's recommended values (LoRA on a pretrained
    model: 6 epochs, batch 32, lr 2e-3; FastText: :data:`sslkit.fasttext.TRAIN_DEFAULTS`), then every
    override that is not None -- so a notebook parameter left at None means "the backbone's default"."""
    out = dict(PRETRAINED_TRAIN_DEFAULTS)
    from .fasttext import is_fasttext, train_defaults_for

    if is_fasttext(backbone):
        out.update(train_defaults_for(backbone))
    out.update({k: v for k, v in overrides.items() if v is not None})
    TrainConfig.from_kwargs(**out)  # unknown keywords fail here, with the list of known ones
    return out


def results_table(results: dict[str, "RunResult"], baseline: str | None = None) -> pd.DataFrame:
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


# --------------------------------------------------------------------------- data plumbing
class _Tokenized(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]], idx: np.ndarray, labels: np.ndarray | None,
                 weights: np.ndarray | None = None):
        self.ids, self.idx, self.labels, self.weights = ids, idx, labels, weights

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        item = {"ids": self.ids[i], "idx": int(self.idx[i])}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        if self.weights is not None:
            item["weight"] = float(self.weights[i])
        return item


class _TrainingSet(_Tokenized):
    """The labeled examples a method trains on; pseudo-labeled pool rows are appended to it."""

    def __init__(self, ids, idx, labels):
        super().__init__(list(ids), np.asarray(idx), np.asarray(labels), np.ones(len(ids), dtype=np.float32))

    def extend(self, ids, idx, labels, weights) -> None:
        self.ids = self.ids + list(ids)
        self.idx = np.concatenate([self.idx, idx])
        self.labels = np.concatenate([self.labels, labels])
        self.weights = np.concatenate([self.weights, np.asarray(weights, dtype=np.float32)])


class _Pool:
    """The unlabeled examples still in the pool: texts, token ids, global idx, ids, hidden gold."""

    def __init__(self, texts, ids, idx, user_ids, gold):
        self.texts, self.tok, self.idx = list(texts), list(ids), np.asarray(idx)
        self.user_ids, self.gold = list(user_ids), np.asarray(gold)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows: np.ndarray) -> dict:
        """Remove ``rows`` (positions) from the pool and return what they held."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {"texts": [self.texts[r] for r in rows], "tok": [self.tok[r] for r in rows],
               "idx": self.idx[rows], "ids": [self.user_ids[r] for r in rows], "gold": self.gold[rows]}
        keep = np.setdiff1d(np.arange(len(self.texts)), rows)
        self.texts = [self.texts[r] for r in keep]
        self.tok = [self.tok[r] for r in keep]
        self.user_ids = [self.user_ids[r] for r in keep]
        self.idx, self.gold = self.idx[keep], self.gold[keep]
        return out

    def positions_of(self, global_idx) -> np.ndarray:
        where = {int(g): p for p, g in enumerate(self.idx)}
        return np.array([where[int(g)] for g in global_idx], dtype=np.int64)


def _collate_fn(model: Backbone):
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        batch = model.collate([it["ids"] for it in items])
        batch["idx"] = torch.tensor([it["idx"] for it in items], dtype=torch.long)
        if "label" in items[0]:
            batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        if "weight" in items[0]:
            batch["weights"] = torch.tensor([it["weight"] for it in items], dtype=torch.float32)
        return batch

    return collate


class _FixedBatches(torch.utils.data.Sampler):
    """A batch sampler over precomputed batches (lists of positions), e.g. P classes x K examples."""

    def __init__(self, batches: list[list[int]], batch_size: int):
        # batch_size None: accelerate then deals whole (possibly uneven) batches to processes
        self.batches, self.batch_size, self.drop_last = [list(map(int, b)) for b in batches], None, False

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _epoch_loader(dataset: _Tokenized, batch_size: int, seed: int, epoch: int, collate, drop_last=False,
                  batches=None, group_by_length: int = 0):
    """A loader whose order depends only on (seed, epoch): resuming replays the same order.

    ``batches(labels, batch_size, rng)`` (a method's :meth:`~sslkit.methods.base.Method.labeled_batches`)
    may return the batches itself; else ``group_by_length > 1`` makes batches of similar lengths
    (:func:`sslkit.sampling.length_grouped_batches`), and 0 or 1 means a plain shuffle."""
    rng = np.random.default_rng([seed, epoch])
    order = batches(dataset.labels, batch_size, rng) if batches is not None else None
    if order is None and group_by_length > 1 and not drop_last:
        order = length_grouped_batches([len(x) for x in dataset.ids], batch_size, group_by_length, rng)
    if order is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=_FixedBatches(order, batch_size),
                                           collate_fn=collate)
    perm = rng.permutation(len(dataset)).tolist()
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=perm,
                                       collate_fn=collate, drop_last=drop_last)


def _stream(make_loader, steps: int | None = None) -> Iterator[dict]:
    """Exactly ``steps`` batches (endless if None), re-shuffling (round r) whenever the data is
    exhausted."""
    round_, done = 0, 0
    while steps is None or done < steps:
        yielded = False
        for batch in make_loader(round_):
            yielded = True
            yield batch
            done += 1
            if steps is not None and done >= steps:
                return
        if not yielded:
            raise RuntimeError("a training loader yielded no batch (empty data, or batches all dropped)")
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
    with torch.no_grad(), model.merged_lora():
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


#: Options added after runs were recorded with the same computation: in the run config (and its hash)
#: only when set, so finished records stay reusable.
_HASHED_WHEN_SET = ("fused_optimizer",)


def run_config(model: Backbone, budget: Budget, method: Method, config: TrainConfig) -> dict:
    """Everything needed to rerun a run (and its identity: the run id hashes it)."""
    train = {k: v for k, v in dataclass_values(config).items()
             if k not in ("progress", "run_dir", "resume", "resume_every", "reuse", "track_test")
             and not (k in _HASHED_WHEN_SET and not v)}
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
    checkpoint of the same config, training resumes after that epoch. Without a dev split (a user's
    file) the last epoch is kept.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm  # plain bars: no ipywidgets needed, text in papermill output
    from transformers import get_scheduler

    method = method or Supervised()
    config = TrainConfig.from_kwargs(config, **overrides)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.device == "cpu")
    set_seed(config.seed)
    started = time.time()

    rconf = run_config(model, budget, method, config)
    rconf_hash = config_hash(rconf)
    name = config.run_name or f"{budget.dataset}-{budget_tag(budget)}-{method.name}-s{config.seed}"
    run_id = f"{name}-{rconf_hash}"
    run_dir = Path(config.run_dir) if config.run_dir else reports_dir() / "runs" / run_id
    if config.reuse:
        done = _finished_run(run_dir, rconf_hash, run_id)
        if done is not None:
            return done
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir / "metrics.jsonl")
    traces = MetricsLog(run_dir / "traces.jsonl")
    rounds_log = MetricsLog(run_dir / "rounds.jsonl")

    # ---- resume?
    state_path = run_dir / LAST_STATE
    resume_state = None
    if config.resume and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("config_hash") == rconf_hash:
            resume_state = saved
    if resume_state is None and accelerator.is_main_process:
        for stale in ("metrics.jsonl", "traces.jsonl", "rounds.jsonl", "summary.json",
                      "predictions.csv", "pseudo_labels.csv"):
            (run_dir / stale).unlink(missing_ok=True)
    notebook = os.environ.get("SSLKIT_NOTEBOOK")
    if accelerator.is_main_process:
        write_json(run_dir / "config.json", {"run_id": run_id, "notebook": notebook, "config_hash": rconf_hash,
                                             "versions": _versions(), "argv": sys.argv, **rconf})

    # ---- label-free corpus statistics (FastText IDF weights): all training texts, every method alike
    model.adapt_to_corpus(list(budget.labeled.texts) + list(budget.unlabeled.texts))

    # ---- data: the labeled set grows when a method moves pseudo-labeled pool rows into it
    labeled = budget.labeled
    train_set = _TrainingSet(model.tokenize(labeled.texts), labeled.idx, labeled.labels)
    collate = _collate_fn(model)
    pool = None
    if method.uses_unlabeled and len(budget.unlabeled):
        u = budget.unlabeled
        pool = _Pool(u.texts, model.tokenize(u.texts), u.idx, u.ids, budget.unlabeled_gold)
    pseudo_rows: list[dict] = []

    # ---- head init from prototypes (LoRA's B = 0, so these are the pretrained features)
    if resume_state is None and config.init_head == "prototypes":
        feats = embed(model, labeled.texts, batch_size=config.eval_batch_size)
        model.init_head_from_prototypes(feats, labeled.labels)

    method.configure_model(model)  # e.g. a projection head: before the optimiser sees the parameters

    # ---- optimiser: head and LoRA parameter groups (their own learning rates)
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config.head_lr or config.lr}]
    if body_params:
        groups.append({"params": body_params, "lr": config.lr})
    # fused: one kernel for the whole update instead of ~10 ops per tensor; FastText's default (its dense
    # 4.2M-row table made the per-tensor update 60% of a step), off for LoRA (0.7M parameters: 6 of 390 ms)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay,
                                  fused=True if config.fused_optimizer else None)

    steps_per_epoch = config.steps_per_epoch or math.ceil(
        len(train_set) / (config.batch_size * accelerator.num_processes))
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_scheduler(config.scheduler, optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_steps) * accelerator.num_processes,
                              num_training_steps=total_steps * accelerator.num_processes)
    pmodel, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ctx = Context(model=pmodel, accelerator=accelerator, budget=budget, config=config,
                  num_classes=len(budget.label_names), steps_per_epoch=steps_per_epoch,
                  total_steps=total_steps, run_dir=run_dir, train_set=train_set, pool=pool, traces=traces)

    def add_pseudo(ctx_, rows, labels, confidence, weights=None, candidates=None) -> dict:
        rows = np.asarray(torch.as_tensor(rows).cpu(), dtype=np.int64).reshape(-1)
        labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
        confidence = np.asarray(torch.as_tensor(confidence).float().cpu()).reshape(-1)
        weights = np.ones(len(rows), np.float32) if weights is None else \
            np.asarray(torch.as_tensor(weights).float().cpu()).reshape(-1)
        round_ = len({r["round"] for r in pseudo_rows})
        moved = pool.take(rows)
        train_set.extend(moved["tok"], moved["idx"], labels, weights)
        names = np.asarray(budget.label_names, dtype=object)
        for i in range(len(rows)):
            pseudo_rows.append({"idx": int(moved["idx"][i]), "id": moved["ids"][i], "text": moved["texts"][i],
                                "label": names[labels[i]], "confidence": float(confidence[i]),
                                "weight": float(weights[i]), "round": round_, "epoch": ctx_.epoch,
                                "gold": names[moved["gold"][i]] if moved["gold"][i] >= 0 else ""})
        stats = _round_stats(round_, ctx_.epoch, labels, moved["gold"], candidates, len(pool),
                             budget.label_names)
        if accelerator.is_main_process:
            rounds_log.write(stats)
            _write_pseudo_csv(run_dir, pseudo_rows)
        return {k: v for k, v in stats.items() if k != "per_class"}

    ctx._add_pseudo = add_pseudo
    method.setup(ctx)

    start_epoch, best = 1, {"dev_macro_f1": -1.0, "epoch": 0, "state": None}
    # dev / test evaluations of the best checkpoint as scored during training: the final report
    # reuses them (same weights, same texts, same code: the same numbers) instead of scoring again
    best_eval: dict = {}
    bad_epochs = 0
    if resume_state is not None:
        model.load_trainable_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        method.load_state_dict(resume_state["method"])
        best, bad_epochs = resume_state["best"], resume_state["bad_epochs"]
        start_epoch = resume_state["epoch"] + 1
        ctx.step = resume_state["step"]
        replay = resume_state.get("pseudo", [])
        if replay:  # replay the moves of earlier rounds, in their order, in one take
            moved = pool.take(pool.positions_of([r["idx"] for r in replay]))
            class_of = {name: c for c, name in enumerate(budget.label_names)}
            train_set.extend(moved["tok"], moved["idx"], [class_of[r["label"]] for r in replay],
                             [r["weight"] for r in replay])
            pseudo_rows.extend(replay)
        if accelerator.is_main_process:
            log.truncate_after(resume_state["epoch"])
            traces.truncate_after(resume_state["epoch"])
            rounds_log.truncate_after(resume_state["epoch"])
        accelerator.print(f"resuming {run_id} after epoch {resume_state['epoch']}")

    show = _progress_enabled(config, accelerator)
    train_seconds = resume_state["train_seconds"] if resume_state else 0.0
    saved_at = train_seconds  # the training time in the last epoch checkpoint
    n_seen = resume_state["n_seen"] if resume_state else 0
    stopped_early = False
    for epoch in range(start_epoch, config.epochs + 1):
        ctx.epoch = epoch
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout: same stream with or without resume
        lab_stream = _stream(lambda r: accelerator.prepare_data_loader(
            _epoch_loader(train_set, config.batch_size, config.seed, epoch * 1000 + r, collate,
                          batches=method.labeled_batches, group_by_length=config.group_by_length)),
            steps_per_epoch)
        unl_iter = None
        if pool is not None and len(pool):
            ubs = config.unlabeled_batch_size or config.batch_size
            pool_view = _Tokenized(pool.tok, pool.idx, None)
            unl_iter = _stream(lambda r: accelerator.prepare_data_loader(
                _epoch_loader(pool_view, ubs, config.seed + 7919, epoch * 1000 + r, collate,
                              group_by_length=config.group_by_length)))
        pmodel.train()
        t0 = time.time()
        losses = []
        bar = tqdm(lab_stream, total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                   disable=not show, leave=False)
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

        unwrapped = accelerator.unwrap_model(pmodel)
        record = {"epoch": epoch, "step": ctx.step, "epoch_loss": float(np.mean(losses)) if losses else None,
                  "epoch_seconds": epoch_seconds, "n_train": len(train_set), "pool": ctx.pool_size, **stats}
        # the model itself and any extra weights the method offers (a mean teacher): each scored on
        # dev; the best of all, over epochs, is the checkpoint that gets tested
        student = unwrapped.trainable_state_dict()
        variants = {"": student, **{f"_{k}": v for k, v in method.eval_states(ctx).items()}}
        improved = False
        for suffix, state in variants.items():
            if suffix:
                unwrapped.load_trainable_state_dict(state)
            scored = {}
            if budget.dev is not None:
                scored["dev"] = evaluate(unwrapped, budget.dev, config.eval_batch_size, accelerator)
                dev_m = scored["dev"]["metrics"]
                score = dev_m["macro_f1"]
                record.update({f"dev_accuracy{suffix}": dev_m["accuracy"], f"dev_macro_f1{suffix}": dev_m["macro_f1"]})
            else:
                score = float(epoch)  # no dev split: the last epoch (of the model itself) is the best
            if config.track_test and budget.test is not None:
                scored["test"] = evaluate(unwrapped, budget.test, config.eval_batch_size, accelerator)
                test_m = scored["test"]["metrics"]
                record.update({f"test_accuracy{suffix}": test_m["accuracy"], f"test_macro_f1{suffix}": test_m["macro_f1"]})
            if score > best["dev_macro_f1"]:
                best = {"dev_macro_f1": score, "epoch": epoch, "state": state, "variant": suffix[1:] or "model"}
                best_eval = scored
                improved = True
        if len(variants) > 1:
            unwrapped.load_trainable_state_dict(student)
        bad_epochs = 0 if improved else bad_epochs + 1
        record["best_epoch"] = best["epoch"]
        if accelerator.is_main_process:
            log.write(record)
            if show:
                tqdm.write(f"epoch {epoch}: loss {record['epoch_loss']:.4f} dev acc "
                           f"{record.get('dev_accuracy', float('nan')):.4f} macro-F1 "
                           f"{record.get('dev_macro_f1', float('nan')):.4f} ({epoch_seconds:.0f}s)")
        # the epoch checkpoint (resume state), once `resume_every` seconds of training went in since the
        # last one, and not after the last epoch: a FastText epoch takes 0.5 s and its state (table,
        # AdamW moments, best copy: 67 MB) ~0.15 s to write; a LoRA epoch (a minute) still saves each time
        if train_seconds - saved_at >= config.resume_every and epoch < config.epochs:
            saved_at = train_seconds
            if accelerator.is_main_process:
                torch.save({"config_hash": rconf_hash, "epoch": epoch, "step": ctx.step,
                            "model": unwrapped.trainable_state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "method": method.state_dict(), "best": best, "bad_epochs": bad_epochs,
                            "train_seconds": train_seconds, "n_seen": n_seen, "pseudo": pseudo_rows},
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

    def final_eval(split: str) -> dict | None:
        if split in best_eval:  # scored with these very weights during training
            return best_eval[split]
        data = getattr(budget, split)
        return evaluate(final, data, config.eval_batch_size, accelerator) if data is not None else None

    dev, test = final_eval("dev"), final_eval("test")
    summary = {
        "run_id": run_id, "notebook": notebook, "dataset": budget.dataset, "budget": budget_tag(budget),
        "method": method.name, "backbone": model.info.name, "seed": config.seed,
        "n_labeled": len(budget.labeled), "n_unlabeled": len(budget.unlabeled),
        "n_pseudo_labeled": len(pseudo_rows), "pseudo_label_precision": _precision(pseudo_rows),
        "best_epoch": best["epoch"], "best_variant": best.get("variant", "model"), "epochs_run": ctx.epoch, "stopped_early": stopped_early,
        "dev": dev["metrics"] if dev else None, "test": test["metrics"] if test else None,
        "train_seconds": train_seconds, "minutes": (time.time() - started) / 60.0,
        "train_samples_per_second": n_seen / train_seconds if train_seconds else None,
        "trainable_parameters": model.num_parameters(trainable=True),
        "device": str(accelerator.device), "num_processes": accelerator.num_processes,
        "mixed_precision": config.mixed_precision, **_peak_memory_mb(accelerator.device),
    }
    if accelerator.is_main_process:
        if test is not None:
            names = np.asarray(budget.label_names, dtype=object)
            known = budget.test.labels >= 0
            gold = np.where(known, names[np.clip(budget.test.labels, 0, None)], "")
            pd.DataFrame({"id": budget.test.ids, "text": budget.test.texts, "gold": gold,
                          "pred": names[test["pred"]], "confidence": test["confidence"]}
                         ).to_csv(run_dir / "predictions.csv", index=False)
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


def _precision(pseudo_rows: list[dict]) -> float | None:
    scored = [r for r in pseudo_rows if r.get("gold")]
    return sum(r["label"] == r["gold"] for r in scored) / len(scored) if scored else None


def _round_stats(round_: int, epoch: int, labels: np.ndarray, gold: np.ndarray, candidates, pool_left: int,
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


def _write_pseudo_csv(run_dir: Path, rows: list[dict]) -> None:
    from .runs import atomic_write_text

    frame = pd.DataFrame(rows, columns=["idx", "id", "text", "label", "confidence", "weight", "round",
                                        "epoch", "gold"])
    atomic_write_text(run_dir / "pseudo_labels.csv", frame.to_csv(index=False))


def _finished_run(run_dir: Path, rconf_hash: str, run_id: str) -> RunResult | None:
    """A finished run of the same config (summary + checkpoint on disk), loaded instead of retrained."""
    from .backbone import load_saved_backbone
    from .runs import read_json

    try:
        config = read_json(run_dir / "config.json")
        summary = read_json(run_dir / "summary.json")
    except (OSError, ValueError):
        return None
    if config.get("config_hash") != rconf_hash or not (run_dir / "checkpoint").is_dir():
        return None
    model = load_saved_backbone(run_dir / "checkpoint")
    return RunResult(run_id=run_id, run_dir=run_dir, summary=summary,
                     history=pd.DataFrame(MetricsLog(run_dir / "metrics.jsonl").read()), model=model)
