"""sslkit.chapters: what every notebook repeats (budget with the smoke subset, the results table, the
seed table, the computed takeaway, the elapsed time, the generated set-up text). No model is trained:
results are RunResults built by hand, run records are written as JSON."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import sslkit
from sslkit import ablation, chapters
from sslkit.runs import write_json
from sslkit.trainer import RunResult


# --------------------------------------------------------------------------- load_budget
def _dataset(folder: Path, n_train: int = 400, n_other: int = 150, classes: int = 4) -> Path:
    for split, n in (("train", n_train), ("dev", n_other), ("test", n_other)):
        rows = [{"text": f"{split} text number {i} about topic {i % classes}", "label": f"c{i % classes}"}
                for i in range(n)]
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    return folder


def test_load_budget_smoke_subset_and_budget(tmp_path):
    folder = _dataset(tmp_path)
    data, budget = chapters.load_budget(str(folder), labeled=0.1, seed=0, smoke=False)
    assert (len(data.train), len(data.dev), len(data.test)) == (400, 150, 150)
    assert len(budget.labeled) == 40 and len(budget.unlabeled) == 360 and budget.labeled_fraction == 0.1

    data, budget = chapters.load_budget(str(folder), labeled=0.1, seed=0, smoke=True)
    sizes = chapters.SMOKE_SIZES
    assert (len(data.train), len(data.dev), len(data.test)) == (sizes["train"], sizes["dev"], sizes["test"])
    assert len(budget.labeled) + len(budget.unlabeled) == sizes["train"]


def test_load_budget_follows_sslkit_smoke_and_per_class_wins(tmp_path, monkeypatch):
    folder = _dataset(tmp_path)
    monkeypatch.setenv("SSLKIT_SMOKE", "1")
    data, budget = chapters.load_budget(str(folder), labeled=0.1, per_class=3, seed=1)
    assert len(data.train) == chapters.SMOKE_SIZES["train"]
    assert budget.per_class == 3 and budget.labeled_fraction is None
    assert list(budget.labeled.label_counts()) == [3, 3, 3, 3]
    monkeypatch.setenv("SSLKIT_SMOKE", "0")
    data, _ = chapters.load_budget(str(folder), seed=1)
    assert len(data.train) == 400


# --------------------------------------------------------------------------- tables
def _result(tmp_path: Path, name: str, method: str, seed: int, acc: float, dev_f1: float | None = None,
            n_pseudo: int = 0, precision: float | None = None, tested: str = "model", knobs: dict | None = None,
            dataset: str = "toy") -> RunResult:
    """A finished run record on disk (summary.json + config.json) and its RunResult."""
    run_id = f"{dataset}-0.1-{name}-s{seed}"
    run_dir = tmp_path / "runs" / run_id
    summary = {"run_id": run_id, "dataset": dataset, "budget": "0.1", "method": method, "algorithm": method,
               "backbone": "minilm", "seed": seed, "test": {"accuracy": acc, "macro_f1": acc - 0.01},
               "dev": {"accuracy": acc, "macro_f1": acc if dev_f1 is None else dev_f1},
               "best_epoch": 3, "best_variant": tested, "n_pseudo_labeled": n_pseudo,
               "pseudo_label_precision": precision, "minutes": 1.5, "train_samples_per_second": 100.0}
    write_json(run_dir / "summary.json", summary)
    write_json(run_dir / "config.json", {"run_id": run_id, "identity": run_id[-6:], "dataset": dataset,
                                         "method": {"name": method, **(knobs or {})}, "train": {"lr": 0.002}})
    return RunResult(run_id=run_id, run_dir=run_dir, summary=summary, history=pd.DataFrame(), model=None)


@pytest.fixture
def results(tmp_path):
    return {"supervised": _result(tmp_path, "supervised", "supervised", 0, 0.80),
            "fixmatch": _result(tmp_path, "fixmatch", "fixmatch", 0, 0.85, n_pseudo=120, precision=0.9),
            "mean_teacher": _result(tmp_path, "mean_teacher", "mean_teacher", 0, 0.82, tested="teacher")}


def test_run_table_extends_results_table(results):
    table = chapters.run_table(results)
    assert list(table.index) == ["supervised", "fixmatch", "mean_teacher"]
    assert list(table["method"]) == ["supervised", "fixmatch", "mean_teacher"]
    assert table.loc["fixmatch", "delta_accuracy"] == pytest.approx(0.05)
    assert table.loc["fixmatch", "precision"] == 0.9 and table.loc["fixmatch", "n_pseudo"] == 120
    assert table.loc["supervised", "dev_macro_f1"] == pytest.approx(0.80)
    assert "delta_accuracy" not in chapters.run_table({"fixmatch": results["fixmatch"]}).columns
    html = chapters.styled(table).to_html()
    assert "85.00%" in html and "+5.00%" in html


def test_takeaway_names_the_winner_margin_and_seed(results):
    table = chapters.run_table(results)
    text = chapters.takeaway(table)
    assert text.startswith("Takeaway: fixmatch beats supervised: 85.00% test accuracy against 80.00%")
    assert "(+5.00 points, seed 0; the best of 2 methods)." in text
    assert "120 pseudo-labels, 90.0% of them correct" in text
    # chosen among some rows, by another column: the teacher's weights were tested
    picked = chapters.takeaway(table, choose_by="dev_macro_f1", among=["mean_teacher"])
    assert "mean_teacher (chosen by dev macro-F1) beats" in picked and "the only method run beside it" in picked and "teacher's weights" in picked
    assert chapters.takeaway(table.loc[["supervised"]]).startswith("Takeaway: supervised alone reaches 80.00%")
    worse = table.loc[["supervised", "mean_teacher"]].copy()
    worse.loc["mean_teacher", "accuracy"] = 0.7
    assert "no method beats supervised here; the best, mean_teacher, reaches 70.00%" in chapters.takeaway(worse)
    assert "-10.00 points" in chapters.takeaway(worse)
    assert "no supervised run" in chapters.takeaway(table.drop(index="supervised"))
    assert chapters.takeaway(table.iloc[0:0]) == "Takeaway: nothing was run."


def test_seed_table_pairs_seeds_of_the_same_setting(tmp_path, results):
    for seed, (sup, fm) in {1: (0.78, 0.86), 2: (0.81, 0.84)}.items():
        _result(tmp_path, "supervised", "supervised", seed, sup)
        _result(tmp_path, "fixmatch", "fixmatch", seed, fm)
    _result(tmp_path, "fixmatch-other", "fixmatch", 3, 0.10, knobs={"top_k": 0.5})  # another setting
    _result(tmp_path, "supervised", "supervised", 4, 0.10, dataset="other")          # another data set
    seeds = chapters.seed_table(results)
    assert seeds.loc["fixmatch", "n"] == 3 and seeds.loc["fixmatch", "seeds"] == "0, 1, 2"
    assert seeds.loc["fixmatch", "accuracy_mean"] == pytest.approx((0.85 + 0.86 + 0.84) / 3)
    assert seeds.loc["fixmatch", "n_paired"] == 3
    assert seeds.loc["fixmatch", "delta_mean"] == pytest.approx((0.05 + 0.08 + 0.03) / 3)
    assert seeds.loc["mean_teacher", "n"] == 1 and pd.isna(seeds.loc["mean_teacher", "accuracy_std"])
    text = chapters.takeaway(chapters.run_table(results), seeds=seeds)
    assert "Over the 3 seeds recorded for both: +5.33 points on average (± 2.52)." in text
    one = chapters.takeaway(chapters.run_table(results), seeds=chapters.seed_table(results, runs=pd.DataFrame()))
    assert "One seed on record" in one


def test_gap_takeaway_from_the_fixture_records():
    runs = sslkit.load_runs(ablation.fixture_runs())
    text = chapters.gap_takeaway(ablation.gap_closed(runs))
    assert text.startswith("Takeaway: banking77 (minilm) at budget") and "of the gap" in text
    assert "no gap to measure yet" in chapters.gap_takeaway(pd.DataFrame(columns=["gap_closed", "method"]))


# --------------------------------------------------------------------------- text and time
def test_setup_text_follows_every_argument(monkeypatch):
    monkeypatch.setenv("SSLKIT_SMOKE", "0")
    train = sslkit.train_defaults("minilm", seed=0)
    base = chapters.setup_text("banking77", 0.1, None, 0, backbone="minilm", train=train, methods=["supervised"])
    assert "`banking77`" in base and "10% of the training labels" in base and "6 epochs" in base
    assert "Smoke run" not in base and "`supervised`: cross-entropy" in base
    variants = [chapters.setup_text("clinc150", 0.1, None, 0, backbone="minilm", train=train, methods=["supervised"]),
                chapters.setup_text("banking77", 0.2, None, 0, backbone="minilm", train=train, methods=["supervised"]),
                chapters.setup_text("banking77", 0.1, 5, 0, backbone="minilm", train=train, methods=["supervised"]),
                chapters.setup_text("banking77", 0.1, None, 1, backbone="minilm", train=train, methods=["supervised"]),
                chapters.setup_text("banking77", 0.1, None, 0, backbone="minilm",
                                    train=sslkit.train_defaults("minilm", epochs=2), methods=["supervised"]),
                chapters.setup_text("banking77", 0.1, None, 0, backbone="minilm", train=train, methods=["focal"]),
                chapters.setup_text("banking77", 0.1, None, 0, backbone="minilm", train=train, methods=["supervised"],
                                    smoke=True)]
    assert len({base, *variants}) == len(variants) + 1
    assert "5 labels per class" in variants[2] and "Smoke run" in variants[-1]


def test_every_preset_reads_as_text():
    for name in sslkit.preset_names():
        line = chapters.method_text(name)
        assert line.startswith(f"`{name}`: {sslkit.preset(name).about}")
    assert "max weight 5" in chapters.method_text("temporal_ensemble")       # None resolved to the default
    assert "fgm" not in chapters.method_text("temporal_ensemble")             # knobs of another noise left out
    assert "focal gamma 2" in chapters.method_text("focal")                  # the preset's training settings
    assert "threshold fixed (tau 0.95" in chapters.method_text("self_training_fixed")
    with pytest.raises(ValueError, match="unknown preset"):
        chapters.method_text("nope")


def test_budget_text_and_time():
    class FakeBudget:
        def describe(self):
            return {"n_labeled": 1000, "min_labeled_per_class": 8, "max_labeled_per_class": 15, "num_classes": 77,
                    "n_unlabeled": 9003, "n_dev": 1000, "n_test": 3080}

    assert chapters.budget_text(FakeBudget()) == ("**The budget.** 1,000 labeled texts (8–15 per class, 77 classes) "
                                                  "and 9,003 unlabeled ones; 1,000 dev and 3,080 test texts.")
    assert [chapters.format_seconds(s) for s in (4.2, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]
    clock = chapters.Timer()
    assert str(clock).startswith("elapsed: ") and clock.seconds >= 0
    assert chapters.elapsed().startswith("elapsed: ")
    assert sslkit.Timer is chapters.Timer and sslkit.takeaway is chapters.takeaway
