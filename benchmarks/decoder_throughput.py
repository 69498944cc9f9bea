"""LoRA training throughput of a Qwen3-1.7B-shaped decoder: sslkit's training step against transformers' Trainer.

    python3 benchmarks/decoder_throughput.py [--batch 32] [--steps 20] [--out result.json]   # CUDA only
    .venv/bin/python benchmarks/decoder_throughput.py --tiny                                 # CPU check: 2 layers, hidden 64

The model has Qwen3-1.7B's shape (hidden 2048, 28 layers, 16 query / 8 key-value heads of 128, MLP
6144, vocabulary 151,936, tied embeddings) and random weights, so nothing is downloaded. It is saved
once, with a small stand-in tokenizer, to a temporary folder, and both sides load that same checkpoint
with ``dtype=bfloat16``; both put LoRA r=16 (alpha 32, dropout 0.1) on q/k/v/o_proj with peft, and
both train on the same batches in the same order: ``warmup + steps`` batches of ``--batch`` random
token ids of length 64 with a full attention mask and random labels (77 classes).

* sslkit: :func:`sslkit.load_backbone` (last-token pooling, cosine head; peft keeps the adapters in
  float32 over the bf16 base, its default ``autocast_adapter_dtype``) and the step of
  :func:`sslkit.fit`, rebuilt here from the same parts: an :class:`accelerate.Accelerator` with
  ``mixed_precision`` from :func:`sslkit.devices.resolve_precision` (``"auto"``: bf16 on a bf16 GPU),
  which wraps the forward in ``torch.autocast(bfloat16)`` and casts outputs to float32; the
  method's loss (``Supervised().loss`` with the trainer's :class:`~sslkit.context.Context`:
  cross-entropy), ``accelerator.backward``, gradient clipping at 1.0, torch's AdamW (not fused;
  weight decay 0.01, head and LoRA groups at lr 2e-3), the cosine schedule with 10% warm-up,
  ``zero_grad(set_to_none=True)`` and the loss read back to the host every step, as fit() logs it
  (a synchronisation per step). Batches come through ``accelerator.prepare_data_loader``.
* transformers: ``AutoModelForSequenceClassification`` (its linear ``score`` head, in the
  checkpoint's bf16, trained through peft's ``modules_to_save``; adapters in float32 as above) +
  ``get_peft_model`` + ``Trainer`` with ``bf16=True``. The Trainer
  does not cast the model for training (only ``bf16_full_eval`` would): ``bf16=True`` becomes
  accelerate's ``mixed_precision="bf16"``, the same autocast wrapper as above, over the bf16
  weights it was given. Same optimiser settings (``optim="adamw_torch"``, torch's AdamW as above,
  rather than the Trainer's fused default; lr, decay, warm-up, schedule, clipping), the batches in
  order (a sequential sampler), no evaluation, no saving, and the loss read back once, at the
  last step's log.

Weights, adapters and autocast are thus the same on both sides; what differs is the loop around the
step, the pooling/head and the per-step loss read-back. Throughput counts the ``steps`` timed steps
after ``warmup`` untimed ones (CUDA synchronised at both ends); peak memory is
``torch.cuda.max_memory_allocated`` from loading the model to the last step, weights included.

FLOP utilisation: a step costs ``4 * N * B * T`` FLOPs, with N the parameters of the frozen linear
layers of the decoder blocks (q, k, v, o, gate, up, down: 1.41e9 at the real size; no embeddings,
norms or head), B*T the tokens of a step, 2 FLOPs per parameter and token for the forward pass and
2 for the backward pass's activation gradients (frozen weights get no weight gradients). Attention
scores (~0.5% at T=64), LoRA's own products (~1%) and layer 0's unneeded input gradient are left
out. Achieved FLOP/s over the rate of one large matrix product of the same dtype measured in this
process (8192^3 on CUDA, 1024^3 with --tiny) is the utilisation.

Prints one JSON object; ``--out FILE`` writes it too.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REAL = dict(vocab_size=151936, hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, intermediate_size=6144, tie_word_embeddings=True,
            max_position_embeddings=40960, rms_norm_eps=1e-6)
TINY = dict(REAL, vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, intermediate_size=128)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA = {"r": 16, "alpha": 32, "dropout": 0.1}
DTYPES = {"bf16": torch.bfloat16, "no": torch.float32}


def block_linear_params(cfg: dict) -> int:
    """N of the FLOP count: the frozen linear weights of the decoder blocks."""
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    attn = h * hd * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])  # q, o and k, v
    mlp = 3 * h * cfg["intermediate_size"]
    return cfg["num_hidden_layers"] * (attn + mlp)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def matmul_tflops(n: int, dtype: torch.dtype, device: str, reps: int = 10) -> float:
    """FLOP/s (in TFLOP/s) of an n x n x n product: the roof the utilisation is measured against."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def save_checkpoint(folder: Path, cfg: dict, dtype: torch.dtype, device: str) -> None:
    """A random Qwen3 of shape ``cfg`` and a tiny word-level tokenizer (pad id 0) saved to ``folder``:
    what load_backbone and from_pretrained read on both sides. Weights are drawn on ``device``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModel, PreTrainedTokenizerFast, Qwen3Config

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(61)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(Qwen3Config(pad_token_id=0, eos_token_id=1, **cfg), dtype=dtype)
    model.save_pretrained(folder)
    del model


def make_batches(n_rows: int, seq: int, vocab: int, num_labels: int) -> dict[str, torch.Tensor]:
    """Random token ids (never the pad id 0, so both poolings pick the last position) and labels."""
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(3, vocab, (n_rows, seq), generator=g),
            "attention_mask": torch.ones(n_rows, seq, dtype=torch.long),
            "labels": torch.randint(0, num_labels, (n_rows,), generator=g)}


class Rows(torch.utils.data.Dataset):
    """Row i of every tensor, as a dict (what both loaders batch)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["labels"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def run_sslkit(folder: Path, data: dict, args, device: str, precision: str) -> dict:
    """sslkit's side: load_backbone + the step of fit() (see the module docstring)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    import sslkit

    from sslkit.context import Context
    cfg = sslkit.TrainConfig()
    reset_memory(device)
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    set_seed(0)
    model = sslkit.load_backbone(str(folder), args.labels, lora=LORA, dtype=args.dtype_name,
                                 max_length=args.seq, seed=0)
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW([{"params": head_params, "lr": cfg.head_lr or cfg.lr},
                                   {"params": body_params, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    total = args.warmup + args.steps
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
    pmodel, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(Rows(data), batch_size=args.batch, shuffle=False))
    method = sslkit.methods.Supervised()
    ctx = Context(model=pmodel, accelerator=accelerator, budget=None, config=cfg, num_classes=args.labels)
    pmodel.train()
    losses, t0 = [], None
    trainable = [p for p in pmodel.parameters() if p.requires_grad]
    for step, batch in enumerate(loader):
        out = method.loss({"labeled": batch, "unlabeled": None}, ctx)
        accelerator.backward(out["loss"])
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out["loss"].detach())  # read after the clock stops, as the trainer reads it per log line
        if step + 1 == args.warmup:  # the clock starts where the Trainer's callback starts it
            sync(device)
            t0 = time.perf_counter()
    sync(device)
    seconds = time.perf_counter() - t0
    losses = [float(x) for x in losses]
    lora = next(p for n, p in model.named_parameters() if "lora_A" in n)
    base = model.encoder.get_input_embeddings().weight
    result = {"seconds": seconds, "peak_memory_gib": peak_memory_gib(device),
              "trainable_params": model.num_parameters(trainable=True),
              "base_dtype": str(base.dtype), "lora_dtype": str(lora.dtype),
              "head_dtype": str(model.head.weight.dtype), "mixed_precision": accelerator.mixed_precision,
              "attn_implementation": model.encoder.config._attn_implementation,
              "loss_first": losses[0], "loss_mean": sum(losses) / len(losses)}
    del pmodel, model, optimizer, scheduler, loader
    _reset_accelerate()
    return result


def run_hf_trainer(folder: Path, data: dict, args, device: str, precision: str) -> dict:
    """transformers' side: AutoModelForSequenceClassification + peft + Trainer (see the docstring)."""
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForSequenceClassification, Trainer, TrainerCallback,
                              TrainingArguments)

    reset_memory(device)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=args.labels,
                                                               dtype=DTYPES[precision])
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["alpha"],
                                             lora_dropout=LORA["dropout"], target_modules=TARGETS, bias="none"))
    times: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                sync(device)
                times[state.global_step] = time.perf_counter()

    class InOrder(Trainer):  # the batches in the dataset's order, as on sslkit's side
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    total = args.warmup + args.steps
    targs = TrainingArguments(
        output_dir=str(folder / "hf_trainer"), per_device_train_batch_size=args.batch, max_steps=total,
        learning_rate=2e-3, weight_decay=0.01, warmup_steps=int(0.1 * total), lr_scheduler_type="cosine",
        max_grad_norm=1.0, optim="adamw_torch", bf16=precision == "bf16", use_cpu=device == "cpu",
        seed=0, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=total,
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False)
    trainer = InOrder(model=model, args=targs, train_dataset=Rows(data), callbacks=[Clock()])
    with contextlib.redirect_stdout(sys.stderr):  # its log lines; stdout carries the JSON alone
        out = trainer.train()
    lora = next(p for n, p in model.named_parameters() if "lora_A" in n)
    base = model.get_input_embeddings().weight
    head = next(p for n, p in model.named_parameters() if "score" in n and p.requires_grad)
    result = {"seconds": times[total] - times[args.warmup], "peak_memory_gib": peak_memory_gib(device),
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "base_dtype": str(base.dtype), "lora_dtype": str(lora.dtype), "head_dtype": str(head.dtype),
              "mixed_precision": trainer.accelerator.mixed_precision,
              "attn_implementation": model.config._attn_implementation, "loss_mean": out.training_loss}
    del trainer, model
    _reset_accelerate()
    return result


