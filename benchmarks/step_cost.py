"""Per-step cost of the consistency methods relative to supervised training, measured in one run.

    .venv/bin/python benchmarks/step_cost.py [--steps 12] [--dataset banking77] [--batch 32]

Every method runs optimiser steps (loss, backward, AdamW step, its after_step hook) on the same
batches of banking77 at the default backbone (all-MiniLM-L6-v2 + LoRA r=16), with its consistency
term fully on. The batches are the trainer's own: length-grouped (``TrainConfig.group_by_length``,
:func:`sslkit.sampling.length_grouped_batches`) from the labeled set and, separately, from the pool, so
a batch pads to about its own texts' length as in training (random batches of 32 are ~32% real tokens,
grouped ones ~89%: timing random ones would price padding, not the methods). Every method runs each of
the ``--steps`` batches once, methods taking turns in blocks of 3 so that machine noise hits all of them
alike; the mean step time (an epoch's average) is reported.

Two comparisons are printed (FixMatch, with three unlabeled texts per labeled one, as the
``fixmatch_fixed`` preset trains, is priced against the same two):
* equal examples per step (Laine & Aila's setting: a minibatch mixes labeled and unlabeled examples):
  supervised on 2B labeled examples vs each method on B labeled + B unlabeled;
* as the notebooks train: supervised on B labeled vs each method on B labeled + B unlabeled.
Temporal ensembling's end-of-epoch Z update (from the steps' own outputs) is timed separately and
amortised over one epoch's steps. Memory: the mean teacher's extra state against the trainable
parameters and a full copy of the model; temporal ensembling's Z.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="banking77")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=24, help="measured steps (batches) per method, in blocks of 3")
    ap.add_argument("--noise", default="token", choices=["dropout", "token", "fgm"])
    args = ap.parse_args()

    from accelerate import Accelerator

    import sslkit
    from sslkit.context import Context
    from sslkit.methods import MeanTeacher, PiModel, Supervised, TemporalEnsemble
    from sslkit.presets import preset
    from sslkit.sampling import length_grouped_batches
    from sslkit.trainer import TrainConfig

    data = sslkit.load_dataset(args.dataset)
    budget = sslkit.split_budget(data, labeled=0.1, seed=0)
    model = sslkit.load_backbone("minilm", budget.num_classes, lora={"r": 16, "alpha": 32}, seed=0)
    model.train()
    acc = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    B = args.batch
    rng = np.random.default_rng(0)
    group_by_length = TrainConfig().group_by_length

    lab_ids, pool_ids = model.tokenize(budget.labeled.texts), model.tokenize(budget.unlabeled.texts)
    n_batches = args.steps

    def grouped(ds, ids, n, labeled):
        """``n_batches`` of the trainer's length-grouped batches of ``n`` rows (full ones; as many passes as needed)."""
        lengths = [len(x) for x in ids]
        order: list[list[int]] = []
        while len(order) < n_batches:
            order += [b for b in length_grouped_batches(lengths, n, group_by_length, rng) if len(b) == n]
        out = []
        for rows in order[:n_batches]:
            b = model.collate([ids[i] for i in rows])
            b["idx"] = torch.as_tensor(ds.idx[rows])
            if labeled:
                b["labels"] = torch.as_tensor(ds.labels[rows])
                b["weights"] = torch.ones(n)
            out.append(b)
        return out

    # the head from class prototypes, as fit() starts it: confidences as in training, so the share of
    # rows past the FixMatch-style threshold (which decides how many the student's pass sees) is real
    model.init_head_from_prototypes(sslkit.embed(model, budget.labeled.texts), budget.labeled.labels)
    model.train()
    lab_b = grouped(budget.labeled, lab_ids, B, True)
    unl_b, unl_3b = grouped(budget.unlabeled, pool_ids, B, False), grouped(budget.unlabeled, pool_ids, 3 * B, False)
    mixed = [{"labeled": l, "unlabeled": u} for l, u in zip(lab_b, unl_b)]
    mixed3 = [{"labeled": l, "unlabeled": u} for l, u in zip(lab_b, unl_3b)]
    sup_b = [{"labeled": l, "unlabeled": None} for l in lab_b]
    sup_2b = [{"labeled": l, "unlabeled": None} for l in grouped(budget.labeled, lab_ids, 2 * B, True)]

    def real_share(batch: dict) -> float:
        """Real (unpadded) tokens / padded positions over a step's parts."""
        masks = [p["attention_mask"] for p in (batch["labeled"], batch["unlabeled"]) if p is not None]
        return sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    real = {name: float(np.mean([real_share(b) for b in bs]))
            for name, bs in (("B", sup_b), ("2B", sup_2b), ("B+B", mixed), ("B+3B", mixed3))}

    steps_per_epoch = int(np.ceil(len(budget.labeled) / B))
    ctx = Context(model=model, accelerator=acc, budget=budget, config=TrainConfig(), num_classes=budget.num_classes,
                  steps_per_epoch=steps_per_epoch, total_steps=10 * steps_per_epoch, step=5 * steps_per_epoch,
                  epoch=5)
    methods = {
        "supervised (B)": (Supervised(), sup_b),
        "supervised (2B)": (Supervised(), sup_2b),
        "pi_model": (PiModel(noise=args.noise, rampup_epochs=0), mixed),
        "temporal_ensemble": (TemporalEnsemble(noise=args.noise, rampup_epochs=0), mixed),
        "mean_teacher": (MeanTeacher(noise=args.noise, rampup_epochs=0), mixed),
        # the fixmatch_fixed preset: B labeled + 3B unlabeled, the weak view without dropout, labels
        # where its confidence passes 0.5 (the others are not forwarded), the strong view at 20% token noise
        "fixmatch (B+3B)": (preset("fixmatch_fixed").make(), mixed3),
    }
    for m, _ in methods.values():
        m.setup(ctx)
    te = methods["temporal_ensemble"][0]
    te.updates[:] = 1
    te.Z[:] = 1.0 / budget.num_classes

    def step(method, batch):
        out = method.loss(batch, ctx)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(ctx)

    times: dict[str, list[float]] = {k: [] for k in methods}
    for k, (m, batches) in methods.items():  # warm-up (not timed)
        step(m, batches[0])
    for start in range(0, n_batches, 3):
        for k, (m, batches) in methods.items():
            for i in range(start, min(start + 3, n_batches)):
                t0 = time.perf_counter()
                step(m, batches[i])
                times[k].append(time.perf_counter() - t0)
    mean_s = {k: statistics.fmean(v) for k, v in times.items()}

    t0 = time.perf_counter()
    te.after_epoch(ctx)
    te_update = time.perf_counter() - t0

    print(f"{args.dataset} 10%: {len(budget.labeled)} labeled, {len(budget.unlabeled)} pool; B={B}; noise={args.noise}; "
          f"torch threads={torch.get_num_threads()}; mean of {n_batches} length-grouped batches each (real tokens: "
          + ", ".join(f"{k} {v:.0%}" for k, v in real.items()) + ")")
    print(f"{'method':<20}{'s/step':>9}{'vs sup 2B (equal examples)':>29}{'vs sup B (as trained)':>24}")
    for k in methods:
        print(f"{k:<20}{mean_s[k]:>9.3f}{mean_s[k] / mean_s['supervised (2B)']:>28.2f}x{mean_s[k] / mean_s['supervised (B)']:>23.2f}x")
    amort = te_update / steps_per_epoch
    print(f"temporal_ensemble end-of-epoch Z update: {te_update * 1000:.0f} ms -> "
          f"{(mean_s['temporal_ensemble'] + amort) / mean_s['supervised (2B)']:.2f}x (equal examples), "
          f"{(mean_s['temporal_ensemble'] + amort) / mean_s['supervised (B)']:.2f}x (as trained) amortised")

    mt = methods["mean_teacher"][0]
    trainable_mb = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2**20
    full_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"mean teacher extra memory: {mt.memory_mb:.2f} MB = {mt.memory_mb / trainable_mb:.2f}x the trainable "
          f"parameters ({trainable_mb:.2f} MB); a full model copy would be {full_mb:.1f} MB")
    print(f"temporal ensemble Z: {te.memory_mb:.2f} MB ({te.Z.shape[0]} x {te.Z.shape[1]} float32 + counts)")


if __name__ == "__main__":
    main()
