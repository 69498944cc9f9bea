"""FixMatch: the unlabeled term carries gradient through the strong view only, texts without a
pseudo-label are never forwarded, the warm-up keeps it off, and any threshold rule plugs in."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import noiseless_parts, one_process_ctx, parts

from sslkit.methods import FixMatch
from sslkit.methods import fixmatch as fixmatch_module
from sslkit.thresholds import AdaptiveThreshold, FixedThreshold, FreeMatchThreshold
from sslkit.trainer import fit


@pytest.fixture(scope="module")
def budget(mcid_budget):
    return mcid_budget(train=160, labeled=0.25)


def _spy_forward(model) -> list[int]:
    """Rows of every forward of ``model`` from now on (the weak pass included)."""
    rows, real = [], model.forward
    model.forward = lambda *a, **k: rows.append(k.get("input_ids", a[0] if a else None).shape[0]) or real(*a, **k)
    return rows


def test_unlabeled_term_moves_the_weights_through_the_strong_view(budget, make_tiny_model, monkeypatch):
    """Every unlabeled text passes a threshold of 0: the term carries gradient (not detached), and
    the noised copy, not the text as is, is what the student sees."""
    model = make_tiny_model(budget)
    noised = []
    real_noise = fixmatch_module.model_token_noise
    monkeypatch.setattr(fixmatch_module, "model_token_noise", lambda *a: noised.append(a[3]) or real_noise(*a))
    ctx = one_process_ctx(model, budget, epoch=1)
    method = FixMatch(threshold=FixedThreshold(tau0=0.0, margin=-1.0), strong_noise=0.3)
    method.setup(ctx)
    lab, unl = parts(model, budget)
    out = method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    assert float(out["mask_rate"]) == 1.0 and noised == [0.3]
    model.zero_grad()
    (out["loss"] - out["sup"]).backward()  # the unsupervised part alone
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_rows_without_a_pseudo_label_skip_the_strong_pass(budget, make_tiny_model, monkeypatch):
    """The term is the mean over the whole unlabeled batch, computed from a pass over the kept rows only."""
    model = make_tiny_model(budget)
    lab, unl, logits = noiseless_parts(model, budget, monkeypatch)
    probs = torch.softmax(logits.float(), -1)
    conf = probs.max(-1).values
    ranked = conf.sort().values
    cut = float(ranked[3] + ranked[4]) / 2  # half the rows pass a fixed threshold there
    ctx = one_process_ctx(model, budget, epoch=1)
    method = FixMatch(threshold=FixedThreshold(tau0=cut))
    method.setup(ctx)
    forwarded = _spy_forward(model)
    out = method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    kept = conf > cut
    assert 0 < int(kept.sum()) < 8
    assert forwarded == [8, 4, int(kept.sum())]  # weak view, labeled, then the strong view of the kept rows
    per = F.cross_entropy(logits, probs.argmax(-1), reduction="none") * kept
    assert float(out["unsup"]) == pytest.approx(float(per.mean()), rel=1e-4)
    assert float(out["mask_rate"]) == pytest.approx(float(kept.float().mean()))


def test_warmup_epochs_train_on_labels_alone(budget, make_tiny_model):
    model = make_tiny_model(budget)
    lab, unl = parts(model, budget)
    method = FixMatch(threshold=FixedThreshold(tau0=0.0, margin=-1.0), warmup_epochs=1)
    for epoch, expected in ((1, [4]), (2, [8, 4, 8])):
        ctx = one_process_ctx(model, budget, epoch=epoch)
        method.setup(ctx)
        forwarded = _spy_forward(model)
        out = method.loss({"labeled": lab, "unlabeled": unl}, ctx)
        assert forwarded == expected and ("unsup" in out) == (epoch == 2)
        del model.forward  # back to the class's forward


@pytest.mark.parametrize("rule", [AdaptiveThreshold, FreeMatchThreshold])
def test_adaptive_rules_update_once_per_step_and_are_recorded(budget, make_tiny_model, rule):
    model = make_tiny_model(budget)
    ctx = one_process_ctx(model, budget, epoch=1)
    method = FixMatch(threshold=rule())
    method.setup(ctx)
    start = method.threshold.tau.clone()
    lab, unl = parts(model, budget)
    method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    assert not torch.equal(method.threshold.tau, start)
    assert method.config()["threshold"]["rule"] == rule.rule
    restored = FixMatch(threshold=rule())
    restored.setup(ctx)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.threshold.tau_c, method.threshold.tau_c)


def test_fixmatch_batches_hold_mu_unlabeled_texts_per_labeled_one(budget, tmp_path, make_tiny_model):
    sizes = []

    class Spy(FixMatch):
        def loss(self, batch, ctx):
            sizes.append((batch["labeled"]["input_ids"].shape[0], batch["unlabeled"]["input_ids"].shape[0]))
            return super().loss(batch, ctx)

    fit(make_tiny_model(budget), budget, Spy(mu=2, top_k=0.2), run_dir=str(tmp_path / "fm"), epochs=1,
        batch_size=8, progress=False, save_checkpoint=False)
    assert sizes and max(u for _, u in sizes) == 2 * 8  # mu x batch_size


def test_weight_average_starts_as_a_mean_and_is_scored_beside_the_model(budget, make_tiny_model, tmp_path):
    model = make_tiny_model(budget)
    ctx = one_process_ctx(model, budget, epoch=1)
    ctx.total_steps = 100
    method = FixMatch(ema_decay=0.9)
    method.setup(ctx)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    seen = []
    for step in range(3):  # decay min(1 - 1/(step + 1), 0.9): 0, 1/2, 2/3 -> the mean of the three
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        ctx.step = step
        method.after_step(ctx)
    for n in names:
        assert torch.allclose(method.average[n], sum(s[n] for s in seen) / 3, atol=1e-5)
    assert set(method.eval_states(ctx)) == {"ema"}
    restored = FixMatch(ema_decay=0.9)
    restored.setup(ctx)
    restored.load_state_dict(method.state_dict())
    assert all(torch.equal(restored.average[n], method.average[n]) for n in names)
    plain = FixMatch()
    plain.setup(ctx)
    assert plain.eval_states(ctx) == {} and "average" not in plain.state_dict()

    result = fit(make_tiny_model(budget), budget, FixMatch(ema_decay=0.9), epochs=2, batch_size=8, progress=False,
                 run_dir=str(tmp_path / "run"), save_checkpoint=False)
    assert {"dev_accuracy", "dev_accuracy_ema"} <= set(result.history.columns)
    assert result.summary["best_variant"] in ("model", "ema")


def test_ema_teacher_labels_the_pool_with_the_average_and_gives_the_weights_back(budget, make_tiny_model,
                                                                                 monkeypatch):
    """With ema_teacher the weak view's probabilities are the average's, the model's own weights are
    back after the step, and without it they are the model's."""
    model = make_tiny_model(budget)
    ctx = one_process_ctx(model, budget, epoch=1)
    lab, unl = parts(model, budget)
    method = FixMatch(threshold=FixedThreshold(tau0=0.0, margin=-1.0), ema_decay=0.9, ema_teacher=True)
    method.setup(ctx)
    own = model.trainable_state_dict()
    method.average = {n: t + 0.5 * torch.randn_like(t) for n, t in own.items()}  # an average far from the model
    seen = []
    real = fixmatch_module.weak_probs
    monkeypatch.setattr(fixmatch_module, "weak_probs", lambda c, part: seen.append(real(c, part)) or seen[-1])
    method.loss({"labeled": lab, "unlabeled": unl}, ctx)["loss"].backward()  # the swap left the graph intact
    with_own = FixMatch(threshold=FixedThreshold(tau0=0.0, margin=-1.0), ema_decay=0.9)
    with_own.setup(ctx)
    with_own.loss({"labeled": lab, "unlabeled": unl}, ctx)
    assert all(torch.equal(p, own[n]) for n, p in model.trainable_state_dict().items())
    model.load_trainable_state_dict(method.average)
    assert torch.allclose(seen[0], real(ctx, unl), atol=1e-6)
    assert not torch.allclose(seen[0], seen[1], atol=1e-3)
    with pytest.raises(ValueError, match="ema_decay"):
        FixMatch(ema_teacher=True).setup(ctx)
