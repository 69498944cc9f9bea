"""Supervised contrastive learning (issue 5): the three losses against direct loops, the P x K
batch sampler, and the Contrastive method (its term has a gradient; a short fit moves the weights)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sslkit.losses import (
    classification_loss,
    focal_contrastive_loss,
    margin_contrastive_loss,
    supcon_loss,
)
from sslkit.methods.contrastive import PROJECTION_ATTR, Contrastive, transformer_blocks
from sslkit.sampling import _chunk_sizes, pk_batches
from sslkit.trainer import fit


# ----------------------------------------------------------------------------- direct loops
def _cos(features: torch.Tensor) -> list[list[float]]:
    f = features.double().tolist()
    norm = [math.sqrt(sum(v * v for v in row)) for row in f]
    return [[sum(a * b for a, b in zip(f[i], f[j])) / (norm[i] * norm[j]) for j in range(len(f))]
            for i in range(len(f))]


def _log_p(s, i, j, tau):
    denom = sum(math.exp(s[i][k] / tau) for k in range(len(s)) if k != i)
    return s[i][j] / tau - math.log(denom)


def loop_supcon(features, labels, tau, tau_base=None):
    s, y = _cos(features), labels.tolist()
    tau_base = tau if tau_base is None else tau_base
    per_anchor = []
    for i in range(len(y)):
        pos = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        if pos:
            per_anchor.append(-(tau / tau_base) * sum(_log_p(s, i, j, tau) for j in pos) / len(pos))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def loop_focal(features, labels, tau, gamma):
    s, y = _cos(features), labels.tolist()
    per_anchor = []
    for i in range(len(y)):
        pos = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        if pos:
            terms = []
            for j in pos:
                lp = _log_p(s, i, j, tau)
                terms.append(-((1.0 - math.exp(lp)) ** gamma) * lp)
            per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def loop_margin(features, labels, margin):
    s, y = _cos(features), labels.tolist()
    hinges = []
    for i in range(len(y)):
        for j in range(len(y)):
            if j == i or y[j] != y[i]:
                continue
            for k in range(len(y)):
                if y[k] != y[i]:
                    hinges.append(max(0.0, margin + s[i][k] - s[i][j]))
    return sum(hinges) / len(hinges) if hinges else 0.0


def _random_batch(seed, n=12, d=8, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3.0, torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("seed", range(5))
def test_losses_match_direct_loops(seed):
    f, y = _random_batch(seed)
    cases = [
        (supcon_loss(f, y), loop_supcon(f, y, 0.1)),
        (supcon_loss(f, y, temperature=0.05, base_temperature=0.07), loop_supcon(f, y, 0.05, 0.07)),
        (supcon_loss(f, y, temperature=0.5), loop_supcon(f, y, 0.5)),
        (focal_contrastive_loss(f, y), loop_focal(f, y, 0.1, 2.0)),
        (focal_contrastive_loss(f, y, temperature=0.3, gamma=0.5), loop_focal(f, y, 0.3, 0.5)),
        (margin_contrastive_loss(f, y), loop_margin(f, y, 0.2)),
        (margin_contrastive_loss(f, y, margin=0.7), loop_margin(f, y, 0.7)),
    ]
    for got, want in cases:
        assert got.dtype == torch.float32 and got.dim() == 0
        assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-5)


def test_focal_contrastive_with_gamma_zero_is_supcon():
    f, y = _random_batch(7)
    assert torch.allclose(focal_contrastive_loss(f, y, 0.2, gamma=0.0), supcon_loss(f, y, 0.2), atol=1e-6)


def test_features_are_normalised_inside():
    f, y = _random_batch(3)
    for fn in (supcon_loss, focal_contrastive_loss, margin_contrastive_loss):
        assert torch.allclose(fn(f, y), fn(f * 17.0, y), atol=1e-5)


LOSSES = [supcon_loss, focal_contrastive_loss, margin_contrastive_loss]


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize("labels", [
    [0, 0, 1, 2, 2, 3],      # classes 1 and 3 have a single example in the batch
    [0, 1, 2, 3, 4, 5],      # nobody has a positive: the loss is 0
    [1, 1, 1, 1, 1, 1],      # positives but no negative: margin has no triplet
    [4],                     # a batch of one
])
def test_no_nan_and_finite_gradients_with_lonely_examples(fn, labels):
    f, _ = _random_batch(11, n=len(labels))
    f.requires_grad_(True)
    y = torch.tensor(labels)
    loss = fn(f, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
    has_pos = any(labels.count(c) > 1 for c in labels)
    if not has_pos:
        assert loss.item() == 0.0 and float(f.grad.abs().sum()) == 0.0
    ref = {supcon_loss: loop_supcon(f.detach(), y, 0.1), focal_contrastive_loss: loop_focal(f.detach(), y, 0.1, 2.0),
           margin_contrastive_loss: loop_margin(f.detach(), y, 0.2)}[fn]
    assert loss.item() == pytest.approx(ref, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("fn", LOSSES)
def test_no_overflow_at_low_temperature_or_identical_features(fn):
    y = torch.tensor([0, 0, 1, 1, 2])
    kwargs = {} if fn is margin_contrastive_loss else {"temperature": 0.01}
    for f in (torch.randn(5, 4) * 1e4, torch.ones(5, 4), torch.zeros(5, 4)):
        f = f.clone().requires_grad_(True)
        loss = fn(f, y, **kwargs)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


def test_losses_pull_positives_together():
    """One gradient step on the features lowers the loss and raises the same-class cosine."""
    f, y = _random_batch(5, n=16)
    for fn in LOSSES:
        x = f.clone().requires_grad_(True)
        opt = torch.optim.SGD([x], lr=0.5)
        before = fn(x, y).item()
        for _ in range(20):
            opt.zero_grad()
            fn(x, y).backward()
            opt.step()
        assert fn(x, y).item() < before


# ----------------------------------------------------------------------------- P x K sampler
def _labels(seed=0, n=300, classes=30):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    y[:3] = [classes, classes + 1, classes + 2]  # three classes with a single example
    return y


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("batch_size", [8, 16, 32])
def test_pk_batches_use_every_example_once_with_positives(k, batch_size):
    y = _labels()
    batches = pk_batches(y, batch_size, k=k, rng=np.random.default_rng(0))
    flat = [p for b in batches for p in b]
    assert sorted(flat) == list(range(len(y)))                    # every example exactly once
    assert all(isinstance(p, int) for p in flat)
    # every batch but the last is full: ceil(n / batch_size) batches, one pass per trainer epoch
    assert len(batches) == math.ceil(len(y) / batch_size)
    assert all(len(b) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size
    # an example alone with its class in a batch (no positive) although its class has several: rare
    counts = np.bincount(y)
    lone = sum(n == 1 and counts[c] >= 2 for b in batches for c, n in zip(*np.unique(y[b], return_counts=True)))
    assert lone <= 0.03 * len(y)
    # about P = batch_size / k distinct classes per full batch
    full = [b for b in batches if len(b) == batch_size]
    mean_classes = np.mean([len(set(y[b].tolist())) for b in full])
    assert batch_size / (k + 1) - 1 <= mean_classes <= batch_size / 2 + 1
    assert {0, 1, 2} <= set(flat)  # the single-example classes still appear


def test_pk_batches_are_seeded_and_handle_edge_cases():
    y = _labels()
    a = pk_batches(y, 16, 4, np.random.default_rng(1))
    assert a == pk_batches(y, 16, 4, np.random.default_rng(1)) == pk_batches(y, 16, 4, 1)
    assert a != pk_batches(y, 16, 4, np.random.default_rng(2))
    # class groups: n = 5, k = 4 -> 3 + 2; k = 2, n = 3 -> one group of 3 (never a lone one)
    assert _chunk_sizes(5, 4, 32) == [3, 2] and _chunk_sizes(3, 2, 32) == [3] and _chunk_sizes(1, 4, 32) == [1]
    assert [len(b) for b in pk_batches([0, 0, 0], 8, 2, 0)] == [3]
    # two classes of 3, batches of 4: no split avoids a lone example, so the batch is filled anyway
    assert [len(b) for b in pk_batches([0, 0, 0, 1, 1, 1], 4, 4, 0)] == [4, 2]
    assert pk_batches([], 8, 4, 0) == []
    with_unknown = pk_batches([0, 0, -1, 1, 1, -1], 4, 2, 0)
    assert sorted(p for b in with_unknown for p in b) == list(range(6))
    with pytest.raises(ValueError):
        pk_batches([0, 1], 0, 2, 0)


def test_contrastive_labeled_batches_come_from_the_pk_sampler():
    y = _labels()
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert Contrastive(k=4).labeled_batches(y, 16, rng_a) == pk_batches(y, 16, 4, rng_b)
    assert Contrastive(k=1).labeled_batches(y, 16, rng_a) is None  # k = 1: plain shuffle


# ----------------------------------------------------------------------------- the method
def test_contrastive_knobs_and_config():
    m = Contrastive(loss="focal", weight=0.3, k=2)
    cfg = m.config()
    assert cfg["name"] == "contrastive" and cfg["loss"] == "focal" and cfg["weight"] == 0.3
    assert m.uses_unlabeled is False and Contrastive(pseudo_positives=True).uses_unlabeled is True
    assert "loss='focal'" in repr(m)
    with pytest.raises(ValueError, match="loss must be one of"):
        Contrastive(loss="triplet")


@pytest.fixture(scope="module")
def budget(mcid_budget):
    return mcid_budget(train=96, labeled=0.5)


def _ctx(model, method):
    ctx = SimpleNamespace(model=model, unwrapped_model=model,
                          sup_loss=lambda logits, labels, weight=None: classification_loss(logits, labels))
    method.setup(ctx)
    return ctx


def _batch(model, budget, n=16):
    texts = budget.labeled.texts[:n]
    batch = model.collate(model.tokenize(texts))
    batch["labels"] = torch.as_tensor(budget.labeled.labels[:n])
    return {"labeled": batch, "unlabeled": None}


@pytest.mark.parametrize("loss", ["simple", "focal", "margin"])
def test_the_contrastive_term_has_a_gradient_on_lora(budget, loss, make_tiny_model):
    """USB's lesson: test that every loss term actually reaches the weights."""
    model = make_tiny_model(budget)
    model.train()
    method = Contrastive(loss=loss)
    ctx = _ctx(model, method)
    b = _batch(model, budget)["labeled"]
    logits, feats = method._forward(ctx, b)
    con = method.contrastive_loss(feats, b["labels"])
    assert con.item() > 0
    con.backward()
    lora = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(g is not None and torch.isfinite(g).all() for g in lora.values())
    assert sum(float(g.abs().sum()) for g in lora.values()) > 0
    assert model.head.weight.grad is None  # the term shapes the encoder, not the head


