"""What every chapter (notebook) of the book repeats, so a notebook is its question, its parameters,
a few lines per step and a computed conclusion::

    clock = sslkit.Timer()
    data, budget = sslkit.load_budget(dataset, labeled, per_class, seed)   # smoke subset inside
    results = {name: sslkit.fit(..., name, **train) for name in methods}
    table = sslkit.run_table(results)                   # sslkit.results_table, plus method / dev / precision
    sslkit.styled(table)                                # percentages and minutes, formatted
    print(sslkit.takeaway(table, seeds=sslkit.seed_table(results)))
    print(clock)                                        # "elapsed: 3 min 12 s"

The set-up prose is generated from the parameters (:func:`setup_text`, :func:`budget_text`,
:func:`methods_text`), so a notebook run with ``-p`` never contradicts its own text. Nothing
here trains a model; :func:`load_budget` reads a data set, :func:`seed_table` reads run records.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

__all__ = ["SMOKE_SIZES", "Timer", "budget_phrase", "budget_text", "elapsed", "format_seconds", "gap_takeaway",
           "load_budget", "method_text", "model_text", "methods_text", "run_table", "seed_table", "setup_text",
           "smoke_note", "styled", "takeaway", "training_text"]

#: The subset a smoke run (``SSLKIT_SMOKE=1``) keeps of each split: every cell runs, on little data.
SMOKE_SIZES = {"train": 300, "dev": 100, "test": 100}

_STARTED = time.perf_counter()  # the import of sslkit: the notebook's parameters cell


def _smoke(smoke: bool | None) -> bool:
    if smoke is not None:
        return bool(smoke)
    from ._version import smoke_mode  # read at call time: a test or a kernel may set it later

    return smoke_mode()


# --------------------------------------------------------------------------- data
def load_budget(dataset: str, labeled: float | None = 0.1, per_class: int | None = None, seed: int = 0, *,
                text_col: str = "text", label_col: str = "label", id_col: str | None = None,
                smoke: bool | None = None):
    """(data, budget): the data set (a built-in name or your file, :func:`sslkit.load_dataset`) and its
    label budget (:func:`sslkit.split_budget`). ``per_class`` wins over ``labeled`` when both are given
    (the notebooks' parameters hold a default fraction). Under ``SSLKIT_SMOKE=1`` (or ``smoke=True``)
    each split is first cut to :data:`SMOKE_SIZES`, with one example of every class kept."""
    from .data import load_dataset, split_budget

    data = load_dataset(dataset, text_col=text_col, label_col=label_col, id_col=id_col)
    if _smoke(smoke):
        data = data.subsample(**SMOKE_SIZES, seed=seed)
    if per_class is not None:
        labeled = None
    return data, split_budget(data, labeled=labeled, per_class=per_class, seed=seed)


# --------------------------------------------------------------------------- generated prose
def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def budget_phrase(labeled: float | None = 0.1, per_class: int | None = None) -> str:
    """The budget in words: "10% of the training labels", "5 labels per class", or the natural one."""
    if per_class is not None:
        return f"{per_class} label{'s' if per_class != 1 else ''} per class"
    if labeled is not None:
        return f"{100 * labeled:g}% of the training labels"
    return "the labels the data set has (blank rows form the pool)"


def training_text(backbone: str, train: Mapping[str, Any]) -> str:
    """The backbone and the fit() settings in one sentence (from ``sslkit.train_defaults(...)``)."""
    from .backbones import LoraSettings, fasttext

    if fasttext.is_fasttext(backbone):
        model = f"`{backbone}` (hashed n-grams, trained from scratch)"
    else:
        lora = LoraSettings()
        model = f"`{backbone}` with LoRA (r={lora.r}, alpha {lora.alpha}) and a cosine head from class prototypes"
    parts = [f"{_num(train['epochs'])} epoch{'s' if train.get('epochs') != 1 else ''}"]
    if "batch_size" in train:
        parts.append(f"batches of {_num(train['batch_size'])}")
    if "lr" in train:
        parts.append(f"learning rate {_num(train['lr'])}")
    extra = {k: v for k, v in train.items() if k not in ("epochs", "batch_size", "lr", "seed", "reuse", "track_test")}
    parts += [f"{k.replace('_', ' ')} {_num(v)}" for k, v in extra.items()]
    return f"Backbone {model}; {', '.join(parts)}; the epoch with the best dev macro-F1 is the one tested."


#: knobs shown only when another knob makes them matter
_RELEVANT = {
    "fgm_eps": lambda c: c.get("noise") == "fgm",
    "noise_rate": lambda c: c.get("noise") == "token",
    "pseudo_threshold": lambda c: bool(c.get("pseudo_positives")),
    "temperature": lambda c: c.get("loss") in ("simple", "focal"),
    "gamma": lambda c: c.get("loss") == "focal",
    "margin": lambda c: c.get("loss", "margin") == "margin",
}


def _knob_text(knobs: Mapping[str, Any]) -> str:
    from .methods.consistency import DEFAULT_MAX_WEIGHT

    if "consistency" in knobs and knobs.get("max_weight") is None:  # None (not recorded): the loss's default
        knobs = {**knobs, "max_weight": DEFAULT_MAX_WEIGHT.get(knobs["consistency"])}
    out = []
    for key, value in knobs.items():
        if key == "name" or (key in _RELEVANT and not _RELEVANT[key](knobs)):
            continue
        if value is None or value is False:
            continue
        if isinstance(value, Mapping):  # a threshold rule: "threshold adaptive (tau0 0.8, ema 0.9)"
            inner = ", ".join(f"{k} {_num(v)}" for k, v in value.items() if k != "rule")
            out.append(f"{key} {value.get('rule', '')} ({inner})".replace(" ()", ""))
        else:
            out.append(f"{key.replace('_', ' ')} {_num(value)}")
    return ", ".join(out)


def method_text(name: str) -> str:
    """One preset in words: its line from :mod:`sslkit.presets` and its settings."""
    from .presets import preset

    chosen = preset(name)
    knobs = {**chosen.make().config(), **chosen.train}
    settings = _knob_text(knobs)
    return f"`{name}`: {chosen.about}" + (f" ({settings})" if settings else "")


def methods_text(methods: Iterable[str]) -> str:
    """A markdown list of presets, one :func:`method_text` each."""
    return "\n".join(f"- {method_text(m)}" for m in methods)


def smoke_note(smoke: bool | None = None) -> str:
    """" *Smoke run:* each split is cut to ..." under a smoke run (``SSLKIT_SMOKE=1``), else ""."""
    if not _smoke(smoke):
        return ""
    sizes = " / ".join(f"{n} {k}" for k, n in SMOKE_SIZES.items())
    return f" *Smoke run:* each split is cut to {sizes} texts first."


def setup_text(dataset: str, labeled: float | None = 0.1, per_class: int | None = None, seed: int = 0, *,
               backbone: str | None = None, train: Mapping[str, Any] | None = None,
               methods: Sequence[str] | None = None, smoke: bool | None = None) -> str:
    """The **Setup.** paragraph every chapter opens with, from its parameters alone (no data read):
    data set and budget, backbone and training settings, the methods (presets) compared."""
    text = (f"**Setup.** `{dataset}`, with {budget_phrase(labeled, per_class)} kept (stratified by class, "
            f"split seed {seed}); the rest of train is the unlabeled pool, its gold labels hidden from every "
            "method and used only to score pseudo-labels.")
    text += smoke_note(smoke)
    if backbone is not None and train is not None:
        text += " " + training_text(backbone, train)
    if methods:
        text += f"\n\nMethods ({len(methods)}, named presets of `sslkit.presets_table()`):\n\n" + methods_text(methods)
    return text


def model_text(model) -> str:
    """A built backbone in one sentence, from its recorded settings (what the run id hashes)."""
    info = model.info
    lora = (f"LoRA r={info.lora.get('r')} (alpha {info.lora.get('alpha')}) on {', '.join(info.lora.get('targets', []))}"
            if isinstance(info.lora, dict) and info.lora else "no LoRA (every trainable weight trains)")
    if info.kind == "fasttext":
        what, lora, unit = "hashed n-grams trained from scratch", "every weight trained", "n-gram ids"
    else:
        what, unit = f"{info.kind}, {info.model_type}", "tokens"
    return (f"**The backbone.** `{info.name}` ({what}): {info.pooling} pooling, a {info.head} "
            f"head (scale {_num(info.scale)}), {lora}, at most {info.max_length:,} {unit} per text; "
            f"{model.num_parameters(trainable=True):,} trainable parameters of {model.num_parameters():,}.")


def budget_text(budget) -> str:
    """What the budget hands over, counted: labeled texts (per class), the pool, dev and test."""
    d = budget.describe()
    low, high = d["min_labeled_per_class"], d["max_labeled_per_class"]
    per = f"{low}" if low == high else f"{low}–{high}"
    return (f"**The budget.** {d['n_labeled']:,} labeled texts ({per} per class, {d['num_classes']} classes) and "
            f"{d['n_unlabeled']:,} "
            f"unlabeled ones; {d['n_dev']:,} dev and {d['n_test']:,} test texts.")


# --------------------------------------------------------------------------- tables
def run_table(results: Mapping[str, Any], baseline: str | None = "supervised") -> pd.DataFrame:
    """:func:`sslkit.results_table` of named RunResults (test accuracy / macro-F1, the change against
    ``baseline``, best epoch, tested weights, pseudo-labels, minutes, samples/s, seed, run id) with
    the preset's name (``method``), dev macro-F1 and the pseudo-labels' precision beside them."""
    from .trainer import results_table

    table = results_table(dict(results), baseline=baseline if baseline in results else None)
    if not len(table):
        return table
    table.insert(0, "method", [r.summary.get("method") for r in results.values()])
    at = table.columns.get_loc("macro_f1") + 1
    table.insert(at, "dev_macro_f1", [(r.dev or {}).get("macro_f1") for r in results.values()])
    table.insert(table.columns.get_loc("n_pseudo") + 1, "precision",
                 [r.summary.get("pseudo_label_precision") for r in results.values()])
    return table


_FORMATS = {"accuracy": "{:.2%}", "macro_f1": "{:.2%}", "dev_macro_f1": "{:.2%}", "delta_accuracy": "{:+.2%}",
            "precision": "{:.1%}", "minutes": "{:.1f}", "samples_per_s": "{:.0f}", "accuracy_mean": "{:.2%}",
            "accuracy_std": "{:.2%}", "macro_f1_mean": "{:.2%}", "macro_f1_std": "{:.2%}", "delta_mean": "{:+.2%}",
            "delta_std": "{:.2%}"}


def styled(table: pd.DataFrame):
    """The table with percentages, minutes and throughput formatted (a pandas Styler)."""
    return table.style.format({c: f for c, f in _FORMATS.items() if c in table.columns}, na_rep="–")


def _records(results: Mapping[str, Any]) -> pd.DataFrame:
    from .runs import load_runs

    folders = {Path(r.run_dir).parent for r in results.values()}
    frames = [load_runs(f) for f in sorted(folders)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _same_setting(runs: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The records of the run ``run_id`` and of every run with its settings at another seed."""
    if not len(runs) or "run_id" not in runs:
        return runs.iloc[0:0]
    mine = runs[runs["run_id"] == run_id]
    if not len(mine):
        return mine
    row = mine.iloc[0]
    keys = [k for k in ("dataset", "budget", "backbone", "method", "knobs") if k in runs]
    same = pd.Series(True, index=runs.index)
    for k in keys:
        same &= runs[k].astype(str) == str(row[k])
    return runs[same].drop_duplicates(subset="seed", keep="last")


def seed_table(results: Mapping[str, Any], baseline: str | None = "supervised",
               runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every recorded run with the settings of each of ``results``, at any seed (other seeds come
    from ``-p seed 1`` or a sweep): n, the seeds, test accuracy / macro-F1 mean and sample std, and
    the change against ``baseline`` over the seeds both have (``delta_mean`` ± ``delta_std``,
    ``n_paired``). ``runs``: :func:`sslkit.load_runs` frame (default: the results' reports folders)."""
    runs = _records(results) if runs is None else runs
    per_seed = {}
    for name, r in results.items():
        same = _same_setting(runs, r.run_id)
        if len(same) and {"test.accuracy", "test.macro_f1"} <= set(same.columns):
            per_seed[name] = same.set_index("seed")[["test.accuracy", "test.macro_f1"]].astype(float)
        else:  # no record on disk (a result built in memory): its own numbers
            per_seed[name] = pd.DataFrame({"test.accuracy": [r.test.get("accuracy")],
                                           "test.macro_f1": [r.test.get("macro_f1")]},
                                          index=pd.Index([r.summary.get("seed")], name="seed"), dtype=float)
    names = {"test.accuracy": "accuracy", "test.macro_f1": "macro_f1"}
    base = per_seed.get(baseline) if baseline is not None else None
    base = base["test.accuracy"] if base is not None else None
    rows = {name: {"method": results[name].summary.get("method"), **paired_seed_row(frame.rename(columns=names), base)}
            for name, frame in per_seed.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def paired_seed_row(frame: pd.DataFrame, base: pd.Series | None = None) -> dict:
    """One row of a seed table from per-seed values (index: seed; one column per metric): n, the
    seeds, ``<metric>_mean`` and sample ``<metric>_std`` per column, and with ``base`` (the
    baseline's per-seed values of the first column) the paired change over the seeds both have:
    ``n_paired``, ``delta_mean``, ``delta_std``."""
    row: dict = {"n": len(frame), "seeds": ", ".join(str(s) for s in sorted(frame.index))}
    for col in frame.columns:
        row.update({f"{col}_mean": frame[col].mean(), f"{col}_std": frame[col].std(ddof=1)})
    if base is not None:
        common = frame.index.intersection(base.index)
        delta = frame[frame.columns[0]].loc[common] - base.loc[common]
        row.update({"n_paired": len(common), "delta_mean": delta.mean() if len(common) else math.nan,
                    "delta_std": delta.std(ddof=1) if len(common) > 1 else math.nan})
    return row


# --------------------------------------------------------------------------- conclusions
def _pct(x: float) -> str:
    return f"{x:.2%}"


def _points(x: float) -> str:
    return f"{100 * x:+.2f} points"


def _column_label(column: str) -> str:
    """"dev_macro_f1" -> "dev macro-F1"."""
    return column.replace("macro_f1", "macro-F1").replace("_", " ")


def takeaway(table: pd.DataFrame, baseline: str = "supervised", metric: str = "accuracy",
             choose_by: str | None = None, seeds: pd.DataFrame | None = None, among: Sequence[str] | None = None
             ) -> str:
    """The chapter's conclusion in one sentence, computed from a :func:`run_table`: which row won on
    test ``metric`` (or was chosen by ``choose_by``, e.g. ``"dev_macro_f1"``, among ``among`` rows),
    by how much against ``baseline``, at which seed(s); with a :func:`seed_table`, also the mean
    change over the seeds both have on record."""
    label = _column_label(metric)
    if not len(table):
        return "Takeaway: nothing was run."
    if metric not in table or table[metric].isna().all():  # a user's file without labeled test rows
        return (f"Takeaway: the data has no labeled test split, so no test {label} to compare; the runs' "
                "models and pseudo-labels are in their records (`sslkit pseudo-label` writes labels into "
                "your file).")
    seeds_run = sorted({int(s) for s in table.get("seed", pd.Series(dtype=float)).dropna()})
    at = f"seed{'s' if len(seeds_run) != 1 else ''} {', '.join(map(str, seeds_run))}" if seeds_run else "one run"
    candidates = table.drop(index=baseline, errors="ignore")
    if among is not None:
        candidates = candidates.loc[[n for n in among if n in candidates.index]]
    candidates = candidates[candidates[choose_by or metric].notna()]
    if baseline not in table.index:
        if not len(candidates):
            return "Takeaway: nothing was run."
        best = candidates[choose_by or metric].idxmax()
        return (f"Takeaway: {best} scores best, {_pct(table.loc[best, metric])} test {label} "
                f"({at}; no {baseline} run to compare with).")
    base = table.loc[baseline, metric]
    if not len(candidates):
        return f"Takeaway: {baseline} alone reaches {_pct(base)} test {label} ({at})."
    best = candidates[choose_by or metric].idxmax()
    value = table.loc[best, metric]
    delta = value - base
    name = f"{best} (chosen by {_column_label(choose_by)})" if choose_by else best
    if delta > 0:
        text = (f"Takeaway: {name} beats {baseline}: {_pct(value)} test {label} against {_pct(base)} "
                f"({_points(delta)}, {at}")
    else:
        text = (f"Takeaway: no method beats {baseline} here; the best, {name}, reaches {_pct(value)} "
                f"test {label} against {_pct(base)} ({_points(delta)}, {at}")
    text += "; the only method run beside it)." if len(candidates) == 1 else f"; the best of {len(candidates)} methods)."
    n_pseudo = table.loc[best].get("n_pseudo")
    if n_pseudo is not None and not pd.isna(n_pseudo) and n_pseudo > 0:
        precision = table.loc[best].get("precision")
        correct = "" if precision is None or pd.isna(precision) else f", {precision:.1%} of them correct"
        text += f" It added {int(n_pseudo):,} pseudo-labels{correct}."
    tested = table.loc[best].get("tested")
    if isinstance(tested, str) and tested != "model":
        text += f" Its {tested}'s weights scored best on dev and were the ones tested."
    if seeds is not None and best in seeds.index and metric == "accuracy":
        row = seeds.loc[best]
        n = int(row.get("n_paired", 0) or 0)
        if n > 1:
            text += (f" Over the {n} seeds recorded for both: {_points(row['delta_mean'])} on average "
                     f"(± {100 * row['delta_std']:.2f}).")
        else:
            text += " One seed on record: rerun with `-p seed 1` (or a sweep) for a spread."
    return text


def gap_takeaway(gap: pd.DataFrame) -> str:
    """Notebook 06's conclusion from :func:`sslkit.ablation.gap_closed`: per data set, backbone and
    budget, the variant that closes the largest share of the supervised → all-labels gap."""
    found = gap.dropna(subset=["gap_closed"]) if "gap_closed" in gap else gap.iloc[0:0]
    found = found[found["method"] != "supervised"] if len(found) else found
    if not len(found):
        return ("Takeaway: no gap to measure yet: it needs supervised runs and an all-labels reference "
                "(notebook 01 writes both) beside other methods' runs at the same budget.")
    top = found.sort_values("gap_closed").groupby(["dataset", "backbone", "budget"], sort=False).tail(1)
    return "\n".join(
        f"Takeaway: {r.dataset} ({r.backbone}) at budget {r.budget}: {r.variant} closes {r.gap_closed:.0%} of the "
        f"gap ({_pct(r.accuracy_mean)} vs {_pct(r.supervised_accuracy)} supervised; reference "
        f"{_pct(r.reference_accuracy)}, {r.reference}; {int(r.n)} run{'s' if r.n != 1 else ''})."
        for r in top.itertuples())


# --------------------------------------------------------------------------- time
def format_seconds(seconds: float) -> str:
    """"42 s", "3 min 05 s", "1 h 02 min"."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Timer:
    """Wall time since it was made: ``clock = Timer()`` at a notebook's start, ``print(clock)`` at its end."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def __str__(self) -> str:
        return f"elapsed: {format_seconds(self.seconds)}"

    __repr__ = __str__


def elapsed() -> str:
    """Wall time since sslkit was imported (a notebook's parameters cell), as "elapsed: …"."""
    return f"elapsed: {format_seconds(time.perf_counter() - _STARTED)}"

