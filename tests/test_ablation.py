"""The ablation report (sslkit.ablation) over run records, and load_runs' extensions."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib
import nbformat
import pandas as pd
import pytest

matplotlib.use("Agg")

from sslkit import ablation  # noqa: E402
from sslkit.runs import load_runs, run_knobs, runs_folder, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "runs"


def _summaries(**where) -> list[dict]:
    """The fixture's summary.json files whose fields equal ``where``, read directly."""
    out = []
    for path in sorted(FIXTURE.glob("*/summary.json")):
        s = json.loads(path.read_text())
        if all(s.get(k) == v for k, v in where.items()):
            out.append(s)
    return out


def _knobs_of(summary: dict) -> dict:
    return json.loads((FIXTURE / summary["run_id"] / "config.json").read_text())["method"]


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return load_runs(FIXTURE)


def _row(table: pd.DataFrame, budget: str, variant: str) -> pd.Series:
    rows = table[(table["budget"] == budget) & (table["variant"] == variant)]
    assert len(rows) == 1, (budget, variant, table[["budget", "variant"]])
    return rows.iloc[0]


# --------------------------------------------------------------------------- one cell, by hand


def test_one_cell_recomputed_from_its_summaries(runs):
    """supervised @ 10%: mean and sample std of test accuracy / macro-F1 over the seeds' records."""
    table = ablation.ablation_table(runs)
    sums = _summaries(method="supervised", budget="0.1")
    acc = [s["test"]["accuracy"] for s in sums]
    f1 = [s["test"]["macro_f1"] for s in sums]
    assert len(sums) == 3
    row = _row(table, "0.1", "supervised")
    assert row["n"] == 3 and row["seeds"] == "0,1,2"
    assert row["accuracy_mean"] == pytest.approx(statistics.mean(acc), abs=1e-12)
    assert row["accuracy_std"] == pytest.approx(statistics.stdev(acc), abs=1e-12)
    assert row["macro_f1_mean"] == pytest.approx(statistics.mean(f1), abs=1e-12)
    assert row["macro_f1_std"] == pytest.approx(statistics.stdev(f1), abs=1e-12)
    assert row["minutes"] == pytest.approx(statistics.mean(s["minutes"] for s in sums))
    assert set(row["run_ids"].split(",")) == {s["run_id"] for s in sums}
    # the same numbers, formatted, in the markdown report
    text = ablation.to_markdown(runs)
    cell = f"{100 * statistics.mean(acc):.2f} ± {100 * statistics.stdev(acc):.2f}"
    assert f"| 0.1 | supervised | 3 | {cell} |" in text


def test_variants_cell_and_pseudo_label_precision(runs):
    """self-training with the adaptive rule @ 10% is its own cell beside the fixed threshold."""
    table = ablation.ablation_table(runs)
    adaptive = [s for s in _summaries(method="self_training", budget="0.1")
                if _knobs_of(s)["threshold"] == "adaptive"]
    row = _row(table, "0.1", "self_training (margin=0.05, threshold=adaptive)")
    assert row["n"] == len(adaptive) == 2
    assert row["accuracy_mean"] == pytest.approx(statistics.mean(s["test"]["accuracy"] for s in adaptive))
    assert row["pseudo_label_precision"] == pytest.approx(
        statistics.mean(s["pseudo_label_precision"] for s in adaptive))
    assert row["samples_per_second"] == pytest.approx(
        statistics.mean(s["train_samples_per_second"] for s in adaptive))
    fixed = _row(table, "0.1", "self_training (margin=0, threshold=fixed)")
    assert fixed["n"] == 1 and pd.isna(fixed["accuracy_std"])
    assert pd.isna(_row(table, "0.1", "supervised")["pseudo_label_precision"])
    # at 5% only the adaptive rule ran: same label, so the budget curve is one line
    assert _row(table, "0.05", "self_training (margin=0.05, threshold=adaptive)")["n"] == 2
    # order: budgets ascending with "all" last, supervised before the methods
    assert list(table["budget"]) == sorted(table["budget"], key=lambda b: ablation.budget_fraction(b))
    at10 = list(table[table["budget"] == "0.1"]["method"])
    assert at10[:2] == ["frozen-logreg", "supervised"]


