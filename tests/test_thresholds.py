"""The threshold rules, on a hand-worked example and on random tensors."""
from __future__ import annotations

import pytest
import torch

from sslkit.thresholds import AdaptiveThreshold, FixedThreshold, class_balanced_top_k


def test_start_state():
    th = AdaptiveThreshold(4, tau0=0.8, ema=0.9)
    assert th.tau.ndim == 0 and th.tau.item() == pytest.approx(0.8)
    assert torch.allclose(th.p_tilde, torch.full((4,), 0.25))
    assert torch.allclose(th.tau_c, torch.full((4,), 0.8))


def test_hand_worked_three_class_example():
    th = AdaptiveThreshold(3, tau0=0.8, ema=0.9)
    th.update(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]))
    # tau = 0.9*0.8 + 0.1*mean(0.7, 0.8) = 0.795 ; p~ = 0.9/3 + 0.1*[0.4, 0.5, 0.1] = [0.34, 0.35, 0.31]
    assert th.tau.item() == pytest.approx(0.795)
    assert th.p_tilde.tolist() == pytest.approx([0.34, 0.35, 0.31])
    expected_tau_c = [0.795 * 0.34 / 0.35, 0.795, 0.795 * 0.31 / 0.35]
    assert th.tau_c.tolist() == pytest.approx(expected_tau_c, rel=1e-6)

    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.5, 0.45, 0.05]])
    labels, margins = th.pseudo_labels(probs, margin=0.05)
    assert labels.tolist() == [0, 2, -1]
    assert margins.tolist() == pytest.approx([0.9 - expected_tau_c[0], 0.8 - expected_tau_c[2],
                                              0.5 - expected_tau_c[0]], rel=1e-5)
    # a margin above the best m[j] rejects everything
    assert th.pseudo_labels(probs, margin=0.2)[0].tolist() == [-1, -1, -1]


def test_random_tensors_match_a_direct_recomputation():
    torch.manual_seed(0)
    C, lam = 7, 0.8
    th = AdaptiveThreshold(C, tau0=0.5, ema=lam)
    tau, p = torch.tensor(0.5), torch.full((C,), 1 / C)
    for _ in range(20):
        probs = torch.softmax(torch.randn(16, C) * 3, dim=1)
        th.update(probs)
        tau = (lam * tau + (1 - lam) * probs.max(1).values.mean()).clamp(1e-8, 1 - 1e-8)
        p = lam * p + (1 - lam) * probs.mean(0)
        tau_c = (tau * p / (p.max() + 1e-8)).clamp(1e-8, 1 - 1e-8)
        assert torch.allclose(th.tau, tau) and torch.allclose(th.p_tilde, p) and torch.allclose(th.tau_c, tau_c)
    assert (th.tau_c <= th.tau + 1e-7).all() and (th.tau_c > 0).all()
    probs = torch.softmax(torch.randn(50, C) * 3, dim=1)
    labels, margins = th.pseudo_labels(probs, margin=0.05)
    m = probs - th.tau_c
    for i in range(50):
        j = int(m[i].argmax())
        assert margins[i].item() == pytest.approx(m[i, j].item())
        assert labels[i].item() == (j if m[i, j] > 0.05 else -1)


def test_thresholds_are_clamped_and_fixed_variant_does_not_move():
    th = AdaptiveThreshold(2, tau0=0.8, ema=0.0)
    th.update(torch.tensor([[1.0, 0.0]]))  # p~ = [1, 0]: tau_c[1] = 0 before the clamp
    assert th.tau.item() <= 1.0 and th.tau_c[1].item() == pytest.approx(1e-8)
    fixed = FixedThreshold(3, tau0=0.95)
    fixed.update(torch.tensor([[0.2, 0.3, 0.5]]))
    assert torch.allclose(fixed.tau_c, torch.full((3,), 0.95))


def test_reduce_hook_sees_the_batch_statistics():
    seen = []
    th = AdaptiveThreshold(3, reduce=lambda t: seen.append(t.clone()) or t * 0 + 1 / 3)
    th.update(torch.tensor([[0.6, 0.3, 0.1]]))
    assert len(seen) == 2  # batch max-mean and the class-wise mean
    assert th.tau.item() == pytest.approx(0.9 * 0.8 + 0.1 / 3)


def test_class_balanced_top_k():
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, -1, 2, -1])
    conf = torch.tensor([.1, .9, .2, .3, .4, .5, .6, .7, .8, .35, .5, .6, .99, .3, .98])
    keep = class_balanced_top_k(labels, conf, fraction=0.2)
    # class 0: 10 candidates -> 2 best (rows 1 and 8); class 1: 2 -> at least 1 (row 11); class 2: 1 -> row 13
    assert keep.tolist() == [1, 8, 11, 13]
    assert keep.dtype == torch.long
    assert class_balanced_top_k(torch.tensor([-1, -1]), torch.tensor([0.9, 0.8])).numel() == 0
    with pytest.raises(ValueError):
        class_balanced_top_k(labels, conf, fraction=0.0)


def test_class_balanced_top_k_on_random_tensors_matches_a_loop():
    torch.manual_seed(1)
    labels = torch.randint(-1, 6, (500,))
    conf = torch.rand(500)
    for fraction in (0.05, 0.1, 0.3, 1.0):
        keep = set(class_balanced_top_k(labels, conf, fraction).tolist())
        expected = set()
        for c in range(6):
            rows = [i for i in range(500) if labels[i] == c]
            rows.sort(key=lambda i: -conf[i].item())
            expected |= set(rows[:max(1, int(fraction * len(rows) + 1e-9))])
        assert keep == expected
