"""Reference points that need no fine-tuning: frozen pooled embeddings + logistic regression.

Fit at the label budget (the floor a method must clear) and with every training label (the ceiling
that semi-supervised learning tries to approach). Each reference is written as a run record
(method ``frozen-logreg``), so the index page and the ablation read it like any other run.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .backbones import embed, load_backbone
from .devices import resolve_device
from .data import Budget, DatasetSplits
from .metrics import classification_metrics
from .runs import config_hash, reports_dir, write_json


def logistic_regression(train_x: np.ndarray, train_y: np.ndarray, C: float = 10.0, seed: int = 0):
    """Multinomial logistic regression on L2-normalised features (scikit-learn, lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=3000, random_state=seed)
    with warnings.catch_warnings():
        # a few labels per class (a small budget) looks to scikit-learn like a regression target;
        # the labels here are class ids by construction
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        return clf.fit(_normalise(train_x), train_y)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def frozen_embedding_references(
    data: DatasetSplits,
    budget: Budget,
    backbone: str = "minilm",
    max_length: int = 64,
    C: float = 10.0,
    batch_size: int = 128,
    record: bool = True,
) -> pd.DataFrame:
    """Test metrics of logistic regression on frozen embeddings, at the budget and with all labels.

    Returns one row per reference: model, labels, n_train, test accuracy / macro-F1, seconds.
    With ``record=True`` each row is also written to reports/runs/<id>/summary.json.
    """
    if data.test is None:
        raise ValueError(f"{data.name}: frozen-embedding references need a test split")
    t0 = time.time()
    model = load_backbone(backbone, data.train.num_classes, lora=None, max_length=max_length)
    model.to(resolve_device("auto"))  # ~12k texts to embed: on the GPU when there is one
    train_x = embed(model, data.train.texts, batch_size=batch_size)
    test_x = embed(model, data.test.texts, batch_size=batch_size)
    embed_seconds = time.time() - t0
    position = {int(i): p for p, i in enumerate(data.train.idx)}
    at_budget = np.array([position[int(i)] for i in budget.labeled.idx])
    all_labeled = np.flatnonzero(data.train.labels >= 0)
    scored = data.test.labels >= 0

    rows = []
    for labels_name, rows_used in (("budget", at_budget), ("all", all_labeled)):
        t1 = time.time()
        clf = logistic_regression(train_x[rows_used], data.train.labels[rows_used], C=C, seed=budget.seed)
        pred = clf.predict(_normalise(test_x))
        metrics = classification_metrics(data.test.labels[scored], pred[scored], data.label_names)
        seconds = embed_seconds + time.time() - t1
        rows.append({"model": f"frozen {backbone} + logistic regression",
                     "labels": f"{budget.labeled_fraction:g} budget" if labels_name == "budget"
                     and budget.labeled_fraction is not None else labels_name,
                     "n_train": int(len(rows_used)), "accuracy": metrics["accuracy"],
                     "macro_f1": metrics["macro_f1"], "seconds": seconds})
        if record:
            _record(budget, backbone, labels_name, len(rows_used), metrics, seconds, C, max_length)
    return pd.DataFrame(rows)


def _record(budget: Budget, backbone: str, labels_name: str, n_train: int, metrics: dict,
            seconds: float, C: float, max_length: int) -> Path:
    import os

    from .runs import budget_tag

    tag = budget_tag(budget) if labels_name == "budget" else "all"
    config = {"dataset": budget.dataset, "budget": tag, "seed": budget.seed, "backbone": backbone,
              "method": "frozen-logreg", "C": C, "max_length": max_length}
    run_id = f"{budget.dataset}-{tag}-frozen-logreg-s{budget.seed}-{config_hash(config)}"
    run_dir = reports_dir() / "runs" / run_id
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "summary.json", {
        "run_id": run_id, "notebook": os.environ.get("SSLKIT_NOTEBOOK"), "dataset": budget.dataset,
        "budget": tag, "method": "frozen-logreg", "backbone": backbone, "seed": budget.seed,
        "n_labeled": n_train, "test": metrics, "minutes": seconds / 60.0, "reference": True,
    })
    return run_dir
