"""Where a run trains and in which precision, decided once from what the machine offers.

``"auto"`` is the default of both settings so that the same notebook or command trains on a GPU
when there is one and on the CPU otherwise, with no parameter to change between the two.
"""
from __future__ import annotations

import torch

__all__ = ["DEVICES", "PRECISIONS", "resolve_device", "resolve_precision"]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "no", "bf16", "fp16")


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a CUDA device, else ``"cpu"``; an explicit name
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is returned as given, so a user can always force one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(mixed_precision: str = "auto", device: str = "auto") -> str:
    """The ``mixed_precision`` value for accelerate: ``"no"`` | ``"bf16"`` | ``"fp16"``.

    ``"auto"`` gives ``"bf16"`` on a CUDA device that computes in bf16 natively (Ampere and
    later): there its matrix products run several times faster than in float32, and bf16 keeps
    float32's exponent range, so no loss scaling is needed. Everywhere else (the CPU, an older GPU)
    it gives ``"no"``: a CPU's bf16 products are not faster than its float32 ones, and fp16 would
    need a gradient scaler, which is a choice to make explicitly. Explicit values pass through
    unchanged (``"fp16"`` on a V100, ``"no"`` to reproduce a float32 run on a GPU).
    """
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}; got {mixed_precision!r}")
    if mixed_precision != "auto":
        return mixed_precision
    if resolve_device(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"
