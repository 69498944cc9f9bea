"""Dropout with CPU masks drawn by numpy (the default for pretrained backbones; ``load_backbone(...,
fast_dropout=False)`` gives torch's).

Dropout is y = x * m / (1 - p), m_i ~ Bernoulli(1 - p) (Srivastava et al. 2014). On CPU, torch draws
the mask with ``bernoulli_``, one element at a time on a single thread: profiling a MiniLM + LoRA
training step on 2 cores showed ``aten::bernoulli_`` as 33% of the step (55 dropout calls per forward:
the encoder's own and peft's ``lora_dropout`` before every adapter). Here the mask comes from 16 random
bits per element, a quarter of one raw 64-bit output of numpy's PCG64 (``random_raw``: 5x faster than
``Generator.bytes``): an element is dropped iff its bits < round(p * 2^16), so the drop rate is
round(p * 2^16) / 2^16 (0.100006 for p = 0.1). The mask goes to torch as float32 m / (1 - p), made by
numpy in one pass, so the forward and the backward are each one float product (``torch.where`` with a
bool mask, tried first, took 3-6x as long per call as the product). The generator is seeded from torch's
default generator on every call, so ``torch.manual_seed`` still fixes every mask. It is a different
stream from torch's: runs with it are not bit-identical to runs without it (same distribution).

Only modules of exactly :class:`torch.nn.Dropout` are switched; attention-probability dropout inside
``scaled_dot_product_attention`` stays torch's. Off CPU (or in eval mode) the forward is torch's own.
``benchmarks/dropout_speed.py`` measures the gain.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

_BITS = 16


def _kept(shape: tuple[int, ...], p: float, seed: int) -> np.ndarray:
    n = int(np.prod(shape)) if len(shape) else 1
    raw = np.random.PCG64(seed).random_raw(-(-n // 4))  # 4 x 16 bits per draw
    # numpy compares unsigned 16-bit ints (torch cannot)
    return raw.view(np.uint16)[:n].reshape(shape) >= int(round(p * 2**_BITS))


def keep_mask(shape: tuple[int, ...], p: float, seed: int) -> torch.Tensor:
    """Bool tensor, True (kept) with probability 1 - round(p * 2^16) / 2^16, from PCG64(seed)."""
    return torch.from_numpy(_kept(shape, p, seed))  # no copy


def keep_scale(shape: tuple[int, ...], p: float, seed: int) -> torch.Tensor:
    """Float32 tensor m / (1 - p), m the :func:`keep_mask` of the same seed, built by numpy in one
    pass (float x float products are ~6x faster in torch than selecting with a bool mask)."""
    out = np.empty(shape, dtype=np.float32)
    np.multiply(_kept(shape, p, seed), np.float32(1.0 / (1.0 - p)), out=out)
    return torch.from_numpy(out)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """x * m / (1 - p) with m from :func:`keep_mask`; torch's ``F.dropout`` where that does not apply."""
    if not training or p == 0.0 or x.device.type != "cpu" or x.dtype != torch.float32 or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # from torch's generator: manual_seed fixes it
    return x * keep_scale(tuple(x.shape), p, seed)


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose CPU masks come from :func:`fast_dropout` (same parameters, no state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.inplace:
            return super().forward(x)
        return fast_dropout(x, self.p, self.training)


def use_fast_dropout(module: nn.Module) -> int:
    """Switch every ``nn.Dropout`` (exactly that class) under ``module`` to :class:`FastDropout` in
    place; returns how many were switched."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Dropout:
            m.__class__ = FastDropout
            n += 1
    return n
