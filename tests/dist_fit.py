"""One tiny fit() per method, for tests/test_distributed.py: run once in one process (the test
calls :func:`run`) and once under ``accelerate launch --multi_gpu --num_processes 2`` (two CPU
processes, gloo; ``--cpu`` alone would start a single process in accelerate 1.15).

    accelerate launch --multi_gpu --num_processes 2 ... tests/dist_fit.py OUT --batch-size 8 [--backbone PATH]

Per-process batch size: the one-process run uses 16, the two-process run 8, so both take the same
global batch (16) and the same number of steps; with dropout off, the supervised runs see the
same examples per step and average the same gradients. Writes OUT/results.json (main process) with
the dev and test metrics of each method, and OUT/<method>_seen_<rank>.json: the labeled example
indices each process trained on, per epoch; for the supervised run also OUT/supervised_weights_<rank>.pt,
the trainable weights (LoRA + head) as each step found them, so the test can check that the gradient
sync makes two processes take the same steps as one. ``--backbone``: "minilm" by default; the test
passes tests/conftest.py's tiny random encoder (this checks the mechanics, not what a model learns).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, whatever the cwd

import sslkit  # noqa: E402
from sslkit.methods import Supervised, TemporalEnsemble  # noqa: E402
from sslkit.methods.contrastive import Contrastive  # noqa: E402
from sslkit.trainer import fit  # noqa: E402

EPOCHS = 2


def recording(cls):
    """The method, remembering which labeled examples (global idx) each step trained on."""

    class Recording(cls):
        keep_weights = False  # also keep the trainable weights each step starts from

        def setup(self, ctx):
            super().setup(ctx)
            self.seen = {}
            self.weights = []

        def loss(self, batch, ctx):
            self.seen.setdefault(ctx.epoch, []).extend(int(i) for i in batch["labeled"]["idx"])
            if self.keep_weights:
                self.weights.append({n: p.detach().cpu().clone()
                                     for n, p in ctx.unwrapped_model.named_parameters() if p.requires_grad})
            return super().loss(batch, ctx)

    Recording.__name__ = cls.__name__
    return Recording


def no_dropout(model):
    """p = 0 in every dropout (encoder and LoRA): runs differ only by how the work is split."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def run(out: str | Path, batch_size: int = 16, threads: int | None = 1, backbone: str = "minilm") -> dict:
    """Every method's fit; ``threads``: torch intra-op threads meanwhile (1: no oversubscription
    while the two-process run shares the cores), restored afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(Path(out), batch_size, str(backbone))
    finally:
        torch.set_num_threads(previous)


def _run(out: Path, batch_size: int, backbone: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)

    # 3 labels x 16 classes = 48 = 3 global batches of 16: no short last batch, which accelerate
    # would pad with recycled examples on two processes (even_batches) but not on one
    data = sslkit.load_dataset("mcid").subsample(train=96, dev=48, test=48, seed=0)
    budget = sslkit.split_budget(data, per_class=3, seed=0)
    # supervised: plain shuffled batches, so one and two processes train on the same examples per
    # step; "grouped": the default batches of similar lengths, dealt whole to the processes;
    # temporal ensembling with Z from the steps' outputs, gathered from every process
    supervised = recording(Supervised)()
    supervised.keep_weights = True
    methods = {"supervised": (supervised, {"group_by_length": 0}),
               "grouped": (recording(Supervised)(), {}),
               "contrastive": (recording(Contrastive)(loss="simple", k=4, projection=16), {}),
               "temporal_ensemble": (recording(TemporalEnsemble)(rampup_epochs=0),
                                     {"group_by_length": 0})}
    results = {}
    rank = int(os.environ.get("RANK", "0"))
    for name, (method, options) in methods.items():
        model = no_dropout(sslkit.load_backbone(backbone, budget.num_classes, lora={"r": 4, "alpha": 8},
                                                max_length=32))
        result = fit(model, budget, method, epochs=EPOCHS, batch_size=batch_size, eval_batch_size=64,
                     device="cpu", progress=False, save_checkpoint=False, log_every=1,
                     run_dir=str(out / f"run-{name}"), **options)
        (out / f"{name}_seen_{rank}.json").write_text(json.dumps(method.seen))
        if method.keep_weights:
            torch.save(method.weights, out / f"{name}_weights_{rank}.pt")
        if isinstance(method, TemporalEnsemble):
            torch.save({"Z": method.Z, "updates": method.updates}, out / f"{name}_z_{rank}.pt")
        results[name] = {"dev": result.dev, "test": result.test,
                         "num_processes": result.summary["num_processes"],
                         "n_labeled": len(budget.labeled), "steps": int(result.history["step"].max())}
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone", default="minilm", help='"minilm" or a local model folder')
    args = parser.parse_args()
    run(args.out, args.batch_size, backbone=args.backbone)


if __name__ == "__main__":
    main()
