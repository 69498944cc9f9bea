"""Self-training inside the trainer: rounds move pool rows, the method never sees gold labels,
diagnostics are recorded, and a resumed run replays its earlier rounds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sslkit
from sslkit.methods import SelfTraining
from sslkit.methods import self_training as self_training_module
from sslkit.runs import read_rounds, read_traces
from sslkit.trainer import LAST_STATE, fit

FAST = dict(epochs=2, batch_size=16, eval_batch_size=64, progress=False, log_every=1)


@pytest.fixture(scope="module")
def budget(mcid_budget):
    return mcid_budget(train=160, labeled=0.25)


class _GoldSpy(SelfTraining):
    """Records every unlabeled batch the method receives."""

    seen_keys: set = set()

    def loss(self, batch, ctx):
        if batch["unlabeled"] is not None:
            _GoldSpy.seen_keys |= set(batch["unlabeled"])
        return super().loss(batch, ctx)


def test_rounds_move_pool_rows_and_record_diagnostics(budget, tmp_path, make_model):
    run_dir = tmp_path / "st"
    method = _GoldSpy(top_k=0.5, threshold="freematch")
    res = fit(make_model(budget), budget, method, run_dir=str(run_dir), **FAST)
    assert "labels" not in _GoldSpy.seen_keys  # the pool's gold labels never reach the method

    pseudo = pd.read_csv(run_dir / "pseudo_labels.csv", keep_default_na=False)
    assert len(pseudo) == res.summary["n_pseudo_labeled"] > 0
    assert set(pseudo["round"]) == {0, 1}  # a round after each epoch
    assert pseudo["idx"].is_unique and set(pseudo["idx"]).isdisjoint(set(budget.labeled.idx.tolist()))
    assert set(pseudo["label"]) <= set(budget.label_names)
    # the precision the trainer reports is the share of pseudo-labels equal to the hidden gold label
    gold_of = dict(zip(budget.unlabeled.idx.tolist(), budget.unlabeled_gold.tolist()))
    names = budget.label_names
    correct = np.mean([names[gold_of[i]] == lab for i, lab in zip(pseudo["idx"], pseudo["label"])])
    assert res.summary["pseudo_label_precision"] == pytest.approx(correct)

    rounds = read_rounds(run_dir)
    assert set(rounds["round"]) == {0, 1} and len(rounds) == 2 * budget.num_classes
    per_round = rounds.groupby("round")["selected"].sum()
    assert per_round.tolist() == pseudo.groupby("round").size().tolist()
    assert (rounds["selected"] <= rounds["candidates"]).all()
    # at least one selected for every class that had candidates (class-balanced top-K)
    assert ((rounds["candidates"] == 0) | (rounds["selected"] >= 1)).all()
    first, second = (json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines())
    assert second["pool"] == first["pool"] - second["selected"]
    assert first["pool"] == len(budget.unlabeled) - first["selected"]

    traces = read_traces(run_dir)
    assert len(traces) == res.summary["epochs_run"] * res.history["step"].max() // FAST["epochs"]
    assert all(len(t) == budget.num_classes for t in traces["tau_c"])
    hist = res.history.dropna(subset=["dev_accuracy"])
    assert hist["n_train"].tolist() == [len(budget.labeled) + per_round[0],
                                        len(budget.labeled) + per_round.sum()]


def test_fixed_threshold_selects_nothing_below_it(budget, tmp_path, make_model):
    res = fit(make_model(budget), budget, SelfTraining(threshold="fixed", fixed_tau=0.999999, margin=0.0),
              run_dir=str(tmp_path / "fixed"), **FAST)
    assert res.summary["n_pseudo_labeled"] == 0


class Interrupted(RuntimeError):
    pass


class _DiesInEpoch2(SelfTraining):
    def after_step(self, ctx):
        if ctx.epoch == 2:
            raise Interrupted


def test_resume_replays_pseudo_label_rounds(budget, tmp_path, make_model):
    kw = dict(top_k=0.5, threshold="freematch", unlabeled_weight=0.5, weight_by_confidence=True)
    full = fit(make_model(budget), budget, SelfTraining(**kw), run_dir=str(tmp_path / "full"), **FAST)
    run_dir = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        fit(make_model(budget), budget, _DiesInEpoch2(**kw), run_dir=str(run_dir), **FAST, resume_every=0)
    assert (run_dir / LAST_STATE).exists()
    again = fit(make_model(budget), budget, SelfTraining(**kw), run_dir=str(run_dir), **FAST)
    assert again.summary["test"] == full.summary["test"]
    a = pd.read_csv(tmp_path / "full" / "pseudo_labels.csv")
    b = pd.read_csv(run_dir / "pseudo_labels.csv")
    pd.testing.assert_frame_equal(a, b)


def _one_process_ctx(model, budget):
    """A trainer context for calling a method's loss directly, as on one process."""
    from sslkit.trainer import Context, TrainConfig

    class Acc:
        num_processes = 1

        @staticmethod
        def unwrap_model(m):
            return m

    return Context(model=model, accelerator=Acc(), budget=budget, config=TrainConfig(), num_classes=budget.num_classes)


