"""Batched inference for scoring: logits of texts in input order, and a labeled split's metrics.

One process runs :func:`sslkit.backbones.embed` (length-sorted batches, LoRA folded in), the same
path a reloaded checkpoint takes, so a run's recorded scores and a reloaded model's agree exactly.
Several processes shard the texts and gather the logits back into input order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .backbones import Backbone, embed
from .batches import TokenizedSet, collate_fn
from .data import TextDataset
from .metrics import classification_metrics


def predict_logits(model: Backbone, texts: Sequence[str], batch_size: int = 128,
                   accelerator=None) -> np.ndarray:
    """Logits [N, C] for ``texts`` in input order."""
    if accelerator is None or accelerator.num_processes == 1:
        _, logits = embed(model, texts, batch_size=batch_size, return_logits=True)
        return logits
    ids = model.tokenize(texts)
    loader = torch.utils.data.DataLoader(TokenizedSet(ids, np.arange(len(ids)), None), batch_size=batch_size,
                                         collate_fn=collate_fn(model))
    loader = accelerator.prepare_data_loader(loader)
    model.eval()
    out_logits, out_idx = [], []
    with torch.no_grad(), model.merged_lora():
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits, idx = accelerator.gather_for_metrics((logits.float(), batch["idx"]))
            out_logits.append(logits.cpu())
            out_idx.append(idx.cpu())
    model.train()
    logits = torch.cat(out_logits).numpy()
    result = np.zeros_like(logits)
    result[torch.cat(out_idx).numpy()] = logits
    return result


def evaluate(model: Backbone, dataset: TextDataset, batch_size: int = 128, accelerator=None) -> dict:
    """accuracy / macro-F1 on a labeled split, plus the raw predictions (blank labels in a user's
    dev/test file are predicted but not scored)."""
    logits = predict_logits(model, dataset.texts, batch_size, accelerator)
    probs = torch.softmax(torch.as_tensor(logits), dim=-1).numpy()
    pred = probs.argmax(1)
    known = dataset.labels >= 0
    metrics = classification_metrics(dataset.labels[known], pred[known], dataset.label_names)
    return {"metrics": metrics, "pred": pred, "confidence": probs.max(1), "probs": probs}
