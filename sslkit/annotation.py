"""A simulated annotation loop: which texts should a person label next?

A user starts from a few labels (say 2 per class) and buys more in rounds. Each round trains the
supervised model on the labels held so far, asks a query strategy (:mod:`sslkit.query`) which pool
texts to label next, and lets a simulated annotator reveal their hidden gold labels
(``budget.unlabeled_gold``) -- the pool's gold labels are used for nothing else::

    start = sslkit.split_budget(data, per_class=2, seed=0)
    run = run_rounds(make_model, start, "margin", targets=(0.025, 0.035, 0.05), seed=0, fit_kwargs=train)
    run.rounds      # per round: labels spent, test accuracy / macro-F1, run id
    run.picks       # per chosen text: gold class, the model's prediction, whether it was already right
    final_semi_supervised(make_model, run.budget, "fixmatch", seed=0, fit_kwargs=train)

Every training is an ordinary :func:`sslkit.fit` run with ``reuse=True``: the first round (the
starting labels) is the same run for every strategy, and a rerun of the loop loads its finished
records instead of training again. A grown budget is an :class:`AnnotatedBudget`; the run id hashes
its rows (:meth:`sslkit.data.Budget.data_key`), so two strategies that spend the same number of
labels on different texts never share a run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .data import Budget, TextDataset

__all__ = ["AnnotatedBudget", "AnnotationRun", "annotation_takeaway", "class_entropy", "final_semi_supervised",
           "gain_table", "grow_budget", "pick_summary", "plot_rounds", "round_summary",
           "run_rounds", "setup_text"]

#: ``make_model(budget, seed=seed)``: a fresh backbone for a run on ``budget``.
ModelFactory = Callable[..., Any]


# --------------------------------------------------------------------------- growing a budget
@dataclass
class AnnotatedBudget(Budget):
    """A budget whose labels were bought in rounds. ``chosen_by`` names the strategy; the budget tag
    of the run id carries it (:func:`sslkit.runs.budget_tag`), so every strategy's runs keep their
    own records."""

    chosen_by: str = ""
    rounds: int = 0


def _concat(a: TextDataset, b: TextDataset) -> TextDataset:
    """Rows of ``a`` then ``b``, sorted by train idx (the order a labeled set keeps)."""
    order = np.argsort(np.concatenate([a.idx, b.idx]), kind="stable")
    texts, ids = a.texts + b.texts, a.ids + b.ids
    return TextDataset(texts=[texts[i] for i in order], labels=np.concatenate([a.labels, b.labels])[order],
                       ids=[ids[i] for i in order], label_names=a.label_names,
                       idx=np.concatenate([a.idx, b.idx])[order], name=a.name, source=a.source)


def grow_budget(budget: Budget, pool_positions: Sequence[int] | np.ndarray, *, fraction: float | None = None,
                chosen_by: str | None = None) -> AnnotatedBudget:
    """The budget after an annotator labels the pool texts at ``pool_positions``: they move to the
    labeled set with their gold labels, the pool keeps the rest (and their hidden gold).

    ``fraction`` is the share of train now labeled, as the run records name the budget (default:
    the exact share, to 4 digits). Positions must be distinct, inside the pool and have a known
    gold label -- an annotator cannot reveal a label nobody has."""
    pos = np.asarray(pool_positions, dtype=np.int64).reshape(-1)
    pool = budget.unlabeled
    if len(np.unique(pos)) != len(pos):
        raise ValueError("pool_positions holds the same text twice")
    if len(pos) and (pos.min() < 0 or pos.max() >= len(pool)):
        raise ValueError(f"pool_positions must lie in [0, {len(pool)}), got {pos.min()}..{pos.max()}")
    gold = budget.unlabeled_gold[pos]
    if (gold < 0).any():
        raise ValueError(f"pool texts without a gold label cannot be annotated: idx {pool.idx[pos][gold < 0][:5]}")
    moved = pool.subset(pos)
    moved.labels = gold.copy()
    keep = np.setdiff1d(np.arange(len(pool)), pos)
    labeled = _concat(budget.labeled, moved)
    n_train = len(labeled) + len(keep)
    previous = budget if isinstance(budget, AnnotatedBudget) else None
    return AnnotatedBudget(
        dataset=budget.dataset, labeled=labeled, unlabeled=pool.subset(keep), dev=budget.dev, test=budget.test,
        label_names=budget.label_names, unlabeled_gold=budget.unlabeled_gold[keep], seed=budget.seed,
        labeled_fraction=fraction if fraction is not None else round(len(labeled) / n_train, 4), per_class=None,
        chosen_by=chosen_by or (previous.chosen_by if previous else ""),
        rounds=(previous.rounds if previous else 0) + 1)


# --------------------------------------------------------------------------- the loop
@dataclass
class AnnotationRun:
    """What :func:`run_rounds` returns: one row per round, one row per chosen text, the final labels."""

    rounds: pd.DataFrame
    picks: pd.DataFrame
    budget: Budget


def _fit(make_model: ModelFactory, budget: Budget, method: str, seed: int, fit_kwargs: Mapping[str, Any] | None):
    """One reusable run: ``seed`` and ``reuse=True`` over whatever ``fit_kwargs`` say."""
    from .trainer import fit

    kwargs = {**dict(fit_kwargs or {}), "seed": seed, "reuse": True}
    return fit(make_model(budget, seed=seed), budget, method, **kwargs)


def _scoring_model(result, fit_kwargs: Mapping[str, Any] | None):
    """The run's tested weights as saved, on the training device: a fresh run and a reused record
    then score the pool identically, so a rerun picks the same texts and reuses every round."""
    from .backbones import load_saved_backbone
    from .devices import resolve_device

    checkpoint = result.run_dir / "checkpoint"
    model = load_saved_backbone(checkpoint) if checkpoint.is_dir() else result.model
    return model.to(resolve_device((fit_kwargs or {}).get("device", "auto")))


def _round_row(strategy: str, seed: int, number: int, budget: Budget, target: float | None, result) -> dict:
    n_train = len(budget.labeled) + len(budget.unlabeled)
    return {"strategy": strategy, "seed": seed, "round": number, "labels": len(budget.labeled),
            "fraction": len(budget.labeled) / n_train, "target": target,
            "accuracy": result.test.get("accuracy"), "macro_f1": result.test.get("macro_f1"),
            "run_id": result.run_id}


def _batch_size(target: float, budget: Budget) -> int:
    """Labels to buy so that ``target`` of train is labeled: round(target x |train|) - |labeled|."""
    n_train = len(budget.labeled) + len(budget.unlabeled)
    n = int(round(target * n_train)) - len(budget.labeled)
    if n < 1:
        raise ValueError(f"target {target:g} of {n_train:,} training texts is {round(target * n_train)} labels; "
                         f"{len(budget.labeled):,} are labeled already: give targets above "
                         f"{len(budget.labeled) / n_train:.4f}, increasing")
    return n


def pick_table(budget: Budget, result, strategy: str, seed: int, number: int) -> pd.DataFrame:
    """The texts a query chose, one row each: the round they are labeled for, rank, train idx,
    gold class (revealed by the annotator), the model's prediction, whether it was already right
    (a label that teaches the model little), and the strategy's score."""
    pos = np.asarray(result.indices, dtype=np.int64)
    gold = budget.unlabeled_gold[pos]
    predicted = (np.asarray(result.probs)[pos].argmax(axis=1) if result.probs is not None
                 else np.full(len(pos), -1, dtype=np.int64))
    names = np.asarray(budget.label_names, dtype=object)
    return pd.DataFrame({"strategy": strategy, "seed": seed, "round": number, "rank": np.arange(1, len(pos) + 1),
                         "idx": budget.unlabeled.idx[pos], "gold": gold, "label": names[gold],
                         "predicted": predicted, "already_right": predicted == gold,
                         "score": np.asarray(result.scores, dtype=np.float64)})


