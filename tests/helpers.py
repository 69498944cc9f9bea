"""Small helpers the method tests share: a one-process trainer context and a batch of each part."""
from __future__ import annotations

import torch

from sslkit.context import Context
from sslkit.trainer import TrainConfig


class OneProcess:
    """The part of an accelerate Accelerator a method's step reads, as on one process."""

    num_processes = 1
    is_main_process = True

    @staticmethod
    def unwrap_model(model):
        return model


def one_process_ctx(model, budget, **fields) -> Context:
    """A trainer context for calling a method's loss directly."""
    return Context(model=model, accelerator=OneProcess(), budget=budget, config=TrainConfig(),
                   num_classes=budget.num_classes, **fields)


def parts(model, budget, n_labeled: int = 4, n_unlabeled: int = 8) -> tuple[dict, dict]:
    """(labeled part with labels and idx, unlabeled part with idx) from the budget's first texts."""
    lab = model.collate(model.tokenize(budget.labeled.texts[:n_labeled]))
    lab["labels"] = torch.as_tensor(budget.labeled.labels[:n_labeled])
    lab["idx"] = torch.as_tensor(budget.labeled.idx[:n_labeled])
    unl = model.collate(model.tokenize(budget.unlabeled.texts[:n_unlabeled]))
    unl["idx"] = torch.as_tensor(budget.unlabeled.idx[:n_unlabeled])
    return lab, unl


def noiseless_parts(model, budget, monkeypatch) -> tuple[dict, dict, torch.Tensor]:
    """(labeled part, unlabeled part, float logits of the unlabeled texts) with dropout off and
    FixMatch's strong view made the identity, so a test recomputes the unlabeled term directly."""
    from sslkit.methods import fixmatch as fixmatch_module

    model.eval()
    monkeypatch.setattr(fixmatch_module, "model_token_noise", lambda model, ids, attn, rate: (ids, attn))
    lab, unl = parts(model, budget)
    with torch.no_grad():
        logits = model(input_ids=unl["input_ids"], attention_mask=unl["attention_mask"]).float()
    return lab, unl, logits