def test_gap_closed_from_the_summaries(runs):
    gap = ablation.gap_closed(runs)
    sup = statistics.mean(s["test"]["accuracy"] for s in _summaries(method="supervised", budget="0.1"))
    mt = statistics.mean(s["test"]["accuracy"] for s in _summaries(method="mean_teacher", budget="0.1"))
    (ref,) = [s["test"]["accuracy"] for s in _summaries(method="frozen-logreg", budget="all")]
    row = gap[(gap["budget"] == "0.1") & (gap["variant"] == "mean_teacher")].iloc[0]
    assert row["gap_closed"] == pytest.approx((mt - sup) / (ref - sup))
    assert row["reference"] == "frozen-logreg @ all labels"
    assert row["reference_accuracy"] == pytest.approx(ref)
    assert gap[gap["variant"] == "supervised"]["gap_closed"].tolist() == [0.0, 0.0]
    assert "all" not in set(gap["budget"])


def _record(reports: Path, run_id: str, method: str, budget: str, seed: int, acc: float,
            knobs: dict | None = None, **extra) -> None:
    d = reports / "runs" / run_id
    write_json(d / "summary.json", {"run_id": run_id, "dataset": "d", "backbone": "b", "method": method,
                                    "budget": budget, "seed": seed,
                                    "test": {"accuracy": acc, "macro_f1": acc}, **extra})
    write_json(d / "config.json", {"identity": run_id[-4:], "method": {"name": method, **(knobs or {})},
                                   "train": {"lr": 0.002, "seed": seed}, "device": "cpu"})


def test_reference_prefers_a_fine_tuned_all_labels_run(tmp_path):
    _record(tmp_path, "sup-a", "supervised", "0.1", 0, 0.80)
    _record(tmp_path, "st-a", "self_training", "0.1", 0, 0.84)
    _record(tmp_path, "frozen-all", "frozen-logreg", "all", 0, 0.90, reference=True)
    gap = ablation.gap_closed(load_runs(tmp_path))
    st = gap[gap["method"] == "self_training"].iloc[0]
    assert st["gap_closed"] == pytest.approx((0.84 - 0.80) / (0.90 - 0.80))
    assert st["reference"].startswith("frozen-logreg")
    _record(tmp_path, "sup-all", "supervised", "1", 0, 0.96)  # a fine-tuned run with every label
    gap = ablation.gap_closed(load_runs(tmp_path))
    st = gap[gap["method"] == "self_training"].iloc[0]
    assert st["gap_closed"] == pytest.approx((0.84 - 0.80) / (0.96 - 0.80))
    assert st["reference"] == "supervised @ all labels"
    # no supervised baseline at a budget: no gap there
    _record(tmp_path, "st-b", "self_training", "0.2", 0, 0.86)
    gap = ablation.gap_closed(load_runs(tmp_path))
    assert pd.isna(gap[gap["budget"] == "0.2"]["gap_closed"]).all()


def test_variant_labels_only_for_knobs_that_differ_at_one_seed(tmp_path):
    # a knob that changes only with the seed (a retrain's source run) does not split the method
    _record(tmp_path, "r0", "retrain", "0.1", 0, 0.8, {"source_run": "run-s0"})
    _record(tmp_path, "r1", "retrain", "0.1", 1, 0.9, {"source_run": "run-s1"})
    # a knob that differs at the same seed does
    _record(tmp_path, "a0", "st", "0.1", 0, 0.8, {"threshold": "adaptive", "tau0": 0.8})
    _record(tmp_path, "f0", "st", "0.1", 0, 0.7, {"threshold": "fixed", "tau0": 0.8})
    _record(tmp_path, "a1", "st", "0.1", 1, 0.9, {"threshold": "adaptive", "tau0": 0.8})
    runs = load_runs(tmp_path)
    labels = dict(zip(runs["run_id"], ablation.method_variants(runs)))
    assert labels["r0"] == labels["r1"] == "retrain"
    assert labels["a0"] == labels["a1"] == "st (threshold=adaptive)"
    assert labels["f0"] == "st (threshold=fixed)"
    table = ablation.ablation_table(runs)
    assert _row(table, "0.1", "st (threshold=adaptive)")["n"] == 2
    assert _row(table, "0.1", "retrain")["accuracy_mean"] == pytest.approx(0.85)


