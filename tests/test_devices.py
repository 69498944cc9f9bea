"""Device and precision defaults, with torch's CUDA queries replaced (no GPU needed)."""
from __future__ import annotations

import pytest
import torch

from sslkit.devices import resolve_device, resolve_precision


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a CUDA device is present; returns a setter for its bf16 support."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def bf16(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)

    bf16(True)
    return bf16


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # torch would raise or warn here without a driver; it must not even be asked
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: pytest.fail("asked for bf16 without CUDA"))


def test_auto_device_is_cuda_when_available(gpu):
    assert resolve_device("auto") == "cuda"


def test_auto_device_is_cpu_without_cuda(no_gpu):
    assert resolve_device("auto") == "cpu"


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:1"])
def test_explicit_device_passes_through(no_gpu, name):
    assert resolve_device(name) == name


def test_auto_precision_is_bf16_on_a_bf16_gpu(gpu):
    assert resolve_precision("auto", "auto") == "bf16"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cuda:0") == "bf16"


def test_auto_precision_is_no_on_an_older_gpu(gpu):
    gpu(False)
    assert resolve_precision("auto", "cuda") == "no"


def test_auto_precision_is_no_on_cpu_even_with_a_gpu_present(gpu):
    assert resolve_precision("auto", "cpu") == "no"


def test_auto_precision_is_no_without_cuda(no_gpu):
    assert resolve_precision("auto", "auto") == "no"
    assert resolve_precision("auto", "cuda") == "no"  # asked for CUDA, but there is none to run bf16 on


@pytest.mark.parametrize("value", ["no", "bf16", "fp16"])
def test_explicit_precision_passes_through(no_gpu, value):
    assert resolve_precision(value, "cpu") == value
    assert resolve_precision(value, "cuda") == value


def test_default_arguments_are_auto(gpu):
    assert resolve_precision() == "bf16"
    assert resolve_device() == "cuda"


@pytest.mark.parametrize("value", ["bfloat16", "fp32", "", "BF16", None])
def test_unknown_precision_is_rejected(no_gpu, value):
    with pytest.raises(ValueError, match="mixed_precision must be one of auto, no, bf16, fp16"):
        resolve_precision(value, "cpu")
