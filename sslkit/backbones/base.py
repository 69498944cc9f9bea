"""What every backbone is: encoder + pooling + a classification head, with LoRA helpers and saving.

* :class:`Backbone` has ``forward(input_ids, attention_mask) -> logits`` and ``features(...)`` ->
  the pooled embedding. Encoders pool by attention-masked mean, ``h = sum_t m_t h_t / sum_t m_t``
  (the way sentence-transformer checkpoints were trained); decoders at the last non-pad token.
* The head (:func:`build_head`, shared by every backbone) is a cosine head ``logits = s * cos(h, w_c)``
  (scale ``s`` = 20 by default) or a linear head; both can start from class prototypes
  ``w_c = normalise(mean_{i: y_i = c} normalise(h_i))``.
* :func:`embed` is the batched inference every scorer uses (length-sorted batches, LoRA folded in).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAVE_CONFIG = "sslkit_backbone.json"
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"


class CosineHead(nn.Module):
    """logits_c = scale * cos(h, w_c)  (normalised softmax / "cosine classifier", e.g. Gidaris &
    Komodakis 2018); the scale sets the softmax temperature."""

    def __init__(self, dim: int, num_labels: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_labels, dim) * 0.02)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h = sum_t m_t h_t / max(sum_t m_t, 1)  over the sequence axis."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last position whose mask is 1 (works for left and right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask.long()).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


POOLERS = {"mean": masked_mean_pool, "last": last_token_pool, "cls": cls_pool}


HEADS = ("cosine", "linear")


def build_head(head: str, dim: int, num_labels: int, scale: float = 20.0) -> nn.Module:
    """The classification head on pooled features of size ``dim``: "cosine" or "linear"."""
    if head == "cosine":
        return CosineHead(dim, num_labels, scale)
    if head == "linear":
        return nn.Linear(dim, num_labels)
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


@dataclass
class BackboneInfo:
    """What is needed to rebuild a backbone (saved as sslkit_backbone.json)."""

    name: str
    path: str
    model_type: str
    kind: str  # "encoder" | "decoder"
    num_labels: int
    pooling: str
    head: str
    scale: float
    lora: dict | None
    max_length: int
    label_names: list[str] | None = None
    extra: dict = field(default_factory=dict)


class Backbone(nn.Module):
    """Encoder/decoder + pooling + head. ``forward`` returns logits; ``features`` the pooled embedding."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, head: nn.Module, info: BackboneInfo):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.tokenizer = tokenizer
        self.info = info
        self._pool = POOLERS[info.pooling]

    @property
    def num_labels(self) -> int:
        return self.info.num_labels

    def features(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                 inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        # a decoder would otherwise fill a key/value cache on every pass, which only generation reads
        extra = {"use_cache": False} if self.info.kind == "decoder" else {}
        if inputs_embeds is not None:
            out = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)
        else:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return self._pool(out.last_hidden_state, attention_mask).float()

    def forward(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, return_features: bool = False,
        inputs_embeds: torch.Tensor | None = None,
    ):
        """Logits (and pooled features). ``inputs_embeds`` [B, T, D] replaces the token embedding
        lookup (used by FGM adversarial noise, which perturbs :meth:`input_embeddings`); ``input_ids``
        given with it are not read here (FastText reads them for its IDF pooling weights)."""
        h = self.features(input_ids, attention_mask, inputs_embeds)
        logits = self.head(h)
        return (logits, h) if return_features else logits

    def input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The word-embedding lookup [B, T, D] (positions are added inside the encoder)."""
        return self.encoder.get_input_embeddings()(input_ids)

    @property
    def mask_token_id(self) -> int:
        """The id token-replacement noise writes: [MASK] if the tokenizer has one, else unk/eos."""
        t = self.tokenizer
        for tid in (t.mask_token_id, t.unk_token_id, t.eos_token_id, t.pad_token_id):
            if tid is not None:
                return int(tid)
        return 0

    @property
    def special_token_ids(self) -> set[int]:
        """Ids noise never deletes, swaps or replaces ([CLS], [SEP], pad, bos/eos...)."""
        return {int(i) for i in self.tokenizer.all_special_ids}

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids per text (truncated, unpadded); padding happens per batch in :meth:`collate`."""
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=max_length or self.info.max_length, padding=False
        )
        return enc["input_ids"]

    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad a list of token-id lists to a batch: {input_ids, attention_mask}."""
        batch = self.tokenizer.pad({"input_ids": [list(x) for x in ids]}, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    # ------------------------------------------------------------------ head
    @torch.no_grad()
    def init_head_from_prototypes(self, features: torch.Tensor | np.ndarray, labels) -> None:
        """w_c = normalise(mean of normalised features of class c); classes without examples keep
        their random init. For a linear head, W = scale * prototypes and b = 0."""
        feats = F.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32), dim=-1)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        weight = self._head_weight()
        for c in range(self.num_labels):
            sel = labels == c
            if sel.any():
                proto = F.normalize(feats[sel].mean(0), dim=-1)
                if isinstance(self.head, CosineHead):
                    weight[c] = proto.to(weight)
                else:
                    weight[c] = (self.info.scale * proto).to(weight)
        if isinstance(self.head, nn.Linear) and self.head.bias is not None:
            self.head.bias.zero_()

    def _head_weight(self) -> torch.Tensor:
        return self.head.weight

    # ------------------------------------------------------------------ state
    @contextlib.contextmanager
    def merged_lora(self):
        """Inference with every LoRA update folded into its frozen weight, W <- W + (alpha/r)·B·A:
        one matmul per layer instead of three and a scaled add (MiniLM on 2 CPU cores: ~1.7x the
        texts per second; logits within 1e-5). The frozen weights are restored bit for bit after
        (from saved copies, not by subtracting the update again), so training never sees a drifted
        base. Only in eval mode and for float32 weights (a bf16 merge would round); else a no-op."""
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            yield
            return
        layers = [m for m in self.modules() if isinstance(m, LoraLayer) and not m.merged]
        if self.training or not layers or any(m.get_base_layer().weight.dtype != torch.float32 for m in layers):
            yield
            return
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        try:
            for m in layers:
                m.merge()
            yield
        finally:
            for m, weight in zip(layers, saved):
                if m.merged:
                    m.merged_adapters.clear()  # back to unmerged without the subtraction
                m.get_base_layer().weight.data.copy_(weight)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train (LoRA adapters + head): small, cheap to copy."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def holding(self, state: dict[str, torch.Tensor] | None):
        """Within the block the trainable weights are ``state`` (None: the model's own, nothing is
        swapped); the model's own are back afterwards, also after an error. Copies in place, so a
        pass with gradient must not span the swap."""
        if state is None:
            yield
            return
        own = self.trainable_state_dict()
        self.load_trainable_state_dict(state)
        try:
            yield
        finally:
            self.load_trainable_state_dict(own)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = [n for n in state if n not in params]
        if missing:
            raise KeyError(f"unknown parameters in state: {missing[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))

    def adapt_to_corpus(self, texts: Sequence[str]) -> None:
        """Label-free statistics of the training texts (labeled and unlabeled), computed by ``fit``
        before training. Pretrained backbones have none; the FastText backbone's ``weighting="idf"``
        takes its n-gram IDF weights here."""

    def num_parameters(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)

    def save(self, directory: str | Path, label_names: Sequence[str] | None = None) -> Path:
        """Write adapter (peft format, under adapter/), head.safetensors and sslkit_backbone.json."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.info.lora is not None:
            self.encoder.save_pretrained(directory / ADAPTER_DIR)
        head_state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head_state, str(directory / HEAD_FILE))
        return self._write_config(directory, label_names)

    def _write_config(self, directory: Path, label_names: Sequence[str] | None) -> Path:
        """sslkit_backbone.json: ``info`` (plus the label names) for :func:`load_saved_backbone`."""
        info = asdict(self.info)
        if label_names is not None:
            info["label_names"] = list(label_names)
        (directory / SAVE_CONFIG).write_text(json.dumps(info, indent=2, ensure_ascii=False))
        return directory



@torch.no_grad()
def embed(
    backbone: Backbone,
    texts: Sequence[str],
    batch_size: int = 128,
    max_length: int | None = None,
    return_logits: bool = False,
    device: str | torch.device | None = None,
):
    """Pooled features (and optionally logits) for texts, in input order; batches sorted by length."""
    device = torch.device(device) if device else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    ids = backbone.tokenize(texts, max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    feats, logits = [], []
    with backbone.merged_lora():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in backbone.collate([ids[i] for i in chunk]).items()}
            out_logits, h = backbone(**batch, return_features=True)
            feats.append(h.float().cpu())
            logits.append(out_logits.float().cpu())
    backbone.train(was_training)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    if not feats:
        raise ValueError("embed() got no texts")
    f = torch.cat(feats)[inverse].numpy()
    return (f, torch.cat(logits)[inverse].numpy()) if return_logits else f
