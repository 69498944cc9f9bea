"""Backbones: what turns text into logits. One :class:`Backbone` interface, three kinds behind it.

* pretrained encoders (all-MiniLM-L6-v2 as "minilm", any local BERT-family folder) and decoders
  (a local Qwen3 / Llama / Mistral folder), with LoRA: :mod:`sslkit.backbones.pretrained`;
* FastText, hashed n-grams trained from scratch ("fasttext", "fasttext-zh"): :mod:`sslkit.backbones.fasttext`;
* the shared parts (pooling, the head, saving, batched inference): :mod:`sslkit.backbones.base`.

On CPU, dropout masks come from :mod:`sslkit.dropout` (numpy-drawn in bulk, the same distribution
as torch's single-threaded sampler, several times cheaper); on a GPU it is torch's own.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import fasttext
from .base import POOLERS, SAVE_CONFIG, Backbone, BackboneInfo, CosineHead, build_head, embed
from .fasttext import is_fasttext, load_preset, load_saved_fasttext
from .pretrained import LoraSettings, load_pretrained, load_saved_pretrained, resolve_model_path

__all__ = ["Backbone", "BackboneInfo", "CosineHead", "LoraSettings", "POOLERS", "build_head", "embed",
           "fasttext", "is_fasttext", "load_backbone", "load_saved_backbone", "resolve_model_path"]


def load_backbone(
    name_or_path: str = "minilm",
    num_labels: int = 2,
    *,
    lora: LoraSettings | dict | int | bool | None = True,
    pooling: str = "auto",
    head: str = "cosine",
    scale: float = 20.0,
    max_length: int | None = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    seed: int | None = 0,
    fast_dropout: bool = True,
    **fasttext_options,
) -> Backbone:
    """A backbone by name: "minilm", a local Hugging Face folder, or a FastText preset.

    lora: ``True`` (r=16, alpha=32 on the architecture's targets), an int rank, a dict/LoraSettings,
    or ``None``/``False`` for a frozen backbone (only the head trains). ``max_length``: tokens per
    text (None: 64). ``"fasttext"`` or another of :data:`sslkit.backbones.fasttext.PRESETS` (e.g.
    ``"fasttext-zh"``) builds hashed n-grams trained from scratch; ``max_length`` then counts n-gram
    ids (None: the preset's default); further keywords such as ``char_ngrams``, ``buckets`` or ``dim``
    go to it. ``fast_dropout``: CPU dropout masks drawn by numpy (:mod:`sslkit.dropout`).
    """
    if is_fasttext(name_or_path):
        extra = {} if max_length is None else {"max_length": max_length}
        backbone = load_preset(name_or_path, num_labels, lora=lora, pooling=pooling, head=head, scale=scale,
                               dtype=dtype, gradient_checkpointing=gradient_checkpointing, seed=seed, **extra,
                               **fasttext_options)
    elif fasttext_options:
        raise TypeError(f"load_backbone({name_or_path!r}): unexpected keyword(s) {sorted(fasttext_options)} "
                        "(they are options of the 'fasttext' backbone only)")
    else:
        backbone = load_pretrained(name_or_path, num_labels, lora=lora, pooling=pooling, head=head, scale=scale,
                                   max_length=max_length, dtype=dtype,
                                   gradient_checkpointing=gradient_checkpointing, seed=seed)
    if fast_dropout:
        _switch_to_fast_dropout(backbone)
    return backbone


def _switch_to_fast_dropout(backbone: Backbone) -> None:
    from ..dropout import use_fast_dropout

    use_fast_dropout(backbone)
    backbone.info.extra["fast_dropout"] = True  # a different random stream: part of the run's identity


def load_saved_backbone(directory: str | Path, dtype: str | torch.dtype | None = None) -> Backbone:
    """Rebuild a backbone written by :meth:`Backbone.save` (base weights from their original folder)."""
    directory = Path(directory)
    cfg_file = directory / SAVE_CONFIG
    if not cfg_file.is_file():
        raise ValueError(f"{directory}: no {SAVE_CONFIG}; not a saved sslkit backbone")
    info = BackboneInfo(**json.loads(cfg_file.read_text()))
    if info.kind == "fasttext":
        backbone = load_saved_fasttext(directory)
    else:
        backbone = load_saved_pretrained(directory, info, dtype)
    if info.extra.get("fast_dropout"):  # the adapters' dropouts are new modules: switch them as trained
        _switch_to_fast_dropout(backbone)
    backbone.eval()
    return backbone
