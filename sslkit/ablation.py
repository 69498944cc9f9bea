"""The ablation report: every method side by side, computed only from run records.

Pure functions over the DataFrame of :func:`sslkit.runs.load_runs` (one row per summary.json)::

    runs = sslkit.load_runs()
    table = ablation_table(runs)     # method x budget (x dataset, backbone): mean ± std over seeds, n
    gap = gap_closed(runs)           # share of the supervised -> all-labels gap each method closes
    write_ablation(runs)             # reports/ablation.csv and reports/ablation.md

Definitions
-----------
* A **variant** is a method name plus the settings that tell its runs apart: a knob (from
  config.json, see :func:`sslkit.runs.run_knobs`) that takes more than one value among the runs of
  one method that share dataset, backbone, budget and seed — e.g. ``self_training (threshold=fixed)``
  beside ``self_training (threshold=adaptive)``. Settings that only change with the seed (such as a
  retrain's ``source_run``) do not split a method. A method with one setting keeps its bare name.
* **mean ± std** over the runs of a (dataset, backbone, budget, variant) cell: the sample standard
  deviation (``ddof=1``; blank with one run); ``n`` is the number of runs, ``seeds`` their seeds.
* **Gap closed** = (acc_m − acc_sup) / (acc_ref − acc_sup), on mean test accuracy at the same
  dataset, backbone and budget. acc_sup is the ``supervised`` variant with the most runs there
  (ties: the first by name). acc_ref, the **all-labels reference**, is the mean test accuracy of a
  fine-tuned run with every label (budget ``all`` or ``1``) when one exists — ``supervised`` first,
  else any other non-reference method — and otherwise the ``frozen-logreg`` all-labels record that
  notebook 01 writes (logistic regression on frozen embeddings with every label). The frozen
  ceiling is the one every book run has; a fine-tuned all-labels run is the fairer ceiling, so it
  wins when present. The column ``reference`` names the choice. 0 = no better than supervised,
  1 = as good as the reference; blank when the reference is not above the supervised baseline.
* **Cost**: mean ``minutes`` per run (wall time of the record, training and evaluation) and mean
  ``train_samples_per_second``; **pseudo-label precision** is the mean of the runs' precision
  against the pool's hidden gold labels, blank for methods without pseudo-labels.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .presets import PRESETS
from .runs import atomic_write_text, reports_dir

__all__ = [
    "ablation_table", "budget_fraction", "fixture_runs", "format_table", "gap_closed",
    "method_variants", "plot_accuracy_vs_budget", "plot_gap_closed", "to_markdown", "write_ablation",
]

#: Cell identity in every table: one row per (dataset, backbone, budget, variant).
KEYS = ["dataset", "backbone", "budget", "variant"]
#: Methods listed first, in this order (the reference, then the presets as the book shows them);
#: the others follow by name.
METHOD_ORDER = ["frozen-logreg", *PRESETS, "self_training_retrain"]
REFERENCE_METHOD = "frozen-logreg"


def fixture_runs() -> Path:
    """The small fixture of run records in a source checkout (tests/fixtures/runs), located from
    this package so it works from any working directory (the notebook's smoke run uses it)."""
    return Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "runs"


# --------------------------------------------------------------------------- helpers


def _budget_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "natural"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return str(value)


def budget_fraction(budget: Any) -> float:
    """A budget tag as a fraction of the training labels: "0.1" -> 0.1, "all" -> 1.0;
    NaN for budgets that are not fractions ("10pc" per class, "natural")."""
    text = _budget_text(budget).strip().lower()
    if text == "all":
        return 1.0
    try:
        value = float(text)
    except ValueError:
        return float("nan")
    return value if 0 < value <= 1 else float("nan")


def _is_all(budget: Any) -> bool:
    return budget_fraction(budget) == 1.0


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), str(method))


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """Normalised copy: the columns every function needs, budget as text, numbers as floats."""
    df = runs.copy()
    for col, default in (("dataset", "?"), ("backbone", "?"), ("method", "?"), ("seed", None),
                         ("knobs", None), ("reference", False)):
        if col not in df.columns:
            df[col] = default
    df["dataset"] = df["dataset"].fillna("?").astype(str)
    df["backbone"] = df["backbone"].fillna("?").astype(str)
    df["method"] = df["method"].fillna("?").astype(str)
    df["budget"] = (df["budget"] if "budget" in df.columns else pd.Series(None, index=df.index)
                    ).map(_budget_text)
    for col in ("test.accuracy", "test.macro_f1", "pseudo_label_precision", "n_pseudo_labeled",
                "minutes", "train_samples_per_second"):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    df["reference"] = df["reference"].fillna(False).astype(bool) | (df["method"] == REFERENCE_METHOD)
    df["variant"] = method_variants(df)
    return df


