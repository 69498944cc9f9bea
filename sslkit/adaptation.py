"""Pool adaptation: a label-free stage that fits the adapters to the user's own texts before fine-tuning.

A few hundred labels say little about how a domain's texts differ from each other; tens of thousands
of unlabeled texts say a lot. :func:`adapt_to_pool` trains the backbone's LoRA adapters (never the
head, never a label) on the training texts with one of two objectives:

* ``"simcse"`` -- unsupervised SimCSE (Gao, Yao & Chen 2021): a text passed twice through the
  encoder with dropout gives two views ``z, z'``; the InfoNCE loss
  ``-log exp(cos(z_i, z'_i)/t) / sum_j exp(cos(z_i, z'_j)/t)`` pulls the views together and pushes
  the batch's other texts away (:func:`simcse_loss`).
* ``"mlm"`` -- task-adaptive pre-training (Gururangan et al. 2020): masked-language modelling on the
  pool, 15% of tokens chosen, of those 80% [MASK], 10% a random token, 10% kept (BERT's rule,
  :func:`mask_tokens`). The word-prediction layer is tied to the frozen input embeddings with a fresh
  transform in front, as BERT's is; it is dropped after adaptation.

The settings and a fingerprint of the texts are written into ``model.info.extra["pool_adaptation"]``,
so they enter the run id of every run that trains the adapted model. The adapted adapters are saved
under ``<reports>/adapted/<key>/`` (the key hashes the backbone, its initial adapters, the settings
and the texts) and loaded, not retrained, by the next call with the same inputs: a sweep of methods
on one pool and seed pays for the adaptation once.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import pad_token_id, token_noise
from .backbones.base import Backbone
from .devices import resolve_device, resolve_precision
from .runs import reports_dir
from .sampling import length_grouped_batches

__all__ = ["PoolAdaptation", "adapt_to_pool", "adaptation_seconds", "simcse_loss", "mask_tokens", "OBJECTIVES"]

OBJECTIVES = ("simcse", "mlm")
ADAPTED_FILE = "adapters.safetensors"


@dataclass(frozen=True)
class PoolAdaptation:
    """The settings of one adaptation; all of them change the adapted weights."""

    objective: str = "simcse"
    epochs: float = 1.0         # passes over the texts (fractions allowed)
    lr: float = 1e-3            # LoRA adapters (full fine-tuning would use ~3e-5)
    batch_size: int = 64        # SimCSE: the batch's other texts are its negatives
    temperature: float = 0.05   # SimCSE's t
    mask_prob: float = 0.15     # MLM: share of tokens predicted
    noise: float = 0.0          # SimCSE: token noise on each view besides dropout (harder positives)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.epochs <= 0 or self.batch_size < 2 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"invalid pool adaptation settings: {self}")
        if not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")


def simcse_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE over two views [B, D]: mean_i -log softmax_j(cos(z1_i, z2_j) / t)[i]  (SimCSE, eq. 1)."""
    sim = F.normalize(z1.float(), dim=-1) @ F.normalize(z2.float(), dim=-1).T / temperature
    return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_id: int, vocab_size: int,
                special_ids: Sequence[int], prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019): each real, non-special token is chosen with ``prob``;
    a chosen token becomes [MASK] (80%), a random token (10%) or stays (10%). Returns (inputs,
    labels) with labels -100 where nothing is predicted; at least one token per text is chosen."""
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in special_ids:
        special |= input_ids == sid
    eligible = attention_mask.bool() & ~special
    draw = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    chosen = eligible & (draw < prob)
    # a text with no chosen token would add nothing: take its eligible token with the smallest draw
    lowest = torch.where(eligible, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
    none = ~chosen.any(dim=1) & eligible.any(dim=1)
    chosen[none, lowest[none]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    inputs = input_ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    randomised = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator).to(input_ids.device)
    inputs[randomised] = random_ids[randomised]
    return inputs, labels


class _WordPredictor(nn.Module):
    """BERT's MLM head: dense -> GELU -> LayerNorm, then logits against the (frozen) input embeddings."""

    def __init__(self, embeddings: nn.Embedding, eps: float = 1e-12):
        super().__init__()
        dim = embeddings.weight.shape[1]
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps))
        self.embeddings = embeddings
        self.bias = nn.Parameter(torch.zeros(embeddings.weight.shape[0]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ self.embeddings.weight.T + self.bias


def _fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _adapter_state(model: Backbone) -> dict[str, torch.Tensor]:
    """The trainable parameters outside the head: the LoRA adapters."""
    head = {id(p) for p in model.head.parameters()}
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in head}


def _cache_folder(cache_dir: str | Path | None) -> Path:
    """Where adapted adapters are cached: ``cache_dir``, else ``<reports>/adapted``."""
    return Path(cache_dir) if cache_dir is not None else reports_dir() / "adapted"


def _cache_key(model: Backbone, settings: PoolAdaptation, pool: str) -> str:
    h = hashlib.sha256()
    info = {k: v for k, v in asdict(model.info).items() if k not in ("label_names", "path", "num_labels")}
    info["extra"] = {k: v for k, v in info["extra"].items() if k != "pool_adaptation"}
    h.update(json.dumps({"info": info, "settings": asdict(settings), "pool": pool}, sort_keys=True,
                        default=str).encode())
    for name, p in sorted(_adapter_state(model).items()):  # the seed-dependent initial adapters
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def adapt_to_pool(model: Backbone, texts: Sequence[str], objective: str = "simcse", *, epochs: float = 1.0,
                  lr: float = 1e-3, batch_size: int = 64, temperature: float = 0.05, mask_prob: float = 0.15,
                  noise: float = 0.0, seed: int = 0, device: str = "auto", cache_dir: str | Path | None = None,
                  progress: bool = False) -> Backbone:
    """Train ``model``'s LoRA adapters on ``texts`` (no labels) with ``objective``; returns the model.

    Pass the training texts only (labeled and unlabeled; their labels are not read), never dev or
    test texts. A previous adaptation with the same backbone, initial adapters, settings and texts is
    loaded from ``cache_dir`` (default ``<reports>/adapted``) instead of recomputed.
    """
    from safetensors.torch import load_file, save_file

    settings = PoolAdaptation(objective, epochs, lr, batch_size, temperature, mask_prob, noise, seed)
    texts = [str(t) for t in texts]
    if len(texts) < settings.batch_size:
        raise ValueError(f"adapt_to_pool needs at least batch_size={settings.batch_size} texts, got {len(texts)}")
    if not _adapter_state(model):
        raise ValueError("adapt_to_pool trains the LoRA adapters; this backbone has none (load it with lora=...)")
    pool = _fingerprint(texts)
    key = _cache_key(model, settings, pool)
    folder = _cache_folder(cache_dir)
    saved = folder / key / ADAPTED_FILE
    record = {**asdict(settings), "pool": pool, "texts": len(texts), "key": key}
    if saved.is_file():
        state = load_file(str(saved))
    else:
        started = time.time()
        state = _train(model, texts, settings, device, progress)
        (folder / key).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(saved))
        # the time goes beside the weights, not into the run id: fresh and cached must not differ
        timing = {**record, "seconds": round(time.time() - started, 1)}
        (folder / key / "adaptation.json").write_text(json.dumps(timing, indent=2))
    model.load_trainable_state_dict(state)
    model.info.extra["pool_adaptation"] = record
    return model


