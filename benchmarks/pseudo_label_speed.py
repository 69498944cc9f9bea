"""Batched pool scoring + vectorised selection vs a per-example loop with batch size 1.

The original system scored its unlabeled pool one text at a time and selected pseudo-labels in a
Python loop. This benchmark runs both on the same model and the same pool in one process and
prints the ratios (and checks that they select exactly the same rows): against the loop with the
batched path's merged LoRA weights (batching alone), and against the loop with the adapters as
trained (what the original system ran).

    .venv/bin/python benchmarks/pseudo_label_speed.py --dataset banking77 --pool 2000 [--device cuda] [--json FILE]

``--device`` (default auto: CUDA when there is one) is where the model runs for both paths; on CUDA
the clocks are read after a synchronisation, so queued kernels are not left out of a path's time.
``--json FILE`` also writes the measurements as one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

import sslkit
from sslkit.devices import resolve_device
from sslkit.thresholds import AdaptiveThreshold, class_balanced_top_k

from sslkit.inference import predict_logits


def batched(model, texts, th, margin, top_k, batch_size):
    probs = torch.softmax(torch.as_tensor(predict_logits(model, texts, batch_size)), dim=-1)
    labels, _ = th.pseudo_labels(probs, margin)
    confidence = probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    return class_balanced_top_k(labels, confidence, top_k)


def per_example(model, texts, th, margin, top_k, merged=True):
    """One forward pass per text, then a Python loop over examples and classes. ``merged``: with the
    batched path's folded-in LoRA weights (batching alone is compared); False: the model as trained
    (adapters applied at every layer), as the original system ran it."""
    tau_c = th.tau_c.tolist()
    by_class: dict[int, list[tuple[float, int]]] = {}
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), (model.merged_lora() if merged else contextlib.nullcontext()):
        for i, text in enumerate(texts):
            batch = {k: v.to(device) for k, v in model.collate(model.tokenize([text])).items()}
            p = torch.softmax(model(**batch), dim=-1)[0].tolist()
            m = [p[c] - tau_c[c] for c in range(len(p))]
            j = max(range(len(m)), key=m.__getitem__)
            if m[j] > margin:
                by_class.setdefault(j, []).append((p[j], i))
    keep = []
    for rows in by_class.values():
        rows.sort(key=lambda x: -x[0])
        keep += [i for _, i in rows[:max(1, int(top_k * len(rows) + 1e-9))]]
    return torch.tensor(sorted(keep), dtype=torch.long)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="banking77")
    ap.add_argument("--pool", type=int, default=2000, help="pool examples scored by both (0: whole pool)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--top-k", type=float, default=0.1)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--device", default="auto", help="auto / cpu / cuda")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the measurements here as JSON")
    args = ap.parse_args()
    device = resolve_device(args.device)

    data = sslkit.load_dataset(args.dataset)
    budget = sslkit.split_budget(data, labeled=0.1, seed=0)
    model = sslkit.load_backbone("minilm", budget.num_classes).to(device)
    model.init_head_from_prototypes(sslkit.embed(model, budget.labeled.texts), budget.labeled.labels)
    texts = budget.unlabeled.texts[: args.pool or None]
    th = AdaptiveThreshold(budget.num_classes, tau0=1.0 / budget.num_classes)  # a permissive threshold

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn, *a, **k):
        sync()
        t0 = time.perf_counter()
        out = fn(*a, **k)
        sync()
        return out, time.perf_counter() - t0

    fast, t_batched = timed(batched, model, texts, th, args.margin, args.top_k, args.batch_size)
    slow, t_loop = timed(per_example, model, texts, th, args.margin, args.top_k)
    as_trained, t_trained = timed(per_example, model, texts, th, args.margin, args.top_k, merged=False)

    same = torch.equal(fast, slow)
    print(f"pool {len(texts)} texts, {budget.num_classes} classes, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"batched (batch {args.batch_size}) + vectorised selection: {t_batched:7.2f} s "
          f"({len(texts) / t_batched:7.1f} texts/s)")
    print(f"per-example loop (batch 1)                 : {t_loop:7.2f} s ({len(texts) / t_loop:7.1f} texts/s)")
    print(f"per-example loop, LoRA as trained (batch 1) : {t_trained:7.2f} s ({len(texts) / t_trained:7.1f} texts/s)")
    print(f"selected rows: {len(fast)} (identical: {same}; as trained: {torch.equal(fast, as_trained)})")
    print(f"ratio: {t_loop / t_batched:.1f}x (batching alone); {t_trained / t_batched:.1f}x against the loop as the "
          f"original system ran it")
    if not same:  # the same rows up to float ties; report, do not hide
        print(f"rows only in batched: {sorted(set(fast.tolist()) - set(slow.tolist()))[:10]}")
    if args.json:
        result = {"dataset": args.dataset, "pool": len(texts), "classes": budget.num_classes, "device": device,
                  "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                  "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
                  "seconds": {"batched": t_batched, "loop_merged": t_loop, "loop_as_trained": t_trained},
                  "texts_per_s": {"batched": len(texts) / t_batched, "loop_merged": len(texts) / t_loop,
                                  "loop_as_trained": len(texts) / t_trained},
                  "ratio_batching_alone": t_loop / t_batched, "ratio_vs_original": t_trained / t_batched,
                  "selected": len(fast), "identical": same, "identical_as_trained": torch.equal(fast, as_trained)}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
