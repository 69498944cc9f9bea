"""The settings the book shows, by name: one registry that notebooks, sweeps and the command line read.

A preset is a method with its knobs set, plus the few training settings it needs (a focal loss),
so ``sslkit.fit(model, budget, "fixmatch")`` trains exactly what notebook 02 measures. The run
records name the preset, so result tables group by it. Adding one is one entry in :data:`PRESETS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .methods import (Contrastive, FixMatch, MeanTeacher, Method, PiModel, SelfTraining, SoftMatch, Supervised,
                      TemporalEnsemble)
from .thresholds import AdaptiveThreshold, FixedThreshold, FreeMatchThreshold


@dataclass(frozen=True)
class Preset:
    make: Callable[[], Method]           # a fresh method (each run needs its own state)
    about: str                           # one line for tables and ``sslkit presets``
    train: dict = field(default_factory=dict)  # fit() settings the preset needs, under the caller's


def _consistency(cls, **knobs) -> Callable[[], Method]:
    """The consistency methods' noise in the book: token deletion / swap / [MASK] at 10% plus dropout."""
    return lambda: cls(noise="token", noise_rate=0.1, **knobs)


PRESETS: dict[str, Preset] = {
    "supervised": Preset(Supervised, "cross-entropy on the labeled texts"),
    "focal": Preset(Supervised, "focal loss (gamma 2) on the labeled texts", {"focal_gamma": 2.0}),
    "self_training": Preset(SelfTraining, "self-training: adaptive thresholds, top 10% per class per round"),
    "self_training_fixed": Preset(lambda: SelfTraining(threshold=FixedThreshold(tau0=0.95)),
                                  "self-training with a fixed 0.95 threshold"),
    "self_training_freematch": Preset(lambda: SelfTraining(threshold=FreeMatchThreshold()),
                                      "self-training with FreeMatch's thresholds"),
    "fixmatch": Preset(lambda: FixMatch(threshold=AdaptiveThreshold(), top_k=0.1),
                       "FixMatch with the adaptive thresholds, plus self-training's rounds"),
    "fixmatch_ema": Preset(lambda: FixMatch(threshold=AdaptiveThreshold(), top_k=0.1, ema_decay=0.99),
                           "fixmatch, also scoring an average of its weights (EMA 0.99) on dev"),
    "fixmatch_ema_teacher": Preset(lambda: FixMatch(threshold=AdaptiveThreshold(), top_k=0.1, ema_decay=0.99,
                                                    ema_teacher=True),
                                   "fixmatch_ema whose average also labels the pool (a mean teacher)"),
    "softmatch": Preset(lambda: SoftMatch(threshold=AdaptiveThreshold(), top_k=0.1, ema_decay=0.99),
                        "fixmatch_ema with SoftMatch's weights: every pool text counts, by confidence"),
    "fixmatch_fixed": Preset(lambda: FixMatch(threshold=FixedThreshold(tau0=0.5), warmup_epochs=1),
                             "FixMatch with a fixed 0.5 threshold after one supervised epoch"),
    "pi_model": Preset(_consistency(PiModel), "Π-model: two noisy passes agree (MSE)"),
    "temporal_ensemble": Preset(_consistency(TemporalEnsemble), "temporal ensembling (MSE)"),
    "temporal_ensemble_kl": Preset(_consistency(TemporalEnsemble, consistency="kl"), "temporal ensembling (KL)"),
    "temporal_ensemble_dropout": Preset(lambda: TemporalEnsemble(noise="dropout", max_weight=1.0),
                                        "temporal ensembling, dropout noise only (FastText)"),
    "mean_teacher": Preset(_consistency(MeanTeacher), "mean teacher, EMA decay 0.999"),
    "mean_teacher_0.99": Preset(_consistency(MeanTeacher, ema_decay=0.99), "mean teacher, EMA decay 0.99"),
    "focal_supcon": Preset(lambda: Contrastive(loss="simple"), "focal loss + supervised contrastive (SupCon)",
                           {"focal_gamma": 2.0}),
    "focal_focal_contrastive": Preset(lambda: Contrastive(loss="focal"), "focal loss + focal contrastive",
                                      {"focal_gamma": 2.0}),
    "focal_margin": Preset(lambda: Contrastive(loss="margin"), "focal loss + batch-all triplet margin",
                           {"focal_gamma": 2.0}),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str) -> Preset:
    """The preset of that name; an unknown name fails with the list of known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def resolve_method(method: Method | str | None, overrides: dict[str, Any]) -> tuple[Method, str, dict]:
    """(method, its name in the run record, fit() keywords) for what fit() was given: a preset's
    name (its training settings under ``overrides``), a Method, or None (supervised)."""
    if method is None:
        method = "supervised"
    if isinstance(method, str):
        chosen = preset(method)
        return chosen.make(), method, {**chosen.train, **overrides}
    return method, method.name, dict(overrides)


def presets_table():
    """Every preset as a DataFrame: name, method class and one line about it."""
    import pandas as pd

    return pd.DataFrame([{"preset": name, "method": type(p.make()).__name__, "about": p.about}
                         for name, p in PRESETS.items()])
