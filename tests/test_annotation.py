"""The simulated annotation loop: growing a budget moves exactly the chosen texts with their gold
labels and changes the run identity; the loop spends the labels each target asks for and shares its
first round between strategies; the analysis helpers on hand-built picks."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import sslkit
from sslkit.annotation import (AnnotatedBudget, annotation_takeaway, class_entropy, gain_table, grow_budget,
                               pick_summary, round_summary, run_rounds, setup_text)
from sslkit.runs import run_config, run_identity
from sslkit.trainer import TrainConfig

FAST = dict(epochs=1, batch_size=16, eval_batch_size=64, progress=False, log_every=1)


@pytest.fixture(scope="module")
def start():
    """2 labels per class of a 120-text MCID subset (dev and test 32 each)."""
    data = sslkit.load_dataset("mcid").subsample(train=120, dev=32, test=32, seed=0)
    return sslkit.split_budget(data, per_class=2, seed=0)


def _identity(model, budget) -> str:
    return run_identity(run_config(model, budget, sslkit.methods.Supervised(), TrainConfig()))


# ----------------------------------------------------------------------------- grow_budget
def test_grow_budget_moves_exactly_the_chosen_texts_with_their_gold_labels(start):
    pos = np.array([5, 0, 17])
    grown = grow_budget(start, pos, fraction=0.2, chosen_by="margin")
    moved = start.unlabeled.idx[pos]
    assert isinstance(grown, AnnotatedBudget) and grown.chosen_by == "margin" and grown.rounds == 1
    assert len(grown.labeled) == len(start.labeled) + 3 and len(grown.unlabeled) == len(start.unlabeled) - 3
    assert np.all(np.diff(grown.labeled.idx) > 0), "the labeled set stays sorted by train idx"
    by_idx = dict(zip(grown.labeled.idx.tolist(), grown.labeled.labels.tolist()))
    assert [by_idx[i] for i in moved] == start.unlabeled_gold[pos].tolist()
    for i, text in zip(grown.labeled.idx, grown.labeled.texts):  # texts follow their idx
        where = np.flatnonzero(np.concatenate([start.labeled.idx, start.unlabeled.idx]) == i)[0]
        assert text == (start.labeled.texts + start.unlabeled.texts)[where]
    everything = np.concatenate([grown.labeled.idx, grown.unlabeled.idx])
    assert not set(grown.labeled.idx) & set(grown.unlabeled.idx)
    assert sorted(everything) == sorted(np.concatenate([start.labeled.idx, start.unlabeled.idx]))
    assert (grown.unlabeled.labels == sslkit.data.UNLABELED).all()
    keep = np.setdiff1d(np.arange(len(start.unlabeled)), pos)
    assert grown.unlabeled_gold.tolist() == start.unlabeled_gold[keep].tolist()
    assert grown.labeled_fraction == 0.2 and grown.per_class is None
    assert grow_budget(grown, [0]).rounds == 2 and grow_budget(grown, [0]).chosen_by == "margin"


def test_grow_budget_refuses_bad_positions(start):
    with pytest.raises(ValueError, match="twice"):
        grow_budget(start, [1, 1])
    with pytest.raises(ValueError, match="must lie in"):
        grow_budget(start, [len(start.unlabeled)])
    hidden = grow_budget(start, [])
    hidden.unlabeled_gold = hidden.unlabeled_gold.copy()
    hidden.unlabeled_gold[0] = -1
    with pytest.raises(ValueError, match="without a gold label"):
        grow_budget(hidden, [0])


def test_a_different_labeled_set_is_a_different_run(start, make_tiny_model):
    model = make_tiny_model(start)
    a, b = grow_budget(start, [0, 1], fraction=0.2), grow_budget(start, [2, 3], fraction=0.2)
    assert a.describe()["data"] != b.describe()["data"]
    assert len({_identity(model, start), _identity(model, a), _identity(model, b)}) == 3
    same = grow_budget(start, [1, 0], fraction=0.2, chosen_by="other")  # same texts, other order and strategy
    assert _identity(model, same) == _identity(model, a)


# ----------------------------------------------------------------------------- the loop
def test_run_rounds_spends_each_target_and_shares_the_first_round(start, make_tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLKIT_REPORTS", str(tmp_path))
    n_train = len(start.labeled) + len(start.unlabeled)
    targets = (0.3, 0.4)
    margin = run_rounds(make_tiny_model, start, "margin", targets=targets, seed=0, fit_kwargs=FAST)
    assert margin.rounds["round"].tolist() == [0, 1, 2]
    expected = [len(start.labeled)] + [round(t * n_train) for t in targets]
    assert margin.rounds["labels"].tolist() == expected
    assert margin.picks.groupby("round").size().tolist() == np.diff(expected).tolist()
    assert len(margin.budget.labeled) == expected[-1] and margin.rounds["run_id"].nunique() == 3
    assert margin.picks["idx"].is_unique and not set(margin.picks["idx"]) & set(start.labeled.idx)
    gold = dict(zip(margin.budget.labeled.idx.tolist(), margin.budget.labeled.labels.tolist()))
    assert [gold[i] for i in margin.picks["idx"]] == margin.picks["gold"].tolist()
    assert (margin.picks["already_right"] == (margin.picks["predicted"] == margin.picks["gold"])).all()

    runs_before = set((tmp_path / "runs").iterdir())
    rand = run_rounds(make_tiny_model, start, "random", targets=targets[:1], seed=0, fit_kwargs=FAST)
    assert rand.rounds.loc[0, "run_id"] == margin.rounds.loc[0, "run_id"]  # one start for every strategy
    assert len(set((tmp_path / "runs").iterdir()) - runs_before) == 1  # only random's grown round trained
    again = run_rounds(make_tiny_model, start, "margin", targets=targets, seed=0, fit_kwargs=FAST)
    assert again.rounds["run_id"].tolist() == margin.rounds["run_id"].tolist()  # a rerun picks the same texts
    with pytest.raises(ValueError, match="labeled already"):
        run_rounds(make_tiny_model, start, "margin", targets=(0.01,), fit_kwargs=FAST)


# ----------------------------------------------------------------------------- analysis
def _picks() -> pd.DataFrame:
    rows = [("margin", 0, 1, g, p) for g, p in [(0, 1), (1, 2), (2, 2), (3, 0)]]
    rows += [("random", 0, 1, g, p) for g, p in [(0, 0), (0, 0), (0, 1), (1, 1)]]
    frame = pd.DataFrame(rows, columns=["strategy", "seed", "round", "gold", "predicted"])
    frame["already_right"] = frame["gold"] == frame["predicted"]
    return frame


def test_class_entropy_and_pick_summary():
    assert class_entropy([]) == 0.0 and class_entropy([4, 4, 4]) == 0.0
    assert class_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4))
    table = pick_summary(_picks()).set_index("strategy")
    assert table.loc["margin", "classes"] == 4 and table.loc["random", "classes"] == 2
    assert table.loc["margin", "entropy"] == pytest.approx(math.log(4))
    assert table.loc["random", "entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert table.loc["margin", "already_right"] == 0.25 and table.loc["random", "already_right"] == 0.75
    assert len(pick_summary(_picks().iloc[0:0])) == 0


def _rounds() -> pd.DataFrame:
    acc = {"random": [0.50, 0.52, 0.54], "margin": [0.55, 0.56, 0.58]}
    rows = [{"strategy": s, "seed": seed, "round": 1, "labels": 10, "fraction": 0.1, "accuracy": a, "macro_f1": a}
            for s, values in acc.items() for seed, a in enumerate(values)]
    return pd.DataFrame(rows)


def test_gain_table_round_summary_and_the_takeaway():
    gains = gain_table(_rounds())
    assert gains.loc["margin", "delta_mean"] == pytest.approx(0.0433333) and gains.loc["margin", "n_paired"] == 3
    assert gains.loc["random", "delta_mean"] == 0.0
    summary = round_summary(_rounds()).set_index("strategy")
    assert summary.loc["random", "accuracy_mean"] == pytest.approx(0.52) and summary.loc["random", "n"] == 3
    semi = _rounds().assign(accuracy=lambda f: f["accuracy"].where(f["strategy"] == "random", f["accuracy"] - 0.06))
    text = annotation_takeaway(gains, gain_table(semi), method="fixmatch")
    assert "margin, beats random by +4.33 points" in text and "no longer beats random" in text
    assert "fixmatch" in text
    swapped = _rounds().assign(strategy=lambda f: f["strategy"].map({"margin": "random", "random": "margin"}))
    assert "does not beat random" in annotation_takeaway(gain_table(swapped))
    assert annotation_takeaway(gains.drop(index="random")).startswith("Takeaway: nothing to compare")


def test_setup_text_follows_its_parameters():
    train = sslkit.train_defaults("minilm", epochs=1)
    base = setup_text("banking77", 2, [0.025, 0.05], ["random", "margin"], [0, 1], backbone="minilm", train=train,
                      method="fixmatch", smoke=False)
    assert "2.5%, then 5% of train" in base and "`margin`" in base and "seeds 0, 1" in base
    assert "Smoke run" in setup_text("banking77", 2, [0.025], ["random"], [0], backbone="minilm", train=train,
                                     method="fixmatch", smoke=True)
    with pytest.raises(ValueError, match="unknown strategies"):
        setup_text("banking77", 2, [0.025], ["nope"], [0], backbone="minilm", train=train, method="fixmatch")