def test_layer_option_pools_a_hidden_block_and_only_reaches_the_blocks_below(budget, make_tiny_model):
    model = make_tiny_model(budget)  # 2 blocks: pool block 0's output; block 1 must get no gradient
    model.train()
    method = Contrastive(layer=0)
    ctx = _ctx(model, method)
    assert len(transformer_blocks(model)) == 2
    assert method._block is transformer_blocks(model)[0]
    b = _batch(model, budget)["labeled"]
    hooks = dict(method._block._forward_hooks)
    _, feats = method._forward(ctx, b)
    assert dict(method._block._forward_hooks) == hooks  # our hook is removed after every forward
    # the same features as the encoder's own hidden_states[1] (output of block 0), mean-pooled
    model.eval()
    with torch.no_grad():
        _, feats_eval = method._forward(ctx, b)
        hs = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           output_hidden_states=True).hidden_states[1]
        m = b["attention_mask"].unsqueeze(-1).float()
        assert torch.allclose(feats_eval, (hs * m).sum(1) / m.sum(1), atol=1e-5)
    method.contrastive_loss(feats, b["labels"]).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    below = [g for n, g in grads.items() if ".layer.0." in n]
    above = [g for n, g in grads.items() if ".layer.1." in n]
    assert below and all(g is not None and float(g.abs().sum()) > 0 for g in below)
    assert above and all(g is None or float(g.abs().sum()) == 0 for g in above)


