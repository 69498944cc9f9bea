"""sslkit: label-efficient text classification -- LoRA backbones + semi-supervised methods, as a book.

What the notebooks import::

    import sslkit
    data = sslkit.load_dataset("banking77")
    budget = sslkit.split_budget(data, labeled=0.1, seed=0)
    model = sslkit.load_backbone("minilm", budget.num_classes)
    result = sslkit.fit(model, budget, "fixmatch")      # a preset by name, or a Method
"""
from __future__ import annotations

from ._version import __version__, smoke_mode  # noqa: F401 - __version__: the package's

#: True when $SSLKIT_SMOKE=1: notebooks shrink data and epochs so CI can run them end to end.
SMOKE: bool = smoke_mode()

from . import methods  # noqa: E402
from .backbones import fasttext  # noqa: E402
from .inference import evaluate, predict_logits  # noqa: E402
from .presets import preset, preset_names, presets_table  # noqa: E402
from .backbones import Backbone, LoraSettings, embed, load_backbone, load_saved_backbone  # noqa: E402
from .data import Budget, DatasetSplits, TextDataset, dataset_names, load_dataset, split_budget  # noqa: E402
from .metrics import classification_metrics, per_class_report  # noqa: E402
from .runs import load_runs, read_metrics  # noqa: E402
from .trainer import RunOptions, RunResult, TrainConfig, fit, results_table, train_defaults  # noqa: E402
from .chapters import Timer, budget_text, elapsed, gap_takeaway, load_budget, run_table, seed_table, setup_text, styled, takeaway  # noqa: E402,E501

__all__ = [
    "SMOKE", "Backbone", "Budget", "DatasetSplits", "LoraSettings", "RunOptions", "RunResult", "TextDataset",
    "TrainConfig", "classification_metrics", "dataset_names", "embed", "evaluate", "fit",
    "fasttext", "load_backbone", "load_dataset", "load_runs", "load_saved_backbone", "methods",
    "per_class_report", "predict_logits", "preset", "preset_names", "presets_table", "read_metrics",
    "results_table", "split_budget", "train_defaults",
]
__all__ += ["Timer", "budget_text", "elapsed", "gap_takeaway", "load_budget", "run_table", "seed_table", "setup_text", "styled", "takeaway"]
