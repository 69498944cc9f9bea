"""Per-step cost of the consistency methods relative to supervised training, measured in one run.

    .venv/bin/python benchmarks/step_cost.py [--steps 12] [--dataset banking77] [--batch 32]

Every method runs optimiser steps (loss, backward, AdamW step, its after_step hook) on the same
batches of banking77 at the default backbone (all-MiniLM-L6-v2 + LoRA r=16), with its consistency
term fully on. Methods take turns in short blocks so that machine noise hits all of them alike; the
median step time is reported.

Two comparisons are printed (notebook 03's FixMatch-style Π-model row, with three unlabeled texts per
labeled one, is priced against the same two):
* equal examples per step (Laine & Aila's setting: a minibatch mixes labeled and unlabeled examples):
  supervised on 2B labeled examples vs each method on B labeled + B unlabeled;
* as the notebooks train: supervised on B labeled vs each method on B labeled + B unlabeled.
Temporal ensembling's end-of-epoch work is timed separately and amortised over one epoch's steps:
a pass over the whole training set for ``z_update="pass"``, only the Z update from the steps' own
outputs for ``z_update="steps"`` (the default, Laine & Aila's scheme). Memory: the mean teacher's extra state against the trainable parameters and
a full copy of the model; temporal ensembling's Z.
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
    ap.add_argument("--steps", type=int, default=12, help="measured steps per method (in blocks of 3)")
    ap.add_argument("--noise", default="token", choices=["dropout", "token", "fgm"])
    args = ap.parse_args()

    from accelerate import Accelerator

    import sslkit
    from sslkit.methods import MeanTeacher, PiModel, Supervised, TemporalEnsemble
    from sslkit.trainer import Context, TrainConfig

    data = sslkit.load_dataset(args.dataset)
    budget = sslkit.split_budget(data, labeled=0.1, seed=0)
    model = sslkit.load_backbone("minilm", budget.num_classes, lora={"r": 16, "alpha": 32}, seed=0)
    model.train()
    acc = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    B = args.batch
    rng = np.random.default_rng(0)

    def part(ds, n, labeled):
        rows = rng.choice(len(ds), n, replace=False)
        b = model.collate(model.tokenize([ds.texts[i] for i in rows]))
        b["idx"] = torch.as_tensor(ds.idx[rows])
        if labeled:
            b["labels"] = torch.as_tensor(ds.labels[rows])
            b["weights"] = torch.ones(n)
        return b

    n_batches = 8
    # the head from class prototypes, as fit() starts it: confidences as in training, so the share of
    # rows past the FixMatch-style threshold (which decides how many the student's pass sees) is real
    model.init_head_from_prototypes(sslkit.embed(model, budget.labeled.texts), budget.labeled.labels)
    model.train()
    mixed3 = [{"labeled": part(budget.labeled, B, True), "unlabeled": part(budget.unlabeled, 3 * B, False)}
              for _ in range(n_batches)]
    mixed = [{"labeled": part(budget.labeled, B, True), "unlabeled": part(budget.unlabeled, B, False)}
             for _ in range(n_batches)]
    sup_b = [{"labeled": part(budget.labeled, B, True), "unlabeled": None} for _ in range(n_batches)]
    sup_2b = [{"labeled": part(budget.labeled, 2 * B, True), "unlabeled": None} for _ in range(n_batches)]

    steps_per_epoch = int(np.ceil(len(budget.labeled) / B))
    ctx = Context(model=model, accelerator=acc, budget=budget, config=TrainConfig(), num_classes=budget.num_classes,
                  steps_per_epoch=steps_per_epoch, total_steps=10 * steps_per_epoch, step=5 * steps_per_epoch,
                  train_set=_TrainSetView(model, budget), pool=_PoolView(model, budget))
    methods = {
        "supervised (B)": (Supervised(), sup_b),
        "supervised (2B)": (Supervised(), sup_2b),
        "pi_model": (PiModel(noise=args.noise, rampup_epochs=0), mixed),
        "temporal_ensemble": (TemporalEnsemble(noise=args.noise, rampup_epochs=0, z_update="pass"), mixed),
        "temporal_ens_steps": (TemporalEnsemble(noise=args.noise, rampup_epochs=0, z_update="steps"), mixed),
        "mean_teacher": (MeanTeacher(noise=args.noise, rampup_epochs=0), mixed),
        # notebook 03's pi_model_fixmatch: B labeled + 3B unlabeled, clean target pass without dropout,
        # hard targets at 0.5 on the unlabeled rows (those below are not forwarded), 20% token noise
        "pi_fixmatch (B+3B)": (PiModel(noise="token", noise_rate=0.2, consistency="ce", threshold=0.5,
                                       noise_labeled=False, noise_target=False, target_dropout=False,
                                       labeled_consistency=False, rampup_epochs=0, max_weight=1.0), mixed3),
    }
    for m, _ in methods.values():
        m.setup(ctx)
    te, te_steps = methods["temporal_ensemble"][0], methods["temporal_ens_steps"][0]
    for m in (te, te_steps):
        m.updates[:] = 1
        m.Z[:] = 1.0 / budget.num_classes

    def step(method, batch):
        out = method.loss(batch, ctx)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(ctx)

    times: dict[str, list[float]] = {k: [] for k in methods}
    for k, (m, batches) in methods.items():  # warm-up
        step(m, batches[0])
    for block in range(max(1, args.steps // 3)):
        for k, (m, batches) in methods.items():
            for i in range(3):
                t0 = time.perf_counter()
                step(m, batches[(block * 3 + i) % n_batches])
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    t0 = time.perf_counter()
    te.after_epoch(ctx)
    te_pass = time.perf_counter() - t0
    t0 = time.perf_counter()
    te_steps.after_epoch(ctx)
    te_steps_update = time.perf_counter() - t0

    print(f"{args.dataset} 10%: {len(budget.labeled)} labeled, {len(budget.unlabeled)} pool; B={B}; noise={args.noise}; "
          f"torch threads={torch.get_num_threads()}; median of {len(times['pi_model'])} steps each")
    print(f"{'method':<20}{'s/step':>9}{'vs sup 2B (equal examples)':>29}{'vs sup B (as trained)':>24}")
    for k in methods:
        print(f"{k:<20}{med[k]:>9.3f}{med[k] / med['supervised (2B)']:>28.2f}x{med[k] / med['supervised (B)']:>23.2f}x")
    amort = te_pass / steps_per_epoch
    print(f"temporal_ensemble (z_update='pass') end-of-epoch pass over {len(budget.labeled) + len(budget.unlabeled)} "
          f"examples: {te_pass:.1f} s = {amort:.3f} s per step over a {steps_per_epoch}-step epoch -> "
          f"{(med['temporal_ensemble'] + amort) / med['supervised (2B)']:.2f}x (equal examples), "
          f"{(med['temporal_ensemble'] + amort) / med['supervised (B)']:.2f}x (as trained) amortised")
    amort_s = te_steps_update / steps_per_epoch
    print(f"temporal_ensemble (z_update='steps', the paper's: z from the training passes) end-of-epoch Z update: "
          f"{te_steps_update * 1000:.0f} ms -> {(med['temporal_ens_steps'] + amort_s) / med['supervised (2B)']:.2f}x "
          f"(equal examples), {(med['temporal_ens_steps'] + amort_s) / med['supervised (B)']:.2f}x (as trained) amortised")

    mt = methods["mean_teacher"][0]
    trainable_mb = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2**20
    full_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"mean teacher extra memory: {mt.memory_mb:.2f} MB = {mt.memory_mb / trainable_mb:.2f}x the trainable "
          f"parameters ({trainable_mb:.2f} MB); a full model copy would be {full_mb:.1f} MB")
    print(f"temporal ensemble Z: {te.memory_mb:.2f} MB ({te.Z.shape[0]} x {te.Z.shape[1]} float32 + counts)")


class _TrainSetView:
    def __init__(self, model, budget):
        self.ids, self.idx = model.tokenize(budget.labeled.texts), budget.labeled.idx


class _PoolView:
    def __init__(self, model, budget):
        self.tok, self.idx = model.tokenize(budget.unlabeled.texts), budget.unlabeled.idx


if __name__ == "__main__":
    main()
