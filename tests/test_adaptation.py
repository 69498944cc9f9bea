"""Pool adaptation: the SimCSE and masking math on random tensors, the cache, the run id."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslkit import adaptation
from sslkit.adaptation import PoolAdaptation, adapt_to_pool, mask_tokens, simcse_loss
from sslkit.trainer import fit


def test_simcse_loss_is_cross_entropy_over_cosine_similarities():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    cos = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T
    expected = -torch.log_softmax(cos / 0.1, dim=1).diagonal().mean()
    assert torch.allclose(simcse_loss(z1, z2, 0.1), expected, atol=1e-6)


def test_simcse_loss_is_small_when_the_views_agree_and_large_when_they_are_swapped():
    z = torch.eye(8)  # orthogonal texts
    assert simcse_loss(z, z + 0.01, 0.05) < 1e-3
    assert simcse_loss(z, z.roll(1, dims=0), 0.05) > 10


def test_simcse_gradient_reaches_both_views():
    z1, z2 = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    simcse_loss(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_mask_tokens_never_touches_padding_or_special_tokens_and_labels_only_chosen_ones():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (64, 40), generator=g)
    ids[:, 0], ids[:, 30] = 101, 102  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    mask[:, 31:] = 0
    ids[:, 31:] = 0
    inputs, labels = mask_tokens(ids, mask, mask_id=103, vocab_size=1000, special_ids=[0, 101, 102],
                                 prob=0.15, generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 30:].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    rate = chosen.float().sum() / (mask.sum() - 2 * len(ids))
    assert abs(rate.item() - 0.15) < 0.02
    masked = (inputs == 103) & chosen
    assert 0.74 < masked.sum().item() / chosen.sum().item() < 0.86  # 80% of the chosen become [MASK]


def test_mask_tokens_chooses_at_least_one_token_per_text():
    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    _, labels = mask_tokens(ids, mask, mask_id=103, vocab_size=200, special_ids=[0, 101, 102], prob=1e-6)
    assert ((labels != -100).sum(dim=1) == 1).all()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="objective"):
        PoolAdaptation(objective="byol")
    with pytest.raises(ValueError, match="mask_prob"):
        PoolAdaptation(mask_prob=1.5)


@pytest.mark.parametrize("objective", ["simcse", "mlm"])
def test_adaptation_moves_the_adapters_only_and_is_cached(objective, mcid_budget, make_tiny_model, tmp_path,
                                                           monkeypatch):
    budget = mcid_budget()
    texts = list(budget.unlabeled.texts)
    model = make_tiny_model(budget, seed=0)
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    before = {k: v.clone() for k, v in adaptation._adapter_state(model).items()}
    adapt_to_pool(model, texts, objective, epochs=1, batch_size=16, seed=0, cache_dir=tmp_path)
    after = adaptation._adapter_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head.items())
    recorded = model.info.extra["pool_adaptation"]
    assert recorded["objective"] == objective and recorded["texts"] == len(texts)

    # the same backbone, seed, settings and texts: loaded from the cache, not trained again
    monkeypatch.setattr(adaptation, "_train", lambda *a, **k: pytest.fail("adaptation was not reused"))
    again = adapt_to_pool(make_tiny_model(budget, seed=0), texts, objective, epochs=1, batch_size=16, seed=0,
                          cache_dir=tmp_path)
    assert all(torch.equal(after[k], v) for k, v in adaptation._adapter_state(again).items())
    assert again.info.extra["pool_adaptation"] == recorded
    # other texts are another adaptation
    with pytest.raises(pytest.fail.Exception):
        adapt_to_pool(make_tiny_model(budget, seed=0), texts[1:], objective, epochs=1, batch_size=16, seed=0,
                      cache_dir=tmp_path)


def test_adaptation_enters_the_run_id(mcid_budget, make_tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLKIT_REPORTS", str(tmp_path))
    budget = mcid_budget()
    plain = fit(make_tiny_model(budget, seed=0), budget, "supervised", epochs=1, progress=False,
                save_checkpoint=False)
    model = adapt_to_pool(make_tiny_model(budget, seed=0), budget.unlabeled.texts, epochs=0.5, batch_size=16,
                          cache_dir=tmp_path / "adapted")
    adapted = fit(model, budget, "supervised", epochs=1, progress=False, save_checkpoint=False)
    assert plain.run_id != adapted.run_id
    config = adapted.run_dir / "config.json"
    assert "pool_adaptation" in config.read_text()


def test_too_few_texts_or_no_adapters_fail_clearly(mcid_budget, make_tiny_model, tmp_path):
    budget = mcid_budget()
    with pytest.raises(ValueError, match="at least batch_size"):
        adapt_to_pool(make_tiny_model(budget), ["a", "b"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no.*adapters|has none"):
        adapt_to_pool(make_tiny_model(budget, lora=None), budget.unlabeled.texts, batch_size=16, cache_dir=tmp_path)


def test_fractional_epochs_run_that_many_steps(mcid_budget, make_tiny_model, tmp_path, monkeypatch):
    budget = mcid_budget()
    steps = []
    real = adaptation._loss
    monkeypatch.setattr(adaptation, "_loss", lambda *a: steps.append(1) or real(*a))
    adapt_to_pool(make_tiny_model(budget), budget.unlabeled.texts, epochs=0.5, batch_size=16, cache_dir=tmp_path)
    assert len(steps) == math.ceil(0.5 * math.ceil(len(budget.unlabeled) / 16))
