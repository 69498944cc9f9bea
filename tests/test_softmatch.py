"""SoftMatch: uniform alignment and truncated-Gaussian weights as pure functions on random tensors,
their running statistics, and the method's loss over every unlabeled text, each weighted."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import noiseless_parts, one_process_ctx

from sslkit.methods import SoftMatch
from sslkit.presets import PRESETS
from sslkit.thresholds import SoftWeighting, align_to_uniform, soft_weights


def test_alignment_is_a_distribution_and_lifts_the_under_predicted_class():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(16, 5, generator=g) * 2, dim=1)
    assert torch.allclose(align_to_uniform(probs, torch.full((5,), 0.2)), probs, atol=1e-6)
    p_model = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    aligned = align_to_uniform(probs, p_model)
    assert torch.allclose(aligned.sum(1), torch.ones(16), atol=1e-6)
    assert bool((aligned[:, 0] < probs[:, 0]).all()) and bool((aligned[:, 1] > probs[:, 1]).all())
    direct = probs / p_model
    assert torch.allclose(aligned, direct / direct.sum(1, keepdim=True), atol=1e-6)


def test_weights_are_one_above_the_mean_and_a_gaussian_below():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(64, generator=g)
    mean, var = 0.5, 0.04
    w = soft_weights(p, mean, var, n_sigma=2.0)
    assert bool((w[p >= mean] == 1).all())
    below = p < mean
    expected = torch.exp(-(p[below] - mean) ** 2 / (2 * var / 4))
    assert torch.allclose(w[below], expected, atol=1e-6)
    order = torch.argsort(p[below])
    assert bool((w[below][order].diff() >= 0).all())  # lower confidence, lower weight


def test_running_statistics_follow_their_formula():
    g = torch.Generator().manual_seed(2)
    weighting = SoftWeighting(4, ema=0.9)
    p_model, mean, var = torch.full((4,), 0.25), torch.tensor(0.25), torch.tensor(1.0)
    for _ in range(3):
        probs = torch.softmax(torch.randn(10, 4, generator=g) * 3, dim=1)
        labels, weights = weighting(probs)
        p_model = 0.9 * p_model + 0.1 * probs.mean(0)
        aligned = align_to_uniform(probs, p_model)
        top = aligned.max(1).values
        mean, var = 0.9 * mean + 0.1 * top.mean(), 0.9 * var + 0.1 * top.var()
        assert torch.equal(labels, aligned.argmax(1))
        assert torch.allclose(weights, soft_weights(top, mean, var), atol=1e-6)
    restored = SoftWeighting(4)
    restored.load_state_dict(weighting.state_dict())
    assert torch.allclose(restored.var, var) and torch.allclose(restored.p_model, p_model)


@pytest.fixture(scope="module")
def budget(mcid_budget):
    return mcid_budget(train=160, labeled=0.25)


def test_every_unlabeled_text_is_forwarded_and_weighted(budget, make_tiny_model, monkeypatch):
    """Unlike FixMatch no text is dropped: the strong pass holds all rows, each loss times its weight."""
    model = make_tiny_model(budget)
    lab, unl, logits = noiseless_parts(model, budget, monkeypatch)
    method = SoftMatch(soft_ema=0.5)
    method.setup(one_process_ctx(model, budget, epoch=1))
    method.weighting.mean, method.weighting.var = torch.tensor(1.0), torch.tensor(1e-3)  # weights differ
    twin = SoftWeighting(budget.num_classes, ema=0.5)
    twin.load_state_dict(method.weighting.state_dict())
    labels, weights = twin(torch.softmax(logits, -1))
    assert float(weights.min()) < 1.0
    out = method.loss({"labeled": lab, "unlabeled": unl}, one_process_ctx(model, budget, epoch=1))
    per = F.cross_entropy(logits, labels, reduction="none") * weights
    assert float(out["unsup"]) == pytest.approx(float(per.mean()), rel=1e-4)
    assert float(out["mask_rate"]) == pytest.approx(float(weights.mean()), rel=1e-5)
    restored = PRESETS["softmatch"].make()
    restored.setup(one_process_ctx(model, budget, epoch=1))
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.weighting.mean, method.weighting.mean)
