"""Shared fixtures: tiny random decoders built offline (no download) next to the MiniLM tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from sslkit.backbone import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


def _save_tiny(folder: Path, config, tokenizer) -> Path:
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory) -> Path:
    """A 2-layer random Qwen3 (hidden 64) saved with the MiniLM tokenizer; pad_token_id unset in
    its config, so load_backbone has to set it."""
    from transformers import Qwen3Config

    tokenizer = _minilm_tokenizer()
    config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=None, **TINY)
    return _save_tiny(tmp_path_factory.mktemp("tiny_qwen3"), config, tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama saved with the MiniLM tokenizer stripped of its pad token (eos =
    [SEP]), the usual decoder situation: load_backbone must fall back to pad = eos."""
    from transformers import LlamaConfig

    tokenizer = _minilm_tokenizer()
    tokenizer.eos_token = "[SEP]"
    tokenizer.pad_token = None
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=None, **TINY)
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama"), config, tokenizer)
