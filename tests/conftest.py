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


@pytest.fixture(scope="session")
def mcid_budget():
    """A factory of small, cached MCID budgets: ``mcid_budget(train=160, labeled=0.25)`` (dev and
    test 48 examples each, seed 0); the method tests share it."""
    import sslkit

    made = {}

    def make(train: int = 160, labeled: float = 0.25):
        if (train, labeled) not in made:
            data = sslkit.load_dataset("mcid").subsample(train=train, dev=48, test=48, seed=0)
            made[train, labeled] = sslkit.split_budget(data, labeled=labeled, seed=0)
        return made[train, labeled]

    return make


@pytest.fixture(scope="session")
def make_model():
    """A factory: ``make_model(budget)`` is MiniLM with a rank-4 LoRA and 32 tokens, the method
    tests' backbone."""
    import sslkit

    def make(budget, **kwargs):
        return sslkit.load_backbone("minilm", budget.num_classes, lora={"r": 4, "alpha": 8}, max_length=32,
                                    **kwargs)

    return make
