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