def run_rounds(make_model: ModelFactory, budget: Budget, strategy: str,
               targets: Sequence[float] = (0.025, 0.035, 0.05), seed: int = 0,
               fit_kwargs: Mapping[str, Any] | None = None, method: str = "supervised") -> AnnotationRun:
    """Start from ``budget``'s labels, then for every target share of train: train ``method``
    (round 0 is the start, the same run for every strategy), let ``strategy`` choose the texts that
    bring the labeled set to the target, reveal their gold labels; after the last target, train
    once more. ``make_model(budget, seed=seed)`` builds each run's fresh backbone; ``fit_kwargs``
    go to :func:`sslkit.fit` (``seed`` and ``reuse=True`` are set here)."""
    from .query import query

    targets = [float(t) for t in targets]
    if any(b <= a for a, b in zip(targets, targets[1:])):
        raise ValueError(f"targets must increase, got {targets}")
    rows, picks = [], []
    for number in range(len(targets) + 1):
        result = _fit(make_model, budget, method, seed, fit_kwargs)
        rows.append(_round_row(strategy, seed, number, budget, targets[number - 1] if number else None, result))
        if number == len(targets):
            break
        n = _batch_size(targets[number], budget)
        chosen = query(_scoring_model(result, fit_kwargs), budget.unlabeled.texts, n, strategy, seed=seed,
                       labeled=budget.labeled.texts)
        picks.append(pick_table(budget, chosen, strategy, seed, number + 1))
        budget = grow_budget(budget, chosen.indices, fraction=targets[number], chosen_by=strategy)
    return AnnotationRun(pd.DataFrame(rows), pd.concat(picks, ignore_index=True) if picks else pd.DataFrame(),
                         budget)


