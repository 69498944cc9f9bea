"""Training-step time with torch's CPU dropout vs sslkit.dropout's numpy-drawn masks, measured in one run.

    .venv/bin/python benchmarks/dropout_speed.py [--steps 12] [--batch 32] [--dataset banking77] [--random]

Two copies of the default backbone (all-MiniLM-L6-v2 + LoRA r=16, same seed), one loaded with
``fast_dropout=True`` (the default for pretrained backbones) and one with ``fast_dropout=False``
(torch's), take turns in blocks of 3 on the same banking77 batches — texts of similar lengths, as the
trainer groups them (``--random``: rows drawn at random, padded to the longest): a supervised optimiser
step (cross-entropy, backward, AdamW) and a forward in training mode without gradients (the weak view /
target pass of the SSL methods). Medians and their ratio are printed; the eval-mode forward is printed as
the floor (no dropout at all).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="banking77")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12, help="measured steps per variant (in blocks of 3)")
    ap.add_argument("--random", action="store_true", help="random rows instead of batches of similar lengths")
    args = ap.parse_args()

    import sslkit

    data = sslkit.load_dataset(args.dataset)
    budget = sslkit.split_budget(data, labeled=0.1, seed=0)
    models = {name: sslkit.load_backbone("minilm", budget.num_classes, lora={"r": 16, "alpha": 32}, seed=0,
                                         fast_dropout=name == "fast")
              for name in ("torch", "fast")}
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for k, m in models.items()}
    rng = np.random.default_rng(0)
    tok = models["torch"].tokenize(list(budget.labeled.texts))
    batches = []
    by_length = np.argsort([len(t) for t in tok], kind="stable")
    for _ in range(args.steps + 3):
        if args.random:
            rows = rng.choice(len(tok), args.batch, replace=False)
        else:  # a window of the length order, as in the trainer's grouped batches
            start = rng.integers(0, len(tok) - args.batch)
            rows = by_length[start:start + args.batch]
        b = models["torch"].collate([tok[i] for i in rows])
        b["labels"] = torch.as_tensor(budget.labeled.labels[rows])
        batches.append(b)

    def step(name, b):
        m, opt = models[name], opts[name]
        m.train()
        loss = F.cross_entropy(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]), b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward(name, b, train=True):
        m = models[name]
        m.train(train)
        with torch.no_grad():
            m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    times = {(kind, name): [] for kind in ("step", "train forward", "eval forward") for name in models}
    for name in models:  # warm-up
        step(name, batches[-1]), forward(name, batches[-1])
    for start in range(0, args.steps, 3):
        for name in models:
            for b in batches[start:start + 3]:
                for kind, fn in (("step", lambda: step(name, b)), ("train forward", lambda: forward(name, b)),
                                 ("eval forward", lambda: forward(name, b, train=False))):
                    t = time.perf_counter()
                    fn()
                    times[kind, name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = statistics.mean(b["input_ids"].numel() for b in batches[:args.steps])
    print(f"{args.dataset}, {'random' if args.random else 'length-grouped'} batches of {args.batch} "
          f"(~{tokens:.0f} tokens incl. padding), {args.steps} steps per variant, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':16s}{'torch dropout':>15s}{'fast dropout':>15s}{'speed-up':>10s}")
    for kind in ("step", "train forward"):
        a, b = med[kind, "torch"], med[kind, "fast"]
        print(f"{kind:16s}{a * 1e3:13.0f}ms{b * 1e3:13.0f}ms{a / b:9.2f}x")
    print(f"{'eval forward':16s}{med['eval forward', 'torch'] * 1e3:13.0f}ms  (no dropout: the floor)")


if __name__ == "__main__":
    main()