@pytest.mark.parametrize("strong_noise", [0.0, 0.3])
def test_unlabeled_term_moves_the_weights(budget, make_model, strong_noise, monkeypatch):
    """The per-step pseudo-label term must carry gradient (USB's mean-teacher bug, avoided); with
    strong_noise the student's view is the token-noised copy (FixMatch's strong view)."""
    import torch

    model = make_model(budget)
    with torch.no_grad():
        model.head.weight.mul_(50)  # confident predictions so pseudo-labels pass the threshold
    method = SelfTraining(threshold="fixed", fixed_tau=0.0, margin=-1.0, unlabeled_weight=1.0,
                          strong_noise=strong_noise)
    noised = []
    real_noise = self_training_module.model_token_noise
    monkeypatch.setattr(self_training_module, "model_token_noise",
                        lambda *a: noised.append(a[3]) or real_noise(*a))

    ctx = _one_process_ctx(model, budget)
    method.setup(ctx)
    ids = model.collate(model.tokenize(budget.unlabeled.texts[:8]))
    lab = model.collate(model.tokenize(budget.labeled.texts[:4]))
    lab["labels"] = torch.as_tensor(budget.labeled.labels[:4])
    out = method.loss({"labeled": lab, "unlabeled": ids}, ctx)
    assert out["mask_rate"] == 1.0
    assert noised == ([strong_noise] if strong_noise else [])
    out["unsup"].requires_grad_(False)
    model.zero_grad()
    (out["loss"] - out["sup"]).backward()  # the unsupervised part alone
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_weak_view_without_dropout_scores_as_the_model_predicts(budget, make_model, monkeypatch):
    """target_dropout=False: the thresholds and pseudo-labels come from an eval-mode pass (LoRA folded
    in): the probabilities evaluation would give, and the model is back in train mode after."""
    import torch

    model = make_model(budget)
    ctx = _one_process_ctx(model, budget)
    unl = model.collate(model.tokenize(budget.unlabeled.texts[:8]))
    lab = model.collate(model.tokenize(budget.labeled.texts[:4]))
    lab["labels"] = torch.as_tensor(budget.labeled.labels[:4])
    seen = {}
    for dropout in (True, False):
        method = SelfTraining(target_dropout=dropout)
        method.setup(ctx)
        monkeypatch.setattr(method.th, "update", lambda probs, d=dropout: seen.setdefault(d, []).append(probs))
        model.train()
        method.loss({"labeled": lab, "unlabeled": unl}, ctx)
        method.loss({"labeled": lab, "unlabeled": unl}, ctx)
        assert model.training
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(unl["input_ids"], unl["attention_mask"]), -1)
    assert torch.equal(seen[False][0], seen[False][1]) and torch.allclose(seen[False][0], expected, atol=1e-5)
    assert not torch.equal(seen[True][0], seen[True][1])  # dropout: two passes differ


def test_grown_budget_moves_pseudo_labeled_rows(budget):
    from sslkit.methods import grown_budget

    chosen = budget.unlabeled.idx[[0, 3, 5]]
    pseudo = pd.DataFrame({"idx": chosen, "label": [budget.label_names[1]] * 3})
    grown = grown_budget(budget, pseudo)
    assert len(grown.labeled) == len(budget.labeled) + 3
    assert len(grown.unlabeled) == len(budget.unlabeled) - 3 == len(grown.unlabeled_gold)
    assert (grown.unlabeled.labels == -1).all()
    assert grown.labeled.labels[-3:].tolist() == [1, 1, 1]
    assert set(chosen.tolist()) <= set(grown.labeled.idx.tolist())
    assert set(chosen.tolist()).isdisjoint(grown.unlabeled.idx.tolist())
    gold_of = dict(zip(budget.unlabeled.idx.tolist(), budget.unlabeled_gold.tolist()))
    assert [gold_of[i] for i in grown.unlabeled.idx.tolist()] == grown.unlabeled_gold.tolist()
    with pytest.raises(ValueError, match="not in the pool"):
        grown_budget(budget, pd.DataFrame({"idx": budget.labeled.idx[:1], "label": [budget.label_names[0]]}))


@pytest.mark.parametrize("weighted", [False, True])
def test_strong_view_leaves_rows_without_a_pseudo_label_out(budget, make_model, monkeypatch, weighted):
    """With the strong view on one process, rows whose pseudo-label is none weigh 0, so the strong pass
    skips them: the same term (mean over the whole unlabeled batch) as forwarding every row and masking."""
    import torch
    import torch.nn.functional as F

    model = make_model(budget)
    model.eval()  # no dropout: both computations see the same function
    monkeypatch.setattr(self_training_module, "model_token_noise", lambda model, ids, attn, rate: (ids, attn))
    forwarded = []
    real_forward = model.forward
    model.forward = lambda *a, **k: forwarded.append(k.get("input_ids", a[0] if a else None).shape[0]) \
        or real_forward(*a, **k)
    ctx = _one_process_ctx(model, budget)
    unl = model.collate(model.tokenize(budget.unlabeled.texts[:8]))
    lab = model.collate(model.tokenize(budget.labeled.texts[:4]))
    lab["labels"] = torch.as_tensor(budget.labeled.labels[:4])
    with torch.no_grad():
        logits = real_forward(input_ids=unl["input_ids"], attention_mask=unl["attention_mask"])
    probs = torch.softmax(logits.float(), -1)
    conf = probs.max(-1).values
    ranked = conf.sort().values
    cut = float(ranked[3] + ranked[4]) / 2  # half the rows pass a fixed threshold there, none close to it
    method = SelfTraining(threshold="fixed", fixed_tau=cut, margin=0.0, unlabeled_weight=1.0, strong_noise=0.2,
                          target_dropout=False, weight_by_confidence=weighted)
    method.setup(ctx)
    out = method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    kept = conf > cut
    assert 0 < int(kept.sum()) < 8
    assert forwarded == [4, 8, int(kept.sum())]  # labeled, weak view, then the strong view of the kept rows only
    per = F.cross_entropy(logits, probs.argmax(-1), reduction="none") * kept * (conf if weighted else 1.0)
    assert float(out["unsup"]) == pytest.approx(float(per.mean()), rel=1e-5)
    assert float(out["mask_rate"]) == pytest.approx(float(kept.float().mean()))
