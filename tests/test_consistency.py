"""Consistency methods: the math on hand examples and random tensors, token noise, and the three
methods inside the trainer (every loss term moves the weights; the teacher is an EMA of the
trainable weights only; temporal ensembling records z from the training passes)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslkit.augment import adversarial_embeddings, token_noise
from sslkit.consistency_math import (consistency_loss, consistency_weight, ema_decay, ema_update_, ensemble_update_,
                                rampup, temporal_target)
from helpers import one_process_ctx, parts

from sslkit.methods import MeanTeacher, PiModel, TemporalEnsemble
from sslkit.methods.base import take_rows
from sslkit.trainer import fit


# --------------------------------------------------------------------------- pure math
def test_bias_corrected_target_hand_example():
    # alpha 0.6, one example, z1 = [1, 0] then z2 = [0, 1]
    Z, t = torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)
    ensemble_update_(Z, torch.tensor([0]), torch.tensor([[1.0, 0.0]]), 0.6)
    t += 1
    assert torch.allclose(Z, torch.tensor([[0.4, 0.0]]))
    assert torch.allclose(temporal_target(Z, t, 0.6), torch.tensor([[1.0, 0.0]]))  # 0.4 / (1 - 0.6)
    ensemble_update_(Z, torch.tensor([0]), torch.tensor([[0.0, 1.0]]), 0.6)
    t += 1
    # Z = [0.24, 0.4]; 1 - 0.36 = 0.64 -> [0.375, 0.625]
    assert torch.allclose(temporal_target(Z, t, 0.6), torch.tensor([[0.375, 0.625]]))
    # rows never updated have no target (zeros, not a division by zero)
    assert torch.equal(temporal_target(torch.zeros(2, 3), torch.tensor([0, 0]), 0.6), torch.zeros(2, 3))


def test_bias_corrected_target_is_a_distribution_for_random_updates():
    g = torch.Generator().manual_seed(0)
    Z, t = torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)
    for k in range(1, 6):
        rows = torch.arange(k)  # row i receives 5 - i updates
        ensemble_update_(Z, rows, torch.softmax(torch.randn(k, 4, generator=g), -1), 0.6)
        t[rows] += 1
    assert torch.allclose(temporal_target(Z, t, 0.6).sum(-1), torch.ones(5), atol=1e-6)


def test_ema_update_on_a_toy_module():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    teacher = {n: p.detach().clone() + 1.0 for n, p in student.named_parameters()}
    before = {n: t.clone() for n, t in teacher.items()}
    ema_update_(teacher, student.named_parameters(), 0.9)
    for n, p in student.named_parameters():
        assert torch.allclose(teacher[n], 0.9 * before[n] + 0.1 * p.detach())
    assert ema_decay(0, 0.999, 0.99, rampup_steps=10) == 0.0       # 1 - 1/1
    assert ema_decay(1, 0.999, 0.99, rampup_steps=10) == 0.5
    assert ema_decay(9, 0.999, 0.99, rampup_steps=10) == pytest.approx(0.9)
    assert ema_decay(500, 0.999, 0.99, rampup_steps=1000) == 0.99   # capped during the ramp-up
    assert ema_decay(1000, 0.999, 0.99, rampup_steps=1000) == 0.999


def test_rampup_values_at_known_points():
    assert rampup(0.0, "linear") == 0.0 and rampup(0.5, "linear") == 0.5 and rampup(1.0, "linear") == 1.0
    assert rampup(0.0, "sigmoid") == pytest.approx(math.exp(-5))
    assert rampup(0.5, "sigmoid") == pytest.approx(math.exp(-1.25))
    assert rampup(1.0, "sigmoid") == 1.0
    assert rampup(0.5, "cosine") == pytest.approx(0.5) and rampup(1.0, "cosine") == pytest.approx(1.0)
    assert rampup(2.0, "linear") == 1.0 and rampup(-1.0, "cosine") == 0.0
    # weight: 0 through the first epoch, then the ramp, then the maximum
    assert consistency_weight(9, 10, 2, 5.0, "linear") == 0.0
    assert consistency_weight(10, 10, 2, 5.0, "linear") == 0.0
    assert consistency_weight(20, 10, 2, 5.0, "linear") == pytest.approx(2.5)
    assert consistency_weight(30, 10, 2, 5.0, "linear") == 5.0
    assert consistency_weight(99, 10, 2, 5.0, "sigmoid") == 5.0
    with pytest.raises(ValueError, match="rampup"):
        rampup(0.5, "step")


@pytest.mark.parametrize("kind", ["mse", "kl", "l1", "ce"])
def test_consistency_losses_against_a_direct_computation(kind):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, generator=g)
    q = torch.softmax(torch.randn(6, 5, generator=g), -1)
    q[0] = torch.tensor([1.0, 0, 0, 0, 0])  # zeros in the target: KL terms with q = 0 vanish
    expected = []
    for i in range(6):
        p = [math.exp(v) for v in logits[i].tolist()]
        p = [v / sum(p) for v in p]
        qi = q[i].tolist()
        if kind == "mse":
            expected.append(sum((a - b) ** 2 for a, b in zip(p, qi)))
        elif kind == "l1":
            expected.append(sum(abs(a - b) for a, b in zip(p, qi)))
        elif kind == "ce":  # the target's hard label, only where the target is confident enough
            j = max(range(5), key=qi.__getitem__)
            expected.append(-math.log(p[j]) if qi[j] >= 0.3 else 0.0)
        else:
            expected.append(sum(b * (math.log(b) - math.log(a)) for a, b in zip(p, qi) if b > 0))
    per = consistency_loss(logits, q, kind, reduction="none", threshold=0.3)
    assert torch.allclose(per, torch.tensor(expected), atol=1e-6)
    assert consistency_loss(logits, q, kind, threshold=0.3) == pytest.approx(sum(expected) / 6, abs=1e-6)
    # the target is detached: only the student gets a gradient
    s, t = logits.clone().requires_grad_(), q.clone().requires_grad_()
    consistency_loss(s, t, kind).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    if kind != "ce":  # identical -> 0 (a hard label against a soft student is not 0)
        assert consistency_loss(q[1:].log(), q[1:], kind) == pytest.approx(0.0, abs=1e-6)


def test_ce_consistency_counts_only_confident_targets():
    logits = torch.zeros(3, 4)
    q = torch.tensor([[0.97, 0.01, 0.01, 0.01], [0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.95, 0.05]])
    per = consistency_loss(logits, q, "ce", reduction="none", threshold=0.9)
    assert torch.allclose(per, torch.tensor([math.log(4), 0.0, math.log(4)]))
    assert consistency_loss(logits, q, "ce", threshold=1.0).item() == 0.0


# --------------------------------------------------------------------------- token noise
def _id_batch(B=64, T=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, T + 1, (B,), generator=g)
    ids = torch.randint(1000, 2000, (B, T), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids[:, 0] = 101
    ids[torch.arange(B), lengths - 1] = 102
    ids[mask == 0] = 0
    return ids, mask


def test_token_noise_keeps_ids_valid_and_specials_in_place():
    ids, mask = _id_batch()
    new, new_mask = token_noise(ids, mask, 0.3, special_ids=[101, 102, 0], mask_id=103, pad_id=0,
                                generator=torch.Generator().manual_seed(0))
    allowed = set(ids.unique().tolist()) | {103, 0}
    assert set(new.unique().tolist()) <= allowed
    assert new.shape == ids.shape and torch.all(new[new_mask == 0] == 0)
    assert torch.all(new[:, 0] == 101)                         # [CLS] stays first
    last = new_mask.sum(1) - 1
    assert torch.all(new[torch.arange(len(new)), last] == 102)  # [SEP] stays last
    assert torch.all(new_mask.sum(1) <= mask.sum(1)) and torch.all(new_mask.sum(1) >= 2)
    # masks stay contiguous (deleted tokens close up to the left)
    assert torch.all(new_mask[:, 1:] <= new_mask[:, :-1])


@pytest.mark.parametrize("op", ["replace", "delete", "swap"])
def test_token_noise_respects_its_rate(op):
    ids, mask = _id_batch(B=256, T=40, seed=1)
    eligible = int(((mask == 1) & (ids != 101) & (ids != 102)).sum())
    rate = 0.2
    new, new_mask = token_noise(ids, mask, rate, special_ids=[101, 102, 0], mask_id=103, ops=[op],
                                generator=torch.Generator().manual_seed(2))
    if op == "replace":
        changed = int((new == 103).sum())
    elif op == "delete":
        changed = int(mask.sum() - new_mask.sum())
    else:  # a swap changes two positions; overlapping swaps are dropped, so at most the rate
        changed = int((new != ids).sum()) / 2
    share = changed / eligible
    if op == "swap":
        assert 0.5 * rate < share <= rate + 0.02
    else:
        assert abs(share - rate) < 0.02, share
    same, _ = token_noise(ids, mask, 0.0, special_ids=[101, 102, 0], mask_id=103)
    assert torch.equal(same, ids)


def test_token_noise_refuses_bad_options():
    ids, mask = _id_batch(B=2)
    with pytest.raises(ValueError, match="rate"):
        token_noise(ids, mask, 1.5, mask_id=103)
    with pytest.raises(ValueError, match="ops"):
        token_noise(ids, mask, 0.1, mask_id=103, ops=["shuffle"])


def test_adversarial_embeddings_have_the_requested_norm():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8)

    class Tiny(nn.Module):
        def input_embeddings(self, ids):
            return emb(ids)

    head = nn.Linear(8, 3)
    forward = lambda e, m: head((e * m.unsqueeze(-1)).sum(1))  # noqa: E731
    ids, mask = torch.randint(1, 50, (4, 6)), torch.ones(4, 6, dtype=torch.long)
    mask[0, 4:] = 0
    target = torch.softmax(forward(emb(ids), mask), -1).detach()
    adv = adversarial_embeddings(Tiny(), forward, ids, mask, target, eps=0.5)
    r = (adv - emb(ids)).detach()
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((4,), 0.5), atol=1e-5)
    assert torch.all(r[0, 4:] == 0)  # padding is never perturbed
    adv.sum().backward()
    assert emb.weight.grad is not None  # trainable embeddings still learn through the noisy pass


# --------------------------------------------------------------------------- inside the trainer
FAST = dict(epochs=2, batch_size=16, eval_batch_size=64, progress=False, log_every=1, save_checkpoint=False)


@pytest.fixture(scope="module")
def budget(mcid_budget):
    return mcid_budget(train=160, labeled=0.25)


@pytest.mark.parametrize("noise", ["dropout", "token", "fgm"])
def test_pi_model_trains_with_every_noise(budget, tmp_path, noise, make_tiny_model):
    """One run per noise: the consistency term is on (w > 0, cons > 0) from epoch 2."""
    method = PiModel(noise=noise, rampup_epochs=0, noise_rate=0.2)
    res = fit(make_tiny_model(budget), budget, method, run_dir=str(tmp_path), **FAST)
    steps = res.history.dropna(subset=["cons"]) if "cons" in res.history else res.history.iloc[0:0]
    assert (steps["epoch"] == 2).all() and len(steps)
    assert (steps["w"] > 0).all() and (steps["cons"] > 0).any()


def _first_epoch_done(method, model, budget):
    """A context past the first epoch (w > 0), the method set up, its targets made to differ from the student."""
    ctx = one_process_ctx(model, budget, steps_per_epoch=1, total_steps=10, step=5, epoch=2)
    method.setup(ctx)
    if isinstance(method, TemporalEnsemble):
        method.Z[:] = 1.0 / budget.num_classes
        method.updates[:] = 1
    if isinstance(method, MeanTeacher):
        method.teacher = {n: t + 0.01 * torch.randn_like(t) for n, t in method.teacher.items()}
    return ctx


@pytest.mark.parametrize("method_cls", [PiModel, TemporalEnsemble, MeanTeacher])
def test_consistency_term_has_a_gradient(budget, make_tiny_model, method_cls):
    """USB's mean teacher once had a consistency term without gradient: each method's term alone
    must change the LoRA weights."""
    model = make_tiny_model(budget)
    method = method_cls(rampup_epochs=0)
    ctx = _first_epoch_done(method, model, budget)
    lab, unl = parts(model, budget, n_labeled=8)
    out = method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    model.zero_grad()
    (out["loss"] - out["sup"]).backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert lora_grads and any(g.abs().sum() > 0 for g in lora_grads), method.name


@pytest.mark.parametrize("method_cls", [PiModel, MeanTeacher])
def test_first_epoch_is_the_supervised_step(budget, make_tiny_model, method_cls):
    """w = 0 in the first epoch: one forward of the labeled part, nothing else."""
    model = make_tiny_model(budget)
    method = method_cls()
    ctx = one_process_ctx(model, budget, steps_per_epoch=10, total_steps=20, step=3, epoch=1)
    method.setup(ctx)
    rows = []
    model.register_forward_hook(lambda m, i, o: rows.append(_rows(o)))
    lab, unl = parts(model, budget)
    out = method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    assert rows == [4] and set(out) == {"loss", "sup"}


def test_mean_teacher_is_an_ema_of_trainable_weights_only(budget, tmp_path, make_tiny_model):
    model = make_tiny_model(budget)
    method = MeanTeacher(rampup_epochs=1, ema_decay=0.99)
    res = fit(model, budget, method, run_dir=str(tmp_path), **FAST)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(method.teacher) == trainable  # LoRA + head, not the frozen base
    assert sum(t.numel() for t in method.teacher.values()) == model.num_parameters(trainable=True)
    # the teacher differs from the student but is close (an average of its recent weights)
    student = model.trainable_state_dict()
    assert max(float((method.teacher[n] - student[n]).abs().max()) for n in student) > 0
    # both evaluated every epoch; the better on dev is the tested one
    hist = res.history.dropna(subset=["dev_macro_f1"])
    assert {"dev_macro_f1_teacher", "dev_accuracy_teacher"} <= set(hist.columns)
    best = max(hist["dev_macro_f1"].max(), hist["dev_macro_f1_teacher"].max())
    assert res.summary["best_variant"] in ("model", "teacher")
    assert res.summary["dev"]["macro_f1"] == pytest.approx(best)


def _rows(output) -> int:
    return (output[0] if isinstance(output, tuple) else output).shape[0]


def test_temporal_ensemble_updates_z_from_the_training_passes_only(budget, tmp_path, make_tiny_model):
    """Every row a step visited gets one update per epoch, from that step's output; no extra pass
    over the pool; the consistency term is on in epoch 2."""
    model = make_tiny_model(budget)
    method = TemporalEnsemble(rampup_epochs=0)
    res = fit(model, budget, method, run_dir=str(tmp_path), **FAST)
    lab = torch.as_tensor(budget.labeled.idx)
    assert torch.equal(method.updates[lab], torch.full((len(lab),), 2))  # one labeled pass per epoch
    assert int(method.updates.sum()) == sum(res.history["z_rows"].dropna().tolist())
    pool = torch.as_tensor(budget.unlabeled.idx)
    visited = method.updates[pool] > 0
    assert 0 < int(visited.sum()) <= len(pool)
    assert torch.allclose(temporal_target(method.Z[pool][visited], method.updates[pool][visited], 0.6).sum(-1),
                          torch.ones(int(visited.sum())), atol=1e-5)
    steps = res.history.dropna(subset=["cons"])
    assert len(steps) and (steps["epoch"] == 2).all() and (steps["cons"] > 0).all()
    assert res.history["z_mb"].dropna().iloc[-1] == pytest.approx(method.memory_mb)


def test_take_rows_keeps_rows_and_drops_padding_only_they_used():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0], [0, 5, 6, 7]])  # row 2 left-padded
    mask = (ids != 0).long()
    part = {"input_ids": ids, "attention_mask": mask, "idx": torch.tensor([10, 11, 12]), "note": "kept as is"}
    got = take_rows(part, torch.tensor([False, True, False]))
    assert got["input_ids"].tolist() == [[5, 6]] and got["attention_mask"].tolist() == [[1, 1]]
    assert got["idx"].tolist() == [11] and got["note"] == "kept as is"
    left = take_rows(part, torch.tensor([False, False, True]))
    assert left["input_ids"].tolist() == [[5, 6, 7]] and left["idx"].tolist() == [12]
    both = take_rows(part, torch.tensor([False, True, True]))  # together they use every column
    assert both["input_ids"].tolist() == [[5, 6, 0, 0], [0, 5, 6, 7]]
    assert take_rows(part, torch.zeros(3, dtype=torch.bool)) is None


def test_fgm_pass_keeps_fasttext_idf_weights():
    """The adversarial pass hands the ids along with the perturbed embeddings: FastText with IDF
    pooling weighs them as in its plain pass (with eps = 0 the two passes are the same function)."""
    from sslkit.backbones.fasttext import load_fasttext

    texts = ["how do I top up my card", "where is my refund", "card not working abroad", "top up failed twice"]
    model = load_fasttext(3, buckets=2**12, dim=16, weighting="idf", seed=0)
    model.adapt_to_corpus(texts + ["my card", "refund please"])
    model.eval()  # no dropout: the passes are comparable
    b = model.collate(model.tokenize(texts))

    class NoBudget:
        num_classes = 3

    ctx = one_process_ctx(model, NoBudget())
    method = PiModel(noise="fgm", fgm_eps=0.0)
    fgm = method.noisy_logits(ctx, b["input_ids"], b["attention_mask"], target=torch.full((4, 3), 1 / 3))
    torch.testing.assert_close(fgm, model(b["input_ids"], b["attention_mask"]))


def test_temporal_ensemble_forwards_rows_without_a_target_without_a_graph(budget, make_tiny_model):
    """The unlabeled rows with no target yet get the same logits as in one pass over the batch (so
    the same z and the same loss), but no gradient flows through them."""
    model = make_tiny_model(budget)
    model.eval()  # no dropout: the two ways of computing the logits are comparable
    method = TemporalEnsemble(noise="dropout")
    ctx = _first_epoch_done(method, model, budget)
    lab, unl = parts(model, budget, n_labeled=8)
    n_l = lab["input_ids"].shape[0]
    seen = torch.zeros(n_l + unl["input_ids"].shape[0], dtype=torch.bool)
    seen[:n_l] = True
    seen[n_l + 1::3] = True  # some unlabeled rows with a target, scattered
    target = torch.full((len(seen), budget.num_classes), 1.0 / budget.num_classes)
    split = method._split_logits(ctx, lab, unl, target, seen)
    whole = method.batch_logits(ctx, lab, unl, target=target)
    torch.testing.assert_close(split, whole, atol=1e-4, rtol=1e-4)
    assert 0 < ctx.logged["target_rate"] < 1
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    def grads(rows):
        return torch.autograd.grad(split[rows].sum(), lora, allow_unused=True, retain_graph=True)

    assert all(g is None or g.abs().sum() == 0 for g in grads(~seen))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(seen))