def adaptation_seconds(model: Backbone, cache_dir: str | Path | None = None) -> float | None:
    """The seconds the adaptation of ``model``'s adapters took when it was computed (read from the
    cache, so a reused adaptation still reports its cost); None for a model that was not adapted."""
    record = model.info.extra.get("pool_adaptation")
    if not record:
        return None
    folder = _cache_folder(cache_dir)
    timing = folder / record["key"] / "adaptation.json"
    return json.loads(timing.read_text())["seconds"] if timing.is_file() else None


def _train(model: Backbone, texts: list[str], s: PoolAdaptation, device: str, progress: bool) -> dict:
    """The adaptation loop: AdamW, 10% warm-up then cosine decay, length-grouped shuffled batches."""
    from transformers import get_scheduler

    device = resolve_device(device)
    precision = resolve_precision("auto", device)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.to(device)
    ids = model.tokenize(texts)
    rng = np.random.default_rng(s.seed)
    generator = torch.Generator().manual_seed(s.seed)  # CPU draws, as token_noise makes them
    steps_per_epoch = math.ceil(len(ids) / s.batch_size)
    total = max(1, math.ceil(s.epochs * steps_per_epoch))
    predictor = _WordPredictor(model.encoder.get_input_embeddings()).to(device) if s.objective == "mlm" else None
    params = list(_adapter_state(model).values())
    if predictor is not None:
        params += [p for n, p in predictor.named_parameters() if not n.startswith("embeddings")]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.01)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=int(0.1 * total), num_training_steps=total)
    was_training = model.training
    model.train()
    step = 0
    bar = _progress(total, progress)
    while step < total:
        for batch_idx in length_grouped_batches([len(x) for x in ids], s.batch_size, rng=rng):
            if step >= total:
                break
            if len(batch_idx) < 2:
                continue
            batch = {k: v.to(device) for k, v in model.collate([ids[i] for i in batch_idx]).items()}
            with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = _loss(model, predictor, batch, s, generator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return {n: p.detach().clone() for n, p in _adapter_state(model).items()}


def _loss(model: Backbone, predictor: nn.Module | None, batch: dict, s: PoolAdaptation,
          generator: torch.Generator) -> torch.Tensor:
    if s.objective == "simcse":
        ids, mask = (torch.cat([v, v]) for v in (batch["input_ids"], batch["attention_mask"]))
        if s.noise:  # each copy its own deletions, swaps and [MASK]s
            ids, mask = token_noise(ids, mask, s.noise, special_ids=sorted(model.special_token_ids),
                                    mask_id=model.mask_token_id, pad_id=pad_token_id(model), generator=generator)
        z = model.features(ids, mask)  # one pass: two dropout masks per text
        return simcse_loss(z[: len(z) // 2], z[len(z) // 2:], s.temperature)
    inputs, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], mask_id=model.mask_token_id,
                                 vocab_size=predictor.embeddings.weight.shape[0],
                                 special_ids=sorted(model.special_token_ids), prob=s.mask_prob,
                                 generator=generator)
    hidden = model.encoder(input_ids=inputs, attention_mask=batch["attention_mask"]).last_hidden_state
    chosen = labels != -100
    return F.cross_entropy(predictor(hidden[chosen]).float(), labels[chosen])


def _progress(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="pool adaptation", leave=False)
