"""Classification and pseudo-label metrics as plain functions on arrays.

Everything returned is built from Python ``int``/``float`` (or a DataFrame / ndarray), so
summaries can go straight into ``json.dump``. Nothing here imports the rest of sslkit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

__all__ = [
    "classification_metrics",
    "per_class_report",
    "confusion",
    "pseudo_label_quality",
    "confused_pairs",
    "embedding_geometry",
]


def _as_int_array(x: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _check_same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{na} and {nb} differ in length: {len(a)} vs {len(b)}")


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    label_names: Sequence[str] | None = None,
) -> dict:
    """Accuracy and macro-F1.

    With ``label_names``, macro-F1 averages over every class ``0..len(label_names)-1``
    (a class absent from both arrays counts as F1 = 0); without, over the labels present in
    ``y_true`` or ``y_pred``. Returns ``{"accuracy", "macro_f1", "n"}``; NaN scores when empty.
    """
    yt = _as_int_array(y_true, "y_true")
    yp = _as_int_array(y_pred, "y_pred")
    _check_same_length(yt, yp, "y_true", "y_pred")
    n = int(len(yt))
    if n == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    labels = list(range(len(label_names))) if label_names is not None else None
    acc = accuracy_score(yt, yp)
    f1 = f1_score(yt, yp, labels=labels, average="macro", zero_division=0)
    return {"accuracy": float(acc), "macro_f1": float(f1), "n": n}


def per_class_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
) -> pd.DataFrame:
    """One row per class in class order: ``label, precision, recall, f1, support``."""
    yt = _as_int_array(y_true, "y_true")
    yp = _as_int_array(y_pred, "y_pred")
    _check_same_length(yt, yp, "y_true", "y_pred")
    labels = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(
        yt, yp, labels=labels, average=None, zero_division=0
    )
    return pd.DataFrame(
        {
            "label": [str(x) for x in label_names],
            "precision": np.asarray(p, dtype=float),
            "recall": np.asarray(r, dtype=float),
            "f1": np.asarray(f, dtype=float),
            "support": np.asarray(s, dtype=np.int64),
        }
    )


def confusion(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    num_classes: int,
    normalize: str | None = None,
) -> np.ndarray:
    """``num_classes x num_classes`` confusion matrix (rows = true, cols = predicted).

    ``normalize`` is passed to sklearn: ``None``, ``"true"``, ``"pred"`` or ``"all"``.
    """
    yt = _as_int_array(y_true, "y_true")
    yp = _as_int_array(y_pred, "y_pred")
    _check_same_length(yt, yp, "y_true", "y_pred")
    if len(yt) == 0:
        dtype = float if normalize else np.int64
        return np.zeros((num_classes, num_classes), dtype=dtype)
    return confusion_matrix(yt, yp, labels=list(range(num_classes)), normalize=normalize)


def pseudo_label_quality(
    pseudo: Sequence[int] | np.ndarray,
    gold: Sequence[int] | np.ndarray,
) -> dict:
    """How good are pseudo-labels where the hidden gold label is known.

    ``pseudo`` uses -1 for "no pseudo-label", ``gold`` uses -1 for "unknown". Returns
    ``n_pseudo`` (pseudo >= 0), ``n_scored`` (pseudo >= 0 and gold >= 0), ``precision``
    (share of scored pseudo-labels equal to gold; NaN when nothing is scored) and
    ``coverage`` (n_pseudo / len; NaN when empty).
    """
    ps = _as_int_array(pseudo, "pseudo")
    gd = _as_int_array(gold, "gold")
    _check_same_length(ps, gd, "pseudo", "gold")
    has_pseudo = ps >= 0
    scored = has_pseudo & (gd >= 0)
    n_pseudo = int(has_pseudo.sum())
    n_scored = int(scored.sum())
    precision = float((ps[scored] == gd[scored]).mean()) if n_scored else float("nan")
    coverage = float(n_pseudo / len(ps)) if len(ps) else float("nan")
    return {
        "n_pseudo": n_pseudo,
        "n_scored": n_scored,
        "precision": precision,
        "coverage": coverage,
    }


def confused_pairs(
    gold: Sequence, pred: Sequence, confidence: Sequence[float] | np.ndarray | None = None,
    confident: float = 0.9,
) -> pd.DataFrame:
    """The errors by unordered pair of classes, most frequent first.

    An error with gold ``a`` and prediction ``b`` counts for the pair (min(a, b), max(a, b)), so
    both directions of one confusion add up. Columns: ``errors``, ``share`` (of all errors) and,
    with ``confidence``, ``confident`` (errors predicted with confidence >= ``confident``: no
    threshold below that value filters them out). Labels may be ints or names.
    """
    g, p = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    _check_same_length(g, p, "gold", "pred")
    wrong = g != p
    columns = ["class_a", "class_b", "errors", "share"] + ([] if confidence is None else ["confident"])
    if not wrong.any():
        return pd.DataFrame(columns=columns).set_index(["class_a", "class_b"])
    pairs = pd.DataFrame({"class_a": np.where(g < p, g, p)[wrong], "class_b": np.where(g < p, p, g)[wrong]})
    if confidence is not None:
        c = np.asarray(confidence, dtype=float)
        _check_same_length(g, c, "gold", "confidence")
        pairs["confident"] = (c[wrong] >= confident).astype(np.int64)
    grouped = pairs.groupby(["class_a", "class_b"])
    out = grouped.size().rename("errors").to_frame()
    out["share"] = out["errors"] / int(wrong.sum())
    if confidence is not None:
        out["confident"] = grouped["confident"].sum()
    return out.sort_values(["errors"], ascending=False, kind="stable")[columns[2:]]


def embedding_geometry(
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    silhouette: bool = True,
) -> dict:
    """How class-structured an embedding space is, with cosine similarity (rows are L2-normalised).

    * ``intra_cosine``: mean cos(z_i, z_j) over ordered same-class pairs, i != j;
    * ``inter_cosine``: mean cos(z_i, z_j) over pairs of different classes;
    * ``gap`` = intra - inter (higher: classes tighter and further apart);
    * ``silhouette``: sklearn's silhouette score with the cosine distance, in [-1, 1] (NaN unless
      2 <= classes <= n - 1; ``silhouette=False`` skips it, the one O(n^2) part).

    Pairs are pooled over all classes (a big class weighs more). Computed from per-class sums,
    sum_{i,j in c} z_i.z_j = |sum_{i in c} z_i|^2, so memory is O(n d), not O(n^2). Rows with a
    label < 0 are ignored. Returns floats plus ``n`` and ``n_classes``.
    """
    from sklearn.metrics import silhouette_score

    x = np.asarray(features, dtype=np.float64)
    y = _as_int_array(labels, "labels")
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D, got shape {x.shape}")
    _check_same_length(x, y, "features", "labels")
    keep = y >= 0
    x, y = x[keep], y[keep]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    z = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    classes, yi = np.unique(y, return_inverse=True)
    sums = np.zeros((len(classes), z.shape[1]))
    np.add.at(sums, yi, z)
    counts = np.bincount(yi, minlength=len(classes)).astype(np.float64)
    diag = float((z * z).sum())                       # sum_i z_i.z_i (1 per non-zero row)
    same_all = float((sums * sums).sum())             # same-class pairs, i = j included
    total_all = float(np.square(z.sum(0)).sum())      # all pairs, i = j included
    n = len(y)
    n_same = float((counts ** 2).sum() - n)
    n_inter = float(n * n - (counts ** 2).sum())
    intra = (same_all - diag) / n_same if n_same > 0 else float("nan")
    inter = (total_all - same_all) / n_inter if n_inter > 0 else float("nan")
    sil = float("nan")
    if silhouette and 2 <= len(classes) <= n - 1:
        sil = float(silhouette_score(z, y, metric="cosine"))
    return {"intra_cosine": float(intra), "inter_cosine": float(inter), "gap": float(intra - inter),
            "silhouette": sil, "n": int(n), "n_classes": int(len(classes))}