def final_semi_supervised(make_model: ModelFactory, budget: Budget, preset: str = "fixmatch", seed: int = 0,
                          fit_kwargs: Mapping[str, Any] | None = None) -> dict:
    """The semi-supervised ``preset`` on a strategy's final labels (the rest of train as its pool):
    whether well-chosen labels still help once the pool trains too. One row: labels, preset, seed,
    test accuracy / macro-F1, pseudo-labels, run id."""
    result = _fit(make_model, budget, preset, seed, fit_kwargs)
    return {"strategy": getattr(budget, "chosen_by", "") or "start", "seed": seed, "method": preset,
            "labels": len(budget.labeled), "accuracy": result.test.get("accuracy"),
            "macro_f1": result.test.get("macro_f1"), "n_pseudo": result.summary.get("n_pseudo_labeled"),
            "run_id": result.run_id}


# --------------------------------------------------------------------------- analysis (pure)
def class_entropy(labels: Sequence[int] | np.ndarray) -> float:
    """Shannon entropy (nats) of the class histogram of ``labels``: 0 when every pick shares one class,
    ln(k) when k classes are picked equally often. A batch that teaches many classes scores high."""
    values = np.asarray(labels).reshape(-1)
    if len(values) == 0:
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def pick_summary(picks: pd.DataFrame, by: Sequence[str] = ("strategy",)) -> pd.DataFrame:
    """What each strategy chose, per query (strategy, seed, round) averaged over ``by``: texts picked,
    distinct gold classes covered, the entropy of their gold-class histogram, and the share the model
    already classified right (labels it did not need)."""
    if not len(picks):
        return pd.DataFrame(columns=[*by, "queries", "picked", "classes", "entropy", "already_right"])
    per_query = (picks.groupby(["strategy", "seed", "round"], sort=False)
                 .agg(picked=("gold", "size"), classes=("gold", "nunique"), entropy=("gold", class_entropy),
                      already_right=("already_right", "mean"))
                 .reset_index())
    return (per_query.groupby(list(by), sort=False)
            .agg(queries=("picked", "size"), picked=("picked", "mean"), classes=("classes", "mean"),
                 entropy=("entropy", "mean"), already_right=("already_right", "mean"))
            .reset_index())


def round_summary(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and round, over seeds: labels spent (mean), test accuracy and macro-F1 mean and
    sample std, and the number of seeds -- the points and bands of :func:`plot_rounds`."""
    return (rounds.groupby(["strategy", "round"], sort=False)
            .agg(labels=("labels", "mean"), fraction=("fraction", "mean"), n=("seed", "nunique"),
                 accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
                 macro_f1_mean=("macro_f1", "mean"), macro_f1_std=("macro_f1", "std"))
            .reset_index())


def gain_table(frame: pd.DataFrame, baseline: str = "random", metric: str = "accuracy") -> pd.DataFrame:
    """Per strategy (rows of ``frame``, e.g. each run's final round): ``metric`` mean and sample
    std over seeds, and the change against ``baseline`` over the seeds both have (``delta_mean`` ±
    ``delta_std``, ``n_paired``), as :func:`sslkit.seed_table` lays it out."""
    from .chapters import paired_seed_row

    per_seed = frame.pivot_table(index="seed", columns="strategy", values=metric, aggfunc="mean")
    base = per_seed[baseline].dropna() if baseline in per_seed else None
    rows = {strategy: paired_seed_row(per_seed[strategy].dropna().to_frame(metric), base)
            for strategy in dict.fromkeys(frame["strategy"])}
    return pd.DataFrame.from_dict(rows, orient="index")


def annotation_takeaway(supervised: pd.DataFrame, semi: pd.DataFrame | None = None, baseline: str = "random",
                        min_gain: float = 0.02, method: str = "the semi-supervised preset") -> str:
    """The chapter's conclusion from two :func:`gain_table` s (final labels, supervised and with the
    semi-supervised ``method``): the best strategy by mean supervised accuracy, whether it beats
    ``baseline`` by at least ``min_gain`` (2 points), and whether it still beats it semi-supervised."""
    rivals = supervised.drop(index=baseline, errors="ignore")
    if baseline not in supervised.index or not len(rivals) or rivals["delta_mean"].isna().all():
        return f"Takeaway: nothing to compare: run `{baseline}` and at least one other strategy on the same seeds."
    best = rivals["delta_mean"].idxmax()
    row = rivals.loc[best]
    gain, n = row["delta_mean"], int(row["n_paired"])
    spread = f" ± {100 * row['delta_std']:.2f}" if n > 1 else ""
    verdict = "beats" if gain >= min_gain else ("edges out" if gain > 0 else "does not beat")
    text = (f"Takeaway: with supervised training on the final labels, the best strategy, {best}, {verdict} {baseline} "
            f"by {100 * gain:+.2f} points{spread} ({row['accuracy_mean']:.2%} against "
            f"{supervised.loc[baseline, 'accuracy_mean']:.2%}, {n} seed{'s' if n != 1 else ''}): "
            f"{'at least' if gain >= min_gain else 'less than'} the {100 * min_gain:g} points that make the choice "
            "worth a query strategy.")
    if semi is not None and best in semi.index and baseline in semi.index:
        semi_gain = semi.loc[best, "delta_mean"]
        still = "still beats" if semi_gain > 0 else "no longer beats"
        text += (f" With {method} on the same labels, {best} {still} {baseline} ({100 * semi_gain:+.2f} points, "
                 f"{semi.loc[best, 'accuracy_mean']:.2%} against {semi.loc[baseline, 'accuracy_mean']:.2%}).")
    return text


# --------------------------------------------------------------------------- text and figure
def setup_text(dataset: str, per_class: int, targets: Sequence[float], strategies: Sequence[str],
               seeds: Sequence[int], *, backbone: str, train: Mapping[str, Any], method: str,
               smoke: bool | None = None) -> str:
    """The chapter's **Setup.** paragraph, from its parameters alone: the start, the rounds, the
    strategies (their one-line summaries from :data:`sslkit.query.STRATEGIES`), training and the
    semi-supervised preset on the final labels."""
    from .chapters import budget_phrase, method_text, smoke_note, training_text
    from .query import STRATEGIES

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    shares = ", then ".join(f"{100 * t:g}%" for t in targets)
    text = (f"**Setup.** `{dataset}`, starting from {budget_phrase(None, per_class)} (stratified, split seed = the "
            f"run's seed); the rest of train is the pool, its gold labels hidden until a simulated annotator "
            f"reveals those of the texts a strategy picks. Labels are bought in rounds, until {shares} of train is "
            f"labeled; seeds {', '.join(str(s) for s in seeds)} (split, training and query).")
    text += smoke_note(smoke)
    text += " " + training_text(backbone, train)
    text += "\n\nStrategies:\n\n" + "\n".join(f"- `{s}`: {STRATEGIES[s].summary}" for s in strategies)
    return text + f"\n\nOn each strategy's final labels, the semi-supervised preset {method_text(method)}."


def plot_rounds(summary: pd.DataFrame, metric: str = "accuracy", title: str | None = None):
    """Test ``metric`` against the labels spent, one line per strategy, a band of ± one sample std
    over seeds (from :func:`round_summary`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    for strategy, line in summary.groupby("strategy", sort=False):
        line = line.sort_values("labels")
        mean, std = 100 * line[f"{metric}_mean"], 100 * line[f"{metric}_std"].fillna(0.0)
        ax.plot(line["labels"], mean, marker="o", label=strategy)
        ax.fill_between(line["labels"], mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("labels spent")
    ax.set_ylabel(f"test {metric.replace('macro_f1', 'macro-F1')} (%)")
    ax.set_title(title or f"Test {metric.replace('macro_f1', 'macro-F1')} per round (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(title="strategy")
    return fig