def test_projection_head_needs_configure_model_and_gets_gradients(budget, make_tiny_model):
    model = make_tiny_model(budget)
    method = Contrastive(projection=32)
    with pytest.raises(RuntimeError, match="configure_model"):
        _ctx(model, method)
    method.configure_model(model)
    head = getattr(model, PROJECTION_ATTR)
    method.configure_model(model)
    assert getattr(model, PROJECTION_ATTR) is head  # idempotent
    assert head[-1].out_features == 32
    assert all(p.requires_grad for p in head.parameters())
    ctx = _ctx(model, method)
    b = _batch(model, budget)["labeled"]
    _, feats = method._forward(ctx, b)
    assert feats.shape == (len(b["labels"]), 32)
    method.contrastive_loss(feats, b["labels"]).backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in head.parameters())
    # the same seed whatever the global RNG: a second model gets an identical head
    torch.manual_seed(123)
    other = make_tiny_model(budget)
    method.configure_model(other)
    assert torch.equal(getattr(other, PROJECTION_ATTR)[0].weight.detach(), head[0].weight.detach())


def test_pseudo_positives_join_the_contrastive_term(budget, make_tiny_model):
    model = make_tiny_model(budget)
    model.train()
    method = Contrastive(pseudo_positives=True, pseudo_threshold=0.0)  # every unlabeled one joins
    ctx = _ctx(model, method)
    batch = _batch(model, budget, n=8)
    unl = model.collate(model.tokenize(budget.unlabeled.texts[:6]))
    batch["unlabeled"] = unl
    out = method.loss(batch, ctx)
    assert out["pseudo_positives"].item() == 6
    assert torch.isfinite(out["loss"])
    out_none = Contrastive(pseudo_positives=True, pseudo_threshold=1.01).loss(batch, ctx)
    assert out_none["pseudo_positives"].item() == 0


