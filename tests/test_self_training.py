"""Self-training inside the trainer: rounds move pool rows, the method never sees gold labels,
diagnostics are recorded, and a resumed run replays its earlier rounds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sslkit.methods import SelfTraining
from sslkit.runs import LAST_STATE, read_rounds, read_traces
from sslkit.thresholds import FixedThreshold, FreeMatchThreshold
from sslkit.trainer import fit

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


def test_rounds_move_pool_rows_and_record_diagnostics(budget, tmp_path, make_tiny_model):
    run_dir = tmp_path / "st"
    method = _GoldSpy(top_k=0.5, threshold=FreeMatchThreshold(margin=-1.0))  # every pool text is a candidate
    res = fit(make_tiny_model(budget), budget, method, run_dir=str(run_dir), **FAST)
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

    traces = read_traces(run_dir)  # one line per step: the thresholds after its update
    assert len(traces) == res.history["step"].max()
    assert all(len(t) == budget.num_classes for t in traces["tau_c"])
    hist = res.history.dropna(subset=["dev_accuracy"])
    assert hist["n_train"].tolist() == [len(budget.labeled) + per_round[0],
                                        len(budget.labeled) + per_round.sum()]


def test_fixed_threshold_selects_nothing_below_it(budget, tmp_path, make_tiny_model):
    res = fit(make_tiny_model(budget), budget, SelfTraining(threshold=FixedThreshold(tau0=0.999999)),
              run_dir=str(tmp_path / "fixed"), **FAST)
    assert res.summary["n_pseudo_labeled"] == 0
    assert not (tmp_path / "fixed" / "traces.jsonl").exists()  # a fixed rule learns nothing per step


class Interrupted(RuntimeError):
    pass


class _DiesInEpoch2(SelfTraining):
    def after_step(self, ctx):
        if ctx.epoch == 2:
            raise Interrupted


def test_resume_replays_pseudo_label_rounds(budget, tmp_path, make_tiny_model):
    def method(cls=SelfTraining):
        return cls(top_k=0.5, threshold=FreeMatchThreshold(margin=-1.0), weight_by_confidence=True)

    full = fit(make_tiny_model(budget), budget, method(), run_dir=str(tmp_path / "full"), **FAST)
    run_dir = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        fit(make_tiny_model(budget), budget, method(_DiesInEpoch2), run_dir=str(run_dir), **FAST, resume_every=0)
    assert (run_dir / LAST_STATE).exists()
    again = fit(make_tiny_model(budget), budget, method(), run_dir=str(run_dir), **FAST)
    assert again.summary["test"] == full.summary["test"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "pseudo_labels.csv"),
                                  pd.read_csv(run_dir / "pseudo_labels.csv"))


def test_thresholds_learn_from_the_model_as_it_predicts(budget, make_tiny_model, monkeypatch):
    """The per-step update sees an eval-mode pass with LoRA folded in: the probabilities evaluation
    gives, the same on every call, and the model is back in train mode after."""
    from helpers import one_process_ctx, parts

    model = make_tiny_model(budget)
    ctx = one_process_ctx(model, budget)
    lab, unl = parts(model, budget)
    method = SelfTraining()
    method.setup(ctx)
    seen = []
    monkeypatch.setattr(method.threshold, "update", seen.append)
    model.train()
    method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    method.loss({"labeled": lab, "unlabeled": unl}, ctx)
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(unl["input_ids"], unl["attention_mask"]), -1)
    assert torch.equal(seen[0], seen[1]) and torch.allclose(seen[0], expected, atol=1e-5)


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
