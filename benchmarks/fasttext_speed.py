"""FastText backbone speed: one training epoch over all of banking77's train set, and inference.

Trains one epoch through ``sslkit.fit`` with :data:`sslkit.backbones.fasttext.TRAIN_DEFAULTS` on the
labeled=1.0 budget (9,003 texts; an epoch is ceil(n / batch_size) optimiser steps) and prints the
trainer's epoch seconds and train samples/s, then inference samples/s on the test split: cold
(hashing + forward) and warm (n-gram ids cached, forward only).

    .venv/bin/python benchmarks/fasttext_speed.py --threads 2
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import sslkit
from sslkit.backbones import fasttext
from sslkit.backbones.fasttext import TRAIN_DEFAULTS, load_fasttext
from sslkit.inference import predict_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="banking77")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the acceptance: 2 cores)")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SSLKIT_PROGRESS", "0")

    data = sslkit.load_dataset(args.dataset)
    budget = sslkit.split_budget(data, labeled=1.0, seed=0)
    model = load_fasttext(budget.num_classes, seed=0)
    train = {**TRAIN_DEFAULTS, "epochs": args.epochs}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        result = sslkit.fit(model, budget, sslkit.methods.Supervised(), **train, seed=0,
                            run_dir=run_dir, progress=False, save_checkpoint=False)
    wall = time.time() - t0
    epoch_s = result.history["epoch_seconds"].dropna()
    s = result.summary
    print(f"backbone: fasttext {model.info.extra} max_length={model.info.max_length}")
    print(f"train: {args.dataset} {s['n_labeled']} texts, batch {train['batch_size']}, "
          f"{model.num_parameters(trainable=True):,} trainable parameters, {torch.get_num_threads()} threads")
    print(f"epoch seconds: {', '.join(f'{x:.2f}' for x in epoch_s)} (mean {epoch_s.mean():.2f})")
    print(f"train samples/s: {s['train_samples_per_second']:.0f}")
    print(f"fit wall seconds (hashing, {args.epochs} epoch(s), dev + test evaluation): {wall:.1f}")

    texts = budget.test.texts
    final = result.model.eval()
    fasttext.clear_cache()
    t0 = time.time()
    predict_logits(final, texts, batch_size=128)
    cold = time.time() - t0
    t0 = time.time()
    predict_logits(final, texts, batch_size=128)
    warm = time.time() - t0
    print(f"inference samples/s on {len(texts)} test texts: {len(texts) / cold:.0f} cold "
          f"(hashing + forward), {len(texts) / warm:.0f} warm (ids cached)")
    print(f"test accuracy after {args.epochs} epoch(s): {s['test']['accuracy']:.4f}")


if __name__ == "__main__":
    main()