def test_write_ablation_csv_and_markdown(runs, tmp_path):
    csv_path, md_path = ablation.write_ablation(runs, tmp_path / "rep")
    assert csv_path == tmp_path / "rep" / "ablation.csv" and md_path.name == "ablation.md"
    back = pd.read_csv(csv_path, dtype={"budget": str, "seeds": str})
    table = ablation.ablation_table(runs, with_gap=True)
    assert list(back.columns) == list(table.columns)
    pd.testing.assert_series_equal(back["accuracy_mean"], table["accuracy_mean"], check_exact=False)
    assert back["gap_closed"].notna().sum() == table["gap_closed"].notna().sum() > 0
    text = md_path.read_text()
    assert text.startswith("# Ablation") and "## banking77 · minilm" in text
    assert "All-labels reference: frozen-logreg @ all labels (92.89% test accuracy)." in text
    assert text.count("\n| ") == len(table) + 1  # a header and one row per cell
    assert not list((tmp_path / "rep").glob(".*.tmp"))


def test_empty_runs(tmp_path):
    empty = load_runs(tmp_path)
    assert len(empty) == 0 and {"knobs", "identity", "run_dir"} <= set(empty.columns)
    assert len(ablation.ablation_table(empty, with_gap=True)) == 0
    assert len(ablation.gap_closed(empty)) == 0
    assert "No finished runs yet" in ablation.to_markdown(empty)
    ablation.write_ablation(empty, tmp_path)
    assert (tmp_path / "ablation.csv").is_file()
    for fig in (ablation.plot_accuracy_vs_budget(ablation.ablation_table(empty)),
                ablation.plot_gap_closed(ablation.gap_closed(empty))):
        assert fig.axes


def test_figures(runs):
    import matplotlib.pyplot as plt

    table = ablation.ablation_table(runs)
    fig = ablation.plot_accuracy_vs_budget(table)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "supervised" in labels and "frozen-logreg (all labels)" in labels
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5%", "10%"]
    fig2 = ablation.plot_gap_closed(ablation.gap_closed(runs))
    assert len(fig2.axes[0].patches) == 6  # every variant below all labels except supervised
    plt.close("all")


@pytest.mark.parametrize("budget, fraction", [("0.1", 0.1), ("all", 1.0), ("1", 1.0), (0.05, 0.05),
                                              ("10pc", None), ("natural", None), (None, None)])
def test_budget_fraction(budget, fraction):
    value = ablation.budget_fraction(budget)
    assert (pd.isna(value) if fraction is None else value == fraction)


# --------------------------------------------------------------------------- load_runs


def test_load_runs_reports_or_runs_folder_and_knobs(tmp_path):
    assert runs_folder(FIXTURE) == FIXTURE
    assert runs_folder(FIXTURE.parent) == FIXTURE
    assert len(load_runs(FIXTURE)) == len(load_runs(FIXTURE.parent)) == 17
    _record(tmp_path, "x-1", "st", "0.1", 0, 0.5, {"threshold": "fixed"})
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "summary.json").write_text('{"run_id": "brok')  # cut short
    runs = load_runs(tmp_path)
    assert list(runs["run_id"]) == ["x-1"]
    assert json.loads(runs["knobs"].iloc[0]) == {"method.threshold": "fixed", "train.lr": 0.002}
    assert runs["identity"].iloc[0] == "x-1"[-4:]
    assert run_knobs({"dataset": "d", "budget": "all", "method": "frozen-logreg", "C": 10.0}) == {"C": 10.0}


def test_notebook_06_is_built_from_records_only():
    nb = nbformat.read(ROOT / "notebooks" / "06_ablation.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata["tags"] == ["parameters"] and code[0].source.startswith("import sslkit")
    assert "runs_dir" in code[0].source and "fixture_runs()" in code[0].source
    source = "\n".join(c.source for c in code)
    assert "sslkit.fit(" not in source and "load_runs(runs_dir)" in source
    assert "write_ablation(" in source
    assert ablation.fixture_runs() == FIXTURE
