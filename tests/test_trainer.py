"""The one training loop: determinism, resume, the run record and its identity, checkpoint reload,
early stopping, presets by name."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

import sslkit
from sslkit.backbones import embed, load_saved_backbone
from sslkit.losses import classification_loss, focal_loss
from sslkit.methods import Supervised
from sslkit.runs import LAST_STATE, load_runs, run_config, run_identity
from sslkit.trainer import RunOptions, TrainConfig, fit

FAST = dict(epochs=2, batch_size=16, eval_batch_size=64, progress=False, log_every=1)


@pytest.fixture(scope="module")
def budget():
    data = sslkit.load_dataset("mcid").subsample(train=96, dev=48, test=48, seed=0)
    return sslkit.split_budget(data, labeled=0.5, seed=0)


@pytest.fixture(scope="module")
def _model(make_tiny_model):
    """The mechanics need no pretrained weights: a tiny random encoder (seconds, not minutes)."""
    return make_tiny_model


# ----------------------------------------------------------------------------- losses
def test_focal_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    gamma, alpha = 2.0, [0.25, 0.5, 0.75]
    expected = []
    for row, t in zip(logits.tolist(), target.tolist()):
        z = np.exp(np.array(row) - max(row))
        p = z / z.sum()
        expected.append(alpha[t] * (1 - p[t]) ** gamma * -np.log(p[t]))
    got = focal_loss(logits, target, gamma=gamma, alpha=alpha)
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-6)


def test_focal_loss_reduces_to_cross_entropy_and_smoothing():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    assert focal_loss(logits, target, gamma=0.0, label_smoothing=0.1).item() == pytest.approx(ce.item(), rel=1e-6)
    assert classification_loss(logits, target, label_smoothing=0.1).item() == pytest.approx(ce.item(), rel=1e-6)
    # focusing: easy examples are down-weighted, so focal < CE
    assert classification_loss(logits, target, focal_gamma=2.0).item() < classification_loss(logits, target).item()
    with pytest.raises(ValueError, match="3 weights for 5 classes"):
        focal_loss(logits, target, alpha=[1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- fit
@pytest.mark.pretrained
@pytest.mark.parametrize("track_test", [False, True])
def test_fit_writes_the_run_record_and_reload_reproduces_test_accuracy(budget, tmp_path, track_test, make_model):
    """The final dev / test numbers are those of the best epoch's evaluation (reused, not scored
    again): a reloaded checkpoint of MiniLM must reproduce them exactly, with or without per-epoch
    test scoring."""
    run_dir = tmp_path / "run"
    result = fit(make_model(budget), budget, Supervised(), run_dir=str(run_dir), track_test=track_test, **FAST)
    for name in ("config.json", "metrics.jsonl", "summary.json", "predictions.csv", "checkpoint"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / LAST_STATE).exists()  # finished runs drop their epoch checkpoint
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["seed"] == 0 and "torch" in config["versions"]
    assert summary["test"]["n"] == len(budget.test)
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    history = result.history
    assert history["dev_macro_f1"].notna().sum() == FAST["epochs"]
    assert history["train_loss"].notna().sum() >= 2

    preds = pd.read_csv(run_dir / "predictions.csv")
    gold_acc = (preds["gold"] == preds["pred"]).mean()
    assert gold_acc == pytest.approx(summary["test"]["accuracy"])
    moved = result.pseudo_labels()  # a supervised run moves no pool text
    assert moved.empty and "gold" in moved.columns and not (run_dir / "pseudo_labels.csv").exists()

    reloaded = load_saved_backbone(run_dir / "checkpoint")
    assert reloaded.info.label_names == budget.label_names
    _, logits = embed(reloaded, budget.test.texts, return_logits=True)
    acc = float((logits.argmax(1) == budget.test.labels).mean())
    assert acc == summary["test"]["accuracy"]  # exactly, not approximately
    _, dev_logits = embed(reloaded, budget.dev.texts, return_logits=True)
    assert float((dev_logits.argmax(1) == budget.dev.labels).mean()) == summary["dev"]["accuracy"]
    best = history[history["epoch"] == summary["best_epoch"]].dropna(subset=["dev_accuracy"]).iloc[-1]
    assert best["dev_accuracy"] == summary["dev"]["accuracy"]
    if track_test:
        assert best["test_accuracy"] == summary["test"]["accuracy"]


def test_same_seed_same_metrics_other_seed_differs(budget, tmp_path, _model):
    a = fit(_model(budget), budget, run_dir=str(tmp_path / "a"), **FAST)
    b = fit(_model(budget), budget, run_dir=str(tmp_path / "b"), **FAST)
    assert a.summary["dev"] == b.summary["dev"] and a.summary["test"] == b.summary["test"]
    assert a.history["train_loss"].dropna().tolist() == b.history["train_loss"].dropna().tolist()
    c = fit(_model(budget, seed=1), budget, run_dir=str(tmp_path / "c"), **{**FAST, "seed": 1})
    assert c.history["train_loss"].dropna().tolist() != a.history["train_loss"].dropna().tolist()


class Interrupted(RuntimeError):
    pass


@dataclass
class _StopsInEpoch2(Supervised):
    """Supervised, but dies at the first step of epoch 2 (after epoch 1 was checkpointed)."""

    name = "supervised"

    def after_step(self, ctx) -> None:
        if ctx.epoch == 2:
            raise Interrupted("simulated crash")


def test_resume_from_epoch_checkpoint_matches_uninterrupted_run(budget, tmp_path, _model):
    full = fit(_model(budget), budget, run_dir=str(tmp_path / "full"), **FAST)

    run_dir = tmp_path / "resumed"
    with pytest.raises(Interrupted):  # resume_every=0: a checkpoint after every epoch, however short
        fit(_model(budget), budget, _StopsInEpoch2(), run_dir=str(run_dir), **FAST, resume_every=0)
    assert (run_dir / LAST_STATE).exists()
    assert not (run_dir / "summary.json").exists()

    resumed = fit(_model(budget), budget, Supervised(), run_dir=str(run_dir), **FAST)
    assert resumed.summary["test"] == full.summary["test"]
    assert resumed.summary["dev"] == full.summary["dev"]
    # the log holds each epoch once, as if the run had never stopped
    assert resumed.history["dev_macro_f1"].dropna().tolist() == full.history["dev_macro_f1"].dropna().tolist()


def test_short_epochs_skip_the_checkpoint_and_a_crash_retrains(budget, tmp_path, _model):
    """Epochs shorter than resume_every (default 30 s) write no epoch checkpoint: a crashed run starts
    again from scratch, to the same result (resume_every is bookkeeping, not part of the run id)."""
    full = fit(_model(budget), budget, run_dir=str(tmp_path / "full"), **FAST)
    run_dir = tmp_path / "crashed"
    with pytest.raises(Interrupted):
        fit(_model(budget), budget, _StopsInEpoch2(), run_dir=str(run_dir), **FAST, resume_every=3600)
    assert not (run_dir / LAST_STATE).exists()
    again = fit(_model(budget), budget, Supervised(), run_dir=str(run_dir), **FAST, resume_every=3600)
    assert again.summary["test"] == full.summary["test"] and again.run_id == full.run_id


def test_focal_and_early_stopping_options(budget, tmp_path, _model):
    res = fit(_model(budget), budget, run_dir=str(tmp_path / "f"),
              **{**FAST, "epochs": 4, "focal_gamma": 2.0, "label_smoothing": 0.1, "early_stopping": 1,
                 "lr": 0.0, "head_lr": 0.0, "warmup_ratio": 0.0})
    # with a zero learning rate the dev score never improves after epoch 1: stop after epoch 2
    assert res.summary["stopped_early"] and res.summary["epochs_run"] == 2
    assert res.summary["best_epoch"] == 1
    cfg = json.loads((tmp_path / "f" / "config.json").read_text())
    assert cfg["train"]["focal_gamma"] == 2.0


def test_unknown_option_is_refused(budget, _model):
    with pytest.raises(TypeError, match="unknown training options"):
        fit(_model(budget), budget, epocs=3)


def test_load_runs_reads_summaries(budget, tmp_path, monkeypatch, _model):
    monkeypatch.setenv("SSLKIT_REPORTS", str(tmp_path))
    res = fit(_model(budget), budget, **{**FAST, "epochs": 1, "save_checkpoint": False})
    assert res.run_dir.parent == tmp_path / "runs"
    df = load_runs(tmp_path)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["test.accuracy"] == res.summary["test"]["accuracy"]
    assert row["method"] == "supervised" and row["dataset"] == budget.dataset


def _identity(model, budget, method=None, config=None, **kw) -> str:
    return run_identity(run_config(model, budget, method or Supervised(), config or TrainConfig(), **kw))


def test_an_int_given_to_a_float_option_is_the_same_configuration(budget, _model):
    """1 and 1.0 are one setting: the run id must not tell them apart, or a notebook passing 1.0
    retrains a finished run started with 1."""
    from sslkit.methods import FixMatch, MeanTeacher

    model = _model(budget)
    same = [(FixMatch(weight=1), FixMatch(weight=1.0), TrainConfig(lr=1), TrainConfig(lr=1.0)),
            (MeanTeacher(max_weight=5), MeanTeacher(max_weight=5.0), TrainConfig(epochs=2), TrainConfig(epochs=2))]
    for m1, m2, c1, c2 in same:
        assert _identity(model, budget, m1, c1) == _identity(model, budget, m2, c2)
    assert FixMatch(weight=1).config()["weight"] == 1.0
    assert isinstance(FixMatch(mu=2).config()["mu"], int)  # int fields stay ints
    assert _identity(model, budget, FixMatch(weight=1)) != _identity(model, budget, FixMatch(weight=2))
    # an optional part left off (None) is not recorded; switched on, it changes the identity
    assert "ema_decay" not in FixMatch().config() and FixMatch(ema_decay=0.99).config()["ema_decay"] == 0.99
    assert _identity(model, budget, FixMatch()) != _identity(model, budget, FixMatch(ema_decay=0.99))


def test_every_setting_that_changes_results_changes_the_identity_and_bookkeeping_does_not(budget, _model,
                                                                                         monkeypatch):
    """Each TrainConfig field, the method's knobs (the threshold rule's too), the device, the
    precision and the record version enter the hash; RunOptions never do."""
    import sslkit.runs
    from sslkit.methods import FixMatch
    from sslkit.thresholds import FixedThreshold

    model = _model(budget)
    base = _identity(model, budget)
    changed = {"epochs": 7, "batch_size": 8, "group_by_length": 0, "lr": 1e-3, "head_lr": 1e-2,
               "weight_decay": 0.1, "warmup_ratio": 0.2, "scheduler": "linear", "max_grad_norm": 0.5,
               "fused_optimizer": True, "label_smoothing": 0.1, "focal_gamma": 1.0, "early_stopping": 2,
               "seed": 3, "steps_per_epoch": 5}
    assert set(changed) | {"mixed_precision"} == {f.name for f in dataclasses.fields(TrainConfig)}
    for name, value in changed.items():
        assert _identity(model, budget, config=TrainConfig(**{name: value})) != base, name
    assert _identity(model, budget, precision="bf16") != base
    assert _identity(model, budget, device="cuda") != base
    assert _identity(model, budget, FixMatch()) != _identity(model, budget, FixMatch(threshold=FixedThreshold()))
    monkeypatch.setattr(sslkit.runs, "RECORD_VERSION", sslkit.runs.RECORD_VERSION + 1)
    assert _identity(model, budget) != base
    # bookkeeping is not part of run_config at all
    assert not {f.name for f in dataclasses.fields(RunOptions)} & set(run_config(
        model, budget, Supervised(), TrainConfig())["train"])


def test_a_preset_by_name_brings_its_training_settings(budget, tmp_path, _model):
    res = fit(_model(budget), budget, "focal", run_dir=str(tmp_path / "p"), **{**FAST, "epochs": 1})
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["train"]["focal_gamma"] == 2.0 and cfg["label"] == "focal"
    assert res.summary["method"] == "focal" and res.summary["algorithm"] == "supervised"
    assert res.run_id.startswith(f"{budget.dataset}-0.5-focal-s0-")
    with pytest.raises(ValueError, match="unknown preset 'fixmach'"):
        fit(_model(budget), budget, "fixmach")