def _reset_accelerate() -> None:
    """accelerate keeps its state process-wide; the next side builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 64, vocabulary 1024: runs on a CPU")
    ap.add_argument("--batch", type=int, default=None, help="texts per step (default 32; --tiny 8)")
    ap.add_argument("--seq", type=int, default=64, help="tokens per text")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --tiny 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --tiny 3)")
    ap.add_argument("--labels", type=int, default=77, help="classes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"],
                    help="auto: bf16 on a bf16 GPU, else no (float32); sets the weights' dtype too")
    ap.add_argument("--matmul", type=int, default=None, help="size of the reference product (8192; --tiny 1024)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.warmup is not None and args.warmup < 1:
        ap.error("--warmup must be >= 1 (the clock starts at the end of the last warm-up step)")

    from sslkit.devices import resolve_device, resolve_precision

    device = resolve_device(args.device)
    if not args.tiny and not device.startswith("cuda"):
        ap.error("the real size runs on CUDA only; use --tiny on a CPU")
    precision = resolve_precision(args.precision, device)
    small = args.tiny
    args.batch = args.batch or (8 if small else 32)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 3)
    args.steps = args.steps or (3 if small else 20)
    args.dtype_name = "bfloat16" if precision == "bf16" else "float32"
    cfg = TINY if small else REAL
    dtype = DTYPES[precision]

    import transformers
    import peft
    import accelerate

    result = {"model": "qwen3 tiny" if small else "qwen3-1.7b shape", "config": cfg, "device": device,
              "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
              "precision": precision, "batch": args.batch, "seq": args.seq, "warmup": args.warmup,
              "steps": args.steps, "lora": {**LORA, "targets": TARGETS},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__, "accelerate": accelerate.__version__}}
    n = args.matmul or (1024 if small else 8192)
    result["matmul"] = {"n": n, "dtype": str(dtype), "tflops": matmul_tflops(n, dtype, device)}
    flops_per_step = 4 * block_linear_params(cfg) * args.batch * args.seq
    result["flop_count"] = {"formula": "4 * N * B * T", "N_block_linear_params": block_linear_params(cfg),
                            "flops_per_step": flops_per_step}
    data = make_batches((args.warmup + args.steps) * args.batch, args.seq, cfg["vocab_size"], args.labels)
    with tempfile.TemporaryDirectory(prefix="decoder_throughput_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        save_checkpoint(folder, cfg, dtype, device)
        result["checkpoint_seconds"] = time.perf_counter() - t0
        for name, run in (("sslkit", run_sslkit), ("hf_trainer", run_hf_trainer)):
            side = run(folder, data, args, device, precision)
            side["texts_per_s"] = args.steps * args.batch / side["seconds"]
            side["step_ms"] = 1000 * side["seconds"] / args.steps
            side["tflops"] = flops_per_step * args.steps / side["seconds"] / 1e12
            side["mfu"] = side["tflops"] / result["matmul"]["tflops"]
            result[name] = side
            print(f"{name}: {side['texts_per_s']:.0f} texts/s, {side['step_ms']:.1f} ms/step, "
                  f"{side['tflops']:.1f} TFLOP/s ({side['mfu']:.1%} of the matmul's)", file=sys.stderr)
    result["ratio_sslkit_over_hf"] = result["sslkit"]["texts_per_s"] / result["hf_trainer"]["texts_per_s"]
    if all(result[s]["peak_memory_gib"] is not None for s in ("sslkit", "hf_trainer")):
        result["memory_ratio_sslkit_over_hf"] = (result["sslkit"]["peak_memory_gib"]
                                                 / result["hf_trainer"]["peak_memory_gib"])
    text = json.dumps(result, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