def _parse_knobs(text: Any) -> dict:
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def method_variants(runs: pd.DataFrame) -> pd.Series:
    """The variant label of every run: its method, plus ``(knob=value, ...)`` for the knobs that
    differ between runs of that method with the same dataset, backbone, budget and seed."""
    if len(runs) == 0:
        return pd.Series([], index=runs.index, dtype=object)
    knobs = (runs["knobs"] if "knobs" in runs.columns else pd.Series(None, index=runs.index)
             ).map(_parse_knobs)
    cell_cols = [c for c in ("dataset", "backbone", "budget", "seed") if c in runs.columns]
    labels = runs["method"].astype(str).copy()
    for method, sub in runs.groupby(runs["method"].astype(str), sort=False):
        varying: set[str] = set()
        cells = sub.groupby([sub[c].astype(str) for c in cell_cols], sort=False) if cell_cols \
            else [(None, sub)]
        for _, cell in cells:
            if len(cell) < 2:
                continue
            dicts = [knobs[i] for i in cell.index]
            for key in set().union(*dicts):
                values = {json.dumps(d.get(key), sort_keys=True, default=str) for d in dicts}
                if len(values) > 1:
                    varying.add(key)
        if not varying:
            continue
        keys = sorted(varying)
        short = {k: k.rsplit(".", 1)[-1] for k in keys}
        if len(set(short.values())) < len(keys):  # two knobs share a last name: keep full names
            short = {k: k for k in keys}
        for i in sub.index:
            parts = [f"{short[k]}={_value_text(knobs[i][k])}" for k in keys if k in knobs[i]]
            if parts:
                labels[i] = f"{method} ({', '.join(parts)})"
    return labels