FAST = dict(epochs=2, steps_per_epoch=3, batch_size=16, eval_batch_size=64, progress=False, log_every=1,
            save_checkpoint=False)


def test_a_short_contrastive_fit_moves_the_weights_and_logs_its_term(budget, tmp_path, make_tiny_model):
    model = make_tiny_model(budget)
    method = Contrastive(loss="simple", weight=1.0, k=4, projection=16)  # fit() attaches the head
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(PROJECTION_ATTR) for n in before)
    result = fit(model, budget, method, run_dir=str(tmp_path / "run"), **FAST)
    after = dict(result.model.named_parameters())
    moved = {n for n, p in before.items() if not torch.equal(p, after[n].detach())}
    assert any("lora_B" in n for n in moved)
    # fit() called configure_model before building the optimiser: the projection head trained
    head = getattr(result.model, PROJECTION_ATTR)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        init = torch.nn.Linear(head[0].in_features, head[0].out_features).weight
    assert not torch.equal(head[0].weight.detach().cpu(), init)
    h = result.history
    steps = h.dropna(subset=["contrastive"])
    assert len(steps) == FAST["epochs"] * FAST["steps_per_epoch"]
    assert (steps["contrastive"] > 0).all()
    assert (steps["anchors"] > 0.9).all()  # P x K batches: (nearly) every anchor has a positive
    assert result.summary["method"] == "contrastive"
    assert 0.0 <= result.test["accuracy"] <= 1.0
