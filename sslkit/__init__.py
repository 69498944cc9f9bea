"""sslkit: label-efficient text classification -- LoRA backbones + semi-supervised methods, as a book.

What the notebooks import::

    import sslkit
    data = sslkit.load_dataset("banking77")
    budget = sslkit.split_budget(data, labeled=0.1, seed=0)
    model = sslkit.load_backbone("minilm", budget.num_classes)
    result = sslkit.fit(model, budget, sslkit.methods.Supervised(), epochs=6)
"""
from __future__ import annotations

import os

__version__ = "0.1.0"

#: True when $SSLKIT_SMOKE=1: notebooks shrink data and epochs so CI can run them end to end.
SMOKE: bool = os.environ.get("SSLKIT_SMOKE", "0") not in ("", "0", "false", "False")

from . import fasttext, methods  # noqa: E402
from .backbone import Backbone, LoraSettings, embed, load_backbone, load_saved_backbone  # noqa: E402
from .data import Budget, DatasetSplits, TextDataset, dataset_names, load_dataset, split_budget  # noqa: E402
from .metrics import classification_metrics, per_class_report  # noqa: E402
from .runs import load_runs, read_metrics  # noqa: E402
from .trainer import RunResult, TrainConfig, evaluate, fit, results_table, train_defaults  # noqa: E402

__all__ = [
    "SMOKE", "Backbone", "Budget", "DatasetSplits", "LoraSettings", "RunResult", "TextDataset",
    "TrainConfig", "classification_metrics", "dataset_names", "embed", "evaluate", "fit",
    "fasttext", "load_backbone", "load_dataset", "load_runs", "load_saved_backbone", "methods",
    "per_class_report", "read_metrics", "results_table", "split_budget", "train_defaults",
]