def _std(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else float("nan")


# --------------------------------------------------------------------------- tables

TABLE_COLUMNS = ["dataset", "backbone", "budget", "budget_fraction", "method", "variant", "n", "seeds",
                 "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std",
                 "pseudo_label_precision", "n_pseudo_labeled", "minutes", "samples_per_second",
                 "reference", "run_ids"]


def ablation_table(runs: pd.DataFrame, with_gap: bool = False) -> pd.DataFrame:
    """Method x budget (x dataset, backbone): one row per (dataset, backbone, budget, variant).

    Columns: ``n`` runs and their ``seeds``; ``accuracy_mean/std`` and ``macro_f1_mean/std`` (test
    split, sample std over seeds); ``pseudo_label_precision`` and ``n_pseudo_labeled`` (means,
    NaN where the method has none); cost as mean ``minutes`` and ``samples_per_second``;
    ``reference`` (frozen-embedding records); ``budget_fraction`` (NaN for per-class budgets);
    ``run_ids`` (the records it comes from). Runs without a test accuracy are left out.
    Sorted by dataset, backbone, budget (smallest first, all labels last), then method.
    ``with_gap=True`` adds ``gap_closed``, ``reference_accuracy`` and ``reference_run`` from
    :func:`gap_closed` (what ablation.csv holds).
    """
    if with_gap:
        table = ablation_table(runs)
        gap = gap_closed(runs, table)
        return table.merge(gap[KEYS + ["gap_closed", "reference_accuracy", "reference"]].rename(
            columns={"reference": "reference_run"}), on=KEYS, how="left")
    df = _prepare(runs)
    df = df[df["test.accuracy"].notna()]
    if len(df) == 0:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    rows = []
    for (dataset, backbone, budget, variant), cell in df.groupby(KEYS, sort=False):
        seeds = sorted({int(s) for s in pd.to_numeric(cell["seed"], errors="coerce").dropna()})
        prec = cell["pseudo_label_precision"]
        rows.append({
            "dataset": dataset, "backbone": backbone, "budget": budget,
            "budget_fraction": budget_fraction(budget), "method": cell["method"].iloc[0],
            "variant": variant, "n": len(cell), "seeds": ",".join(map(str, seeds)),
            "accuracy_mean": _mean(cell["test.accuracy"]), "accuracy_std": _std(cell["test.accuracy"]),
            "macro_f1_mean": _mean(cell["test.macro_f1"]), "macro_f1_std": _std(cell["test.macro_f1"]),
            "pseudo_label_precision": _mean(prec),
            "n_pseudo_labeled": _mean(cell["n_pseudo_labeled"]) if prec.notna().any() else float("nan"),
            "minutes": _mean(cell["minutes"]), "samples_per_second": _mean(cell["train_samples_per_second"]),
            "reference": bool(cell["reference"].all()),
            "run_ids": ",".join(map(str, cell["run_id"])) if "run_id" in cell else "",
        })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    order = table.assign(
        _b=table["budget_fraction"].fillna(2.0), _m=table["method"].map(_method_rank),
    ).sort_values(["dataset", "backbone", "_b", "budget", "_m", "variant"], kind="stable")
    return table.loc[order.index].reset_index(drop=True)


def _reference(cells: pd.DataFrame) -> tuple[float, str]:
    """The all-labels reference of one (dataset, backbone) from its table rows (see module doc)."""
    full = cells[cells["budget"].map(_is_all)]
    tuned = full[~full["reference"]]
    if len(tuned):
        sup = tuned[tuned["method"] == "supervised"]
        pick = (sup if len(sup) else tuned).sort_values(["n", "variant"], ascending=[False, True]).iloc[0]
        return float(pick["accuracy_mean"]), f"{pick['variant']} @ all labels"
    frozen = full[full["method"] == REFERENCE_METHOD]
    if len(frozen):
        pick = frozen.sort_values(["n", "variant"], ascending=[False, True]).iloc[0]
        return float(pick["accuracy_mean"]), f"{pick['variant']} @ all labels"
    return float("nan"), ""


GAP_COLUMNS = ["dataset", "backbone", "budget", "method", "variant", "n", "accuracy_mean",
               "supervised_accuracy", "reference_accuracy", "reference", "gap_closed"]


def gap_closed(runs: pd.DataFrame, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The share of the gap between the supervised baseline and the all-labels reference that each
    variant closes, per (dataset, backbone, budget): (acc_m − acc_sup) / (acc_ref − acc_sup) on
    mean test accuracy (see the module doc for which runs are the baseline and the reference).

    One row per variant at a budget below all labels (the supervised row itself is 0), with
    ``supervised_accuracy``, ``reference_accuracy``, ``reference`` (which record) and ``gap_closed``
    (NaN when either is missing or the reference is not above the baseline).
    """
    table = ablation_table(runs) if table is None else table
    rows = []
    for (dataset, backbone), cells in table.groupby(["dataset", "backbone"], sort=False):
        ref_acc, ref_name = _reference(cells)
        for budget, at in cells.groupby("budget", sort=False):
            if _is_all(budget):
                continue
            sup = at[at["method"] == "supervised"].sort_values(["n", "variant"], ascending=[False, True])
            sup_acc = float(sup["accuracy_mean"].iloc[0]) if len(sup) else float("nan")
            gap = ref_acc - sup_acc
            for _, row in at.iterrows():
                share = (row["accuracy_mean"] - sup_acc) / gap if gap > 0 else float("nan")
                rows.append({"dataset": dataset, "backbone": backbone, "budget": budget,
                             "method": row["method"], "variant": row["variant"], "n": row["n"],
                             "accuracy_mean": row["accuracy_mean"], "supervised_accuracy": sup_acc,
                             "reference_accuracy": ref_acc, "reference": ref_name,
                             "gap_closed": share})
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


# --------------------------------------------------------------------------- display


def _pct(value: Any, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.{digits}f}%"


def _pm(mean: Any, std: Any) -> str:
    if pd.isna(mean):
        return "–"
    text = f"{100 * float(mean):.2f}"
    return f"{text} ± {100 * float(std):.2f}" if not pd.isna(std) else text


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The ablation table as display text, one row per variant and budget: accuracy and macro-F1
    as "mean ± std" in percent, n, gap closed, pseudo-label precision, minutes, samples/s.
    Accepts the output of :func:`ablation_table` (with or without ``gap_closed``)."""
    out = pd.DataFrame({
        "dataset": table["dataset"], "backbone": table["backbone"], "budget": table["budget"],
        "method": table["variant"], "n": table["n"].astype(int) if len(table) else table["n"],
        "test accuracy %": [_pm(m, s) for m, s in zip(table["accuracy_mean"], table["accuracy_std"])],
        "test macro-F1 %": [_pm(m, s) for m, s in zip(table["macro_f1_mean"], table["macro_f1_std"])],
    })
    if "gap_closed" in table.columns:
        out["gap closed"] = [_pct(v, 0) for v in table["gap_closed"]]
    out["pseudo-label precision"] = [_pct(v, 1) for v in table["pseudo_label_precision"]]
    out["minutes"] = ["–" if pd.isna(v) else f"{v:.1f}" for v in table["minutes"]]
    out["train samples/s"] = ["–" if pd.isna(v) else f"{v:.1f}" for v in table["samples_per_second"]]
    return out.reset_index(drop=True)


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(runs: pd.DataFrame) -> str:
    """The ablation as a markdown document: one table per (dataset, backbone)."""
    table = ablation_table(runs, with_gap=True)
    lines = ["# Ablation", "",
             "Built from the run records (`sslkit.load_runs()`), never from typed numbers. Test "
             "accuracy and macro-F1 in percent: mean ± sample std over the runs (seeds) of a cell, "
             "n runs. Gap closed = (acc − acc_supervised) / (acc_reference − acc_supervised) at the "
             "same budget; the all-labels reference is a fine-tuned run with every label when one "
             "exists, else logistic regression on frozen embeddings with every label (frozen-logreg). "
             "Minutes and train samples/s: mean cost per run.", ""]
    if len(table) == 0:
        return "\n".join(lines + ["No finished runs yet.", ""])
    shown = format_table(table)
    for (dataset, backbone), idx in table.groupby(["dataset", "backbone"], sort=False).groups.items():
        ref = table.loc[idx, "reference_run"].dropna()
        ref_acc = table.loc[idx, "reference_accuracy"].dropna()
        head = f"## {dataset} · {backbone}"
        lines += [head, ""]
        if len(ref) and ref.iloc[0]:
            lines += [f"All-labels reference: {ref.iloc[0]} ({_pct(ref_acc.iloc[0])} test accuracy).", ""]
        part = shown.loc[idx].drop(columns=["dataset", "backbone"])
        lines.append("| " + " | ".join(part.columns) + " |")
        lines.append("|" + "|".join("---:" if c not in ("budget", "method") else "---"
                                    for c in part.columns) + "|")
        for _, row in part.iterrows():
            lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def write_ablation(runs: pd.DataFrame, reports: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``<reports>/ablation.csv`` (the numeric table with gap closed) and
    ``<reports>/ablation.md`` (markdown tables), atomically; ``reports`` defaults to
    $SSLKIT_REPORTS or ./reports. Returns both paths."""
    out_dir = reports_dir(reports)
    table = ablation_table(runs, with_gap=True)
    csv_path, md_path = out_dir / "ablation.csv", out_dir / "ablation.md"
    atomic_write_text(csv_path, table.to_csv(index=False))
    atomic_write_text(md_path, to_markdown(runs))
    return csv_path, md_path


# --------------------------------------------------------------------------- figures


def plot_accuracy_vs_budget(table: pd.DataFrame, metric: str = "accuracy", title: str | None = None):
    """Test accuracy (or ``metric="macro_f1"``) against the label budget, one line per variant
    with ± std error bars, one panel per (dataset, backbone); the all-labels rows are drawn as
    dashed horizontal lines. Budgets that are not fractions (per class) are left out."""
    import matplotlib.pyplot as plt

    mean, std = f"{metric}_mean", f"{metric}_std"
    data = table[table["budget_fraction"].notna()] if len(table) else table
    groups = list(data.groupby(["dataset", "backbone"], sort=False)) if len(data) else []
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(9.5 * n, 4.2), layout="constrained", squeeze=False)
    if not groups:
        ax = axes[0, 0]
        ax.text(0.5, 0.5, "no runs with a fractional budget", ha="center", va="center",
                transform=ax.transAxes, color="#666")
        ax.set_axis_off()
        return fig
    for ax, ((dataset, backbone), cells) in zip(axes[0], groups):
        below = cells[cells["budget_fraction"] < 1]
        full = cells[cells["budget_fraction"] >= 1]
        for variant, line in below.groupby("variant", sort=False):
            line = line.sort_values("budget_fraction")
            ref = bool(line["reference"].all())  # frozen embeddings: drawn grey, dotted
            ax.errorbar(line["budget_fraction"], 100 * line[mean], yerr=100 * line[std].fillna(0),
                        marker="s" if ref else "o", ls=":" if ref else "-", capsize=3,
                        label=variant, **({"color": "#777"} if ref else {}))
        for _, row in full.iterrows():
            ax.axhline(100 * row[mean], ls="--", lw=1, color="#555" if row["reference"] else "#2a7",
                       label=f"{row['variant']} (all labels)")
        budgets = sorted(below["budget_fraction"].unique())
        if budgets:
            ax.set_xticks(budgets, [f"{100 * b:g}%" for b in budgets])
        ax.set_xlabel("labeled fraction of the training set")
        ax.set_ylabel(f"test {metric.replace('_', '-')} (%)")
        ax.set_title(f"{dataset} · {backbone}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title)
    return fig


def plot_gap_closed(gap: pd.DataFrame, title: str | None = None):
    """Bars: the share of the supervised -> all-labels gap each variant closes, per budget
    (output of :func:`gap_closed`); 0 = the supervised baseline, 100% = the reference."""
    import matplotlib.pyplot as plt

    data = gap[gap["method"] != "supervised"].dropna(subset=["gap_closed"]) if len(gap) else gap
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(4, len(data)) + 1), layout="constrained")
    if len(data) == 0:
        ax.text(0.5, 0.5, "no gap to show (needs supervised runs and an all-labels reference)",
                ha="center", va="center", transform=ax.transAxes, color="#666")
        ax.set_axis_off()
        return fig
    several = data[["dataset", "backbone"]].drop_duplicates().shape[0] > 1
    labels = [(f"{r.dataset} · {r.backbone} · " if several else "") + f"{r.budget} · {r.variant}"
              for r in data.itertuples()]
    values = 100 * data["gap_closed"].to_numpy(dtype=float)
    colors = ["#2a7" if v >= 0 else "#c44" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#333", lw=1)
    ax.axvline(100, color="#333", lw=1, ls="--")
    ax.set_xlabel("share of the gap closed (%): 0 = supervised, 100 = all-labels reference")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig
