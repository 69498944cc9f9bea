"""Figures for the book: each function takes results and returns a matplotlib ``Figure``.

No function calls ``plt.show()``; figures are left open so a notebook cell displays the
returned figure (close them with ``plt.close(fig)`` in loops). Single-panel functions accept
``ax=`` to draw into an existing axes. Nothing here imports the rest of sslkit.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_class_histogram",
    "plot_text_lengths",
    "plot_budget_split",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_metric_bars",
    "plot_tsne",
    "plot_paths",
]


def _fig_ax(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A new figure + axes, or the root figure of the given axes."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    try:
        fig = ax.get_figure(root=True)  # matplotlib >= 3.10
    except TypeError:
        fig = ax.figure
    return fig, ax


def _tick_fontsize(n: int) -> float:
    """Smaller tick labels as the number of categories grows."""
    if n <= 20:
        return 9.0
    return max(6.0, 9.0 - (n - 20) / 20.0)


def plot_class_histogram(
    counts: Mapping[str, int] | pd.Series,
    title: str | None = None,
    top: int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bar chart of examples per class, sorted descending (``top`` keeps the N largest)."""
    s = counts if isinstance(counts, pd.Series) else pd.Series(dict(counts))
    s = s.astype("float64").sort_values(ascending=False, kind="stable")
    s.index = [str(i) for i in s.index]
    n_classes = len(s)
    total = int(s.sum())
    ratio = float(s.max() / s.min()) if n_classes and s.min() > 0 else float("nan")
    if top is not None:
        s = s.iloc[: int(top)]
    n = len(s)
    fig, ax = _fig_ax(ax, (min(20.0, max(6.0, 0.2 * n)), 4.0))
    x = np.arange(n)
    bars = ax.bar(x, s.to_numpy(), color="tab:blue")
    ax.set_xticks(x)
    ax.set_xticklabels(s.index, rotation=90 if n > 8 else 0, fontsize=_tick_fontsize(n))
    ax.set_xlim(-0.6, n - 0.4 if n else 0.6)
    ax.set_ylabel("examples")
    if 0 < n <= 20:
        ax.bar_label(bars, fmt="%d", fontsize=8)
    if title is None:
        title = f"Examples per class (n={total}, {n_classes} classes"
        title += f", max/min={ratio:.1f})" if np.isfinite(ratio) else ")"
        if n < n_classes:
            title += f" — top {n} of {n_classes}"
    ax.set_title(title)
    return fig


def plot_text_lengths(
    lengths_by_split: Mapping[str, Sequence[int]],
    unit: str = "words",
    title: str | None = None,
    bins: int = 40,
    ax: Axes | None = None,
) -> Figure:
    """Overlaid length histograms, one per split, on shared bins; legend shows medians."""
    fig, ax = _fig_ax(ax, (7.0, 4.0))
    data = {k: np.asarray(v, dtype=float) for k, v in lengths_by_split.items() if len(v)}
    if data:
        all_vals = np.concatenate(list(data.values()))
        edges = np.histogram_bin_edges(all_vals, bins=bins)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (split, vals) in enumerate(data.items()):
            c = colors[i % len(colors)]
            ax.hist(vals, bins=edges, alpha=0.45, color=c, histtype="stepfilled",
                    label=f"{split} (n={len(vals)}, median={np.median(vals):.0f})")
            ax.axvline(float(np.median(vals)), color=c, linestyle="--", linewidth=1)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no texts", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("examples")
    ax.set_title(title or f"Text length per split ({unit})")
    return fig


def plot_budget_split(
    n_labeled_per_class: Sequence[int],
    n_pool_per_class: Sequence[int],
    label_names: Sequence[str],
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Stacked bars per class: labeled budget (bottom) and unlabeled pool (top)."""
    lab = np.asarray(n_labeled_per_class, dtype=float)
    pool = np.asarray(n_pool_per_class, dtype=float)
    names = [str(x) for x in label_names]
    if not (len(lab) == len(pool) == len(names)):
        raise ValueError(
            f"lengths differ: labeled={len(lab)}, pool={len(pool)}, label_names={len(names)}"
        )
    n = len(names)
    fig, ax = _fig_ax(ax, (min(20.0, max(6.0, 0.2 * n)), 4.0))
    x = np.arange(n)
    ax.bar(x, lab, color="tab:orange", label=f"labeled ({int(lab.sum())})")
    ax.bar(x, pool, bottom=lab, color="tab:gray", alpha=0.6,
           label=f"unlabeled pool ({int(pool.sum())})")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90 if n > 8 else 0, fontsize=_tick_fontsize(n))
    ax.set_xlim(-0.6, n - 0.4 if n else 0.6)
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    if title is None:
        tot = lab.sum() + pool.sum()
        share = 100.0 * lab.sum() / tot if tot else float("nan")
        title = f"Label budget: {int(lab.sum())} labeled of {int(tot)} ({share:.1f}%)"
    ax.set_title(title)
    return fig


def _most_confused(cm: np.ndarray, k: int) -> np.ndarray:
    """Indices (in class order) of the k classes with the most off-diagonal mass (row + col)."""
    off = cm.astype(float).copy()
    np.fill_diagonal(off, 0.0)
    mass = off.sum(axis=1) + off.sum(axis=0)
    order = np.argsort(-mass, kind="stable")[:k]
    return np.sort(order)


def plot_confusion_matrix(
    cm: np.ndarray,
    label_names: Sequence[str],
    normalize: bool = True,
    max_classes: int = 30,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of a confusion matrix (rows = true, cols = predicted).

    ``normalize`` divides each row by its total (rate per true class, computed on the full
    matrix). With more than ``max_classes`` classes, only the ``max_classes`` classes with the
    largest off-diagonal counts (errors as true + as predicted class) are shown; the title says so.
    """
    import seaborn as sns  # lazy: seaborn is slow to import and only needed here

    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be square, got shape {cm.shape}")
    names = [str(x) for x in label_names]
    k_all = cm.shape[0]
    if len(names) != k_all:
        raise ValueError(f"{len(names)} label names for a {k_all}x{k_all} matrix")
    data = cm.astype(float)
    if normalize:
        rows = data.sum(axis=1, keepdims=True)
        data = np.divide(data, rows, out=np.zeros_like(data), where=rows > 0)
    subset = k_all > max_classes
    idx = _most_confused(cm, max_classes) if subset else np.arange(k_all)
    data = data[np.ix_(idx, idx)]
    shown = [names[i] for i in idx]
    k = len(idx)
    side = min(16.0, max(4.5, 0.35 * k + 2.0))
    fig, ax = _fig_ax(ax, (side + 1.0, side))
    annot = k <= 12
    if normalize:
        fmt = ".2f"
    else:
        fmt = "d" if np.allclose(data, np.round(data)) else ".2f"
        if fmt == "d":
            data = np.round(data).astype(np.int64)
    sns.heatmap(
        data, ax=ax, cmap="Blues", square=True, annot=annot, fmt=fmt,
        annot_kws={"fontsize": 7},
        vmin=0.0, vmax=1.0 if normalize else None,
        xticklabels=shown, yticklabels=shown,
        cbar_kws={"label": "row rate" if normalize else "count", "shrink": 0.8},
    )
    fs = _tick_fontsize(k)
    ax.tick_params(axis="x", labelrotation=90, labelsize=fs)
    ax.tick_params(axis="y", labelrotation=0, labelsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title is None:
        title = "Confusion matrix" + (" (row-normalised)" if normalize else "")
    if subset:
        title += f" — {k} most-confused of {k_all} classes"
    ax.set_title(title)
    return fig


def _history_frame(history: pd.DataFrame | Sequence[Mapping]) -> pd.DataFrame:
    if isinstance(history, pd.DataFrame):
        return history.copy()
    return pd.DataFrame(list(history))


def plot_learning_curves(
    history: pd.DataFrame | Sequence[Mapping],
    title: str | None = None,
) -> Figure:
    """Two panels from ``metrics.jsonl`` rows: training loss vs step, dev metrics vs epoch.

    Loss is ``train_loss`` (or ``loss``); dev metrics are ``dev_accuracy`` / ``dev_macro_f1``.
    Only rows holding a value are drawn; a panel with nothing to draw says so.
    """
    df = _history_frame(history)
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(11.0, 4.0), layout="constrained")

    loss_col = next((c for c in ("train_loss", "loss") if c in df.columns), None)
    if loss_col is not None:
        x_col = "step" if "step" in df.columns else None
        sub = df[[loss_col] + ([x_col] if x_col else [])].apply(pd.to_numeric, errors="coerce")
        sub = sub.dropna()
        x = sub[x_col] if x_col else sub.index
        if len(sub):
            ax_loss.plot(x.to_numpy(), sub[loss_col].to_numpy(), color="tab:blue",
                         linewidth=1, label=loss_col)
            ax_loss.legend(fontsize=8)
        ax_loss.set_xlabel("step" if x_col else "row")
    if loss_col is None or not ax_loss.lines:
        ax_loss.text(0.5, 0.5, "no training loss logged", ha="center", va="center",
                     transform=ax_loss.transAxes)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Training loss")

    x_col = next((c for c in ("epoch", "step") if c in df.columns), None)
    for col, label, color in (("dev_accuracy", "dev accuracy", "tab:green"),
                              ("dev_macro_f1", "dev macro-F1", "tab:purple")):
        if col not in df.columns:
            continue
        sub = df[[col] + ([x_col] if x_col else [])].apply(pd.to_numeric, errors="coerce")
        sub = sub.dropna()
        if not len(sub):
            continue
        x = sub[x_col] if x_col else pd.Series(np.arange(len(sub)))
        ax_dev.plot(x.to_numpy(), sub[col].to_numpy(), marker="o", color=color, label=label)
    if ax_dev.lines:
        ax_dev.legend(fontsize=8)
        xs = np.concatenate([np.asarray(ln.get_xdata(), dtype=float) for ln in ax_dev.lines])
        if np.allclose(xs, np.round(xs)):
            ax_dev.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax_dev.text(0.5, 0.5, "no dev metrics logged", ha="center", va="center",
                    transform=ax_dev.transAxes)
    ax_dev.set_xlabel(x_col or "evaluation")
    ax_dev.set_ylabel("score")
    ax_dev.set_title("Dev metrics")
    if title:
        fig.suptitle(title)
    return fig


def plot_metric_bars(
    table: pd.DataFrame,
    metric: str = "accuracy",
    label_col: str = "model",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Horizontal bars of ``metric`` per ``label_col`` value, best on top, with value labels.

    Repeated labels (e.g. several seeds) are averaged and drawn with a ±1 std error bar.
    """
    for col in (metric, label_col):
        if col not in table.columns:
            raise KeyError(f"column {col!r} not in table (columns: {list(table.columns)})")
    df = table[[label_col, metric]].copy()
    df[metric] = pd.to_numeric(df[metric], errors="coerce")
    df = df.dropna(subset=[metric])
    df[label_col] = df[label_col].astype(str)
    agg = df.groupby(label_col, sort=False)[metric].agg(["mean", "std", "count"])
    agg = agg.sort_values("mean", ascending=True, kind="stable")  # barh draws bottom-up
    n = len(agg)
    fig, ax = _fig_ax(ax, (7.0, max(2.5, 0.45 * n + 1.2)))
    y = np.arange(n)
    xerr = agg["std"].where(agg["count"] > 1).to_numpy(dtype=float)  # NaN: no error bar
    has_err = bool(np.isfinite(xerr).any())
    bars = ax.barh(y, agg["mean"].to_numpy(), xerr=xerr if has_err else None,
                   color="tab:blue", alpha=0.8, capsize=3)
    labels = [
        f"{m:.3f} ± {s:.3f}" if c > 1 else f"{m:.3f}"
        for m, s, c in zip(agg["mean"], agg["std"].fillna(0.0), agg["count"])
    ]
    if n:
        ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
        hi = float(np.nanmax(agg["mean"].to_numpy() + np.nan_to_num(xerr)))
        ax.set_xlim(0.0, hi * 1.2 if hi > 0 else 1.0)
    ax.set_yticks(y)
    ax.set_yticklabels(agg.index.tolist(), fontsize=_tick_fontsize(n))
    ax.set_xlabel(metric)
    ax.set_title(title or f"{metric} by {label_col}")
    return fig


def plot_thresholds(traces: pd.DataFrame, label_names: Sequence[str] | None = None, title: str | None = None):
    """The global threshold tau and every class threshold tau_c against the training step."""
    fig, ax = plt.subplots(figsize=(9, 4))
    if len(traces) == 0:
        ax.text(0.5, 0.5, "no thresholds traced", ha="center", va="center", transform=ax.transAxes)
        return fig
    steps = np.arange(len(traces)) + 1
    tau_c = np.array(traces["tau_c"].tolist(), dtype=float)
    ax.plot(steps, tau_c, color="tab:blue", alpha=0.15, linewidth=0.8)
    ax.plot(steps, tau_c.min(1), color="tab:blue", linestyle=":", label=r"min / max $\tau_c$")
    ax.plot(steps, tau_c.max(1), color="tab:blue", linestyle=":")
    ax.plot(steps, traces["tau"].to_numpy(), color="black", linewidth=2, label=r"$\tau$ (global)")
    ax.set_xlabel("step")
    ax.set_ylabel("threshold")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title(title or rf"Adaptive thresholds: $\tau$ and {tau_c.shape[1]} class thresholds $\tau_c$")
    fig.tight_layout()
    return fig


def plot_pseudo_label_rounds(rounds: pd.DataFrame, title: str | None = None):
    """Left: pseudo-labels selected per class (rows) and round (columns). Right: precision per round
    against the hidden gold labels, with the number selected."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.3, 1]})
    if len(rounds) == 0:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no rounds yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    grid = rounds.pivot_table(index="class", columns="round", values="selected", aggfunc="sum").fillna(0)
    im = ax1.imshow(grid.to_numpy(), aspect="auto", cmap="Blues", interpolation="nearest")
    ax1.set_xlabel("round")
    ax1.set_ylabel(f"class ({len(grid)})")
    ax1.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax1.set_yticks([])
    fig.colorbar(im, ax=ax1, label="selected")
    ax1.set_title("pseudo-labels per class and round")
    per_round = rounds.assign(correct=rounds["precision"].fillna(0) * rounds["selected"]).groupby("round")
    sel, correct = per_round["selected"].sum(), per_round["correct"].sum()
    scored = rounds[rounds["precision"].notna()].groupby("round")["selected"].sum().reindex(sel.index).fillna(0)
    precision = (correct / scored.replace(0, np.nan)).to_numpy()
    ax2.bar(sel.index, sel.to_numpy(), color="tab:gray", alpha=0.4, label="selected")
    ax2.set_ylabel("selected")
    ax2.set_xlabel("round")
    twin = ax2.twinx()
    twin.plot(sel.index, precision, marker="o", color="tab:green", label="precision")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("precision vs hidden gold")
    ax2.set_title("selected and their precision per round")
    fig.suptitle(title or "Pseudo-label rounds")
    fig.tight_layout()
    return fig


def plot_accuracy_per_round(histories: Mapping[str, pd.DataFrame], baseline: float | None = None,
                            metric: str = "test_accuracy", title: str | None = None):
    """``metric`` per epoch (= round) for each run, with the supervised baseline as a line."""
    fig = plot_curves(histories, metric=metric, title=title or f"{metric.replace('_', ' ')} per round")
    ax = fig.axes[0]
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", label="supervised baseline")
        ax.legend()
    ax.set_xlabel("epoch (a round ends each epoch)")
    return fig


def _tsne_classes(labels: np.ndarray, max_classes: int) -> np.ndarray:
    """The ``max_classes`` most frequent classes (ties: lower index), in class order."""
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    if len(classes) <= max_classes:
        return classes
    order = np.lexsort((classes, -counts))[:max_classes]
    return np.sort(classes[order])


def plot_tsne(
    features_by_name: Mapping[str, np.ndarray],
    labels: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
    max_classes: int = 10,
    seed: int = 0,
    max_points: int = 2000,
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """A grid of 2-D t-SNE maps (sklearn, cosine metric), one panel per embedding, coloured by class.

    ``features_by_name`` maps a panel title (e.g. "before training", "cross-entropy", "focal +
    SupCon") to features [n, d] of the same n examples, whose classes are ``labels``. With more
    than ``max_classes`` classes only the ``max_classes`` most frequent are drawn (the same ones in
    every panel; ties: the lower class index) so the colours stay readable; at most ``max_points``
    examples of them (a seeded subset). ``ncols``: 2 for four panels, else up to 3. Each panel is
    its own t-SNE run (``random_state=seed``, PCA init): distances between panels are not
    comparable, cluster shapes within a panel are.
    """
    from sklearn.manifold import TSNE

    y = np.asarray(labels).reshape(-1)
    names = [str(x) for x in label_names]
    if not features_by_name:
        raise ValueError("features_by_name is empty")
    for name, feats in features_by_name.items():
        if len(feats) != len(y):
            raise ValueError(f"{name!r}: {len(feats)} feature rows for {len(y)} labels")
    shown = _tsne_classes(y, max_classes)
    rows = np.flatnonzero(np.isin(y, shown))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    n_panels = len(features_by_name)
    if ncols is None:
        ncols = 2 if n_panels == 4 else 3
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.0 * nrows + 0.8),
                             layout="constrained", squeeze=False)
    cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    colors = {c: cmap(i % cmap.N) for i, c in enumerate(shown)}
    for ax, (name, feats) in zip(axes.flat, features_by_name.items()):
        x = np.asarray(feats, dtype=np.float32)[rows]
        if len(rows) >= 5:
            perplexity = float(min(30.0, (len(rows) - 1) / 3.0))
            xy = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
                      random_state=seed).fit_transform(x)
            for c in shown:
                sel = y[rows] == c
                ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=colors[c], alpha=0.8, linewidths=0)
        else:
            ax.text(0.5, 0.5, "too few points", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(str(name), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n_panels:]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[c], label=names[c]) for c in shown]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(5, max(1, len(shown))), fontsize=8,
               frameon=False)
    n_classes = len(np.unique(y[y >= 0]))
    subset = f"{len(shown)} of {n_classes} classes (the most frequent)" if len(shown) < n_classes \
        else f"{n_classes} classes"
    fig.suptitle(title or f"t-SNE of embeddings ({subset}, {len(rows)} examples)")
    return fig


# --------------------------------------------------------------------------- consistency methods
def plot_curves(curves: Mapping[str, "pd.DataFrame | tuple[pd.DataFrame, str]"], metric: str = "dev_accuracy",
                title: str | None = None):
    """One line per run: ``metric`` per epoch from its history (a DataFrame), or a (history, column)
    pair to plot another column (e.g. a mean teacher's ``dev_accuracy_teacher``)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, value in curves.items():
        hist, column = value if isinstance(value, tuple) else (value, metric)
        h = pd.DataFrame(hist)
        if column in h:
            h = h.dropna(subset=[column])
            ax.plot(h["epoch"], h[column], marker="o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend()
    ax.set_title(title or f"{metric.replace('_', ' ')} per epoch")
    fig.tight_layout()
    return fig


def plot_rampups(epochs: int = 6, rampup_epochs: float = 2.0, max_weight: float = 1.0, steps_per_epoch: int = 50,
                 shapes: Sequence[str] = ("linear", "sigmoid", "cosine")):
    """The consistency weight w(t) over training for each ramp-up shape
    (:func:`sslkit.consistency_math.consistency_weight`: 0 in the first epoch, then the ramp)."""
    from .consistency_math import consistency_weight

    steps = np.arange(epochs * steps_per_epoch)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for shape in shapes:
        w = [consistency_weight(int(s), steps_per_epoch, rampup_epochs, max_weight, shape) for s in steps]
        ax.plot(steps / steps_per_epoch, w, label=shape)
    ax.set_xlabel("epoch")
    ax.set_ylabel("consistency weight w(t)")
    ax.legend()
    ax.set_title(f"Ramp-ups over {rampup_epochs:g} epochs after a first epoch at 0")
    fig.tight_layout()
    return fig


def plot_paths(table: pd.DataFrame, metric: str = "accuracy", baseline: str | None = "supervised",
               title: str | None = None, ax: Axes | None = None) -> Figure:
    """Horizontal bars of ``<metric>_mean`` ± ``<metric>_std`` per row of a seed table (one row per
    path or method, e.g. :func:`sslkit.recipe.recipe_table`), best at the top; a dashed line at
    ``baseline``'s mean."""
    rows = table.sort_values(f"{metric}_mean")
    fig, ax = _fig_ax(ax, (7.0, 0.45 * len(rows) + 1.2))
    means, stds = 100 * rows[f"{metric}_mean"], 100 * rows[f"{metric}_std"].fillna(0.0)
    ax.barh(rows.index.astype(str), means, xerr=stds, color="#4C72B0", alpha=0.85, capsize=3)
    for y, (m, n) in enumerate(zip(means, rows["n"])):
        ax.text(m, y, f" {m:.2f} (n={int(n)})", va="center", ha="left", fontsize=8)
    if baseline is not None and baseline in rows.index:
        ax.axvline(100 * rows.loc[baseline, f"{metric}_mean"], color="#777", ls="--", lw=1)
    low = float((means - stds).min())
    ax.set_xlim(max(0.0, low - 2.0), min(100.0, float((means + stds).max()) + 2.5))
    ax.set_xlabel(f"test {metric.replace('_', '-').replace('macro-f1', 'macro-F1')} (%), mean ± std over seeds")
    ax.set_title(title or "")
    return fig
