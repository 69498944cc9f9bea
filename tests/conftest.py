"""Shared fixtures: tiny random decoders and a tiny random BERT encoder built offline (no download)
next to the MiniLM tokenizer, and the method tests' budgets and backbones.

Tests of mechanics (shapes, gradients reaching the weights, save/reload, the CLI, distributed
plumbing) run on ``tiny_encoder_dir`` / ``make_tiny_model``: the same code paths as MiniLM (BERT,
mean pooling, the same LoRA targets) at ~1/150 of the encoder compute per token. Tests that need
MiniLM's real weights (anything asserting that the model learns, or real predictions) keep MiniLM
(``make_model``) and carry ``@pytest.mark.pretrained``; they still run in ``make test``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: The tiny decoders (Qwen3, Llama).
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from sslkit.backbones import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


def _save_tiny(folder: Path, config, tokenizer) -> Path:
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: The tiny encoder: BERT with MiniLM's vocabulary, 2 layers of width 64 (MiniLM: 6 of 384).
TINY_ENCODER = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                    max_position_embeddings=64)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT (hidden 64, 4 heads, intermediate 128, 64 positions) saved with the
    MiniLM tokenizer: ``sslkit.load_backbone(str(tiny_encoder_dir), num_labels, ...)`` loads it like
    MiniLM (model_type bert, mean pooling, the same LoRA targets) in a fraction of the time."""
    from transformers import BertConfig

    tokenizer = _minilm_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), **TINY_ENCODER)
    return _save_tiny(tmp_path_factory.mktemp("tiny_bert"), config, tokenizer)


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


@pytest.fixture(scope="session")
def make_tiny_model(tiny_encoder_dir):
    """A factory like ``make_model`` on the tiny random encoder: ``make_tiny_model(budget)`` is the
    2-layer BERT with a rank-4 LoRA and 32 tokens (keywords go to ``load_backbone``)."""
    import sslkit

    def make(budget, **kwargs):
        kwargs = {"lora": {"r": 4, "alpha": 8}, "max_length": 32, **kwargs}
        return sslkit.load_backbone(str(tiny_encoder_dir), budget.num_classes, **kwargs)

    return make
