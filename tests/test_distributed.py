"""Two CPU processes (``accelerate launch``, gloo) give the same fit() as one process (issue 5).

The one-process reference runs in this process (batch 16); the two-process run goes through
``accelerate launch --multi_gpu --num_processes 2`` (batch 8 per process, the same global batch
and number of steps) on the CPU (``CUDA_VISIBLE_DEVICES=""``, ``fit(device="cpu")``). Dropout is
off (tests/dist_fit.py), so the supervised runs train on the same examples per step and average
the same gradients.

Tolerances, on 48 dev and 48 test examples (48 labels: 3 global batches of 16): supervised, |delta accuracy| <= 1/48 + 1e-9 (one
example may flip through float reduction order) and |delta macro-F1| <= 0.03; contrastive (the
P x K batches of 16 and of 2 x 8 differ, so the runs are not the same computation) <= 0.1 on both.
Whatever the batching, every labeled example must be trained on in every epoch. And the supervised
runs take the same optimiser steps: the trainable weights each step starts from agree between one and
two processes (the gradient sync averages what one process computes at once).

Both runs use tests/conftest.py's tiny random encoder: this is about how the work is split and
synchronised, not about what MiniLM learns (the same code paths, a fraction of the compute).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist_fit.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("dist_fit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_encoder_dir):
    if not ACCELERATE.exists() and shutil.which("accelerate") is None:
        pytest.skip("the accelerate CLI is not installed")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "SSLKIT_PROGRESS": "0",
           # no user accelerate config: every setting is on the command line
           "HF_HOME": str(out / "hf_home"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(ACCELERATE if ACCELERATE.exists() else shutil.which("accelerate")), "launch",
           "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--num_cpu_threads_per_process", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(SCRIPT), str(out / "two"), "--batch-size", "8", "--backbone", str(tiny_encoder_dir)]
    # a session of its own: on a timeout the launcher and both workers are killed together
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        one = _load_script().run(out / "one", batch_size=16, backbone=str(tiny_encoder_dir))  # meanwhile
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, log[-4000:]
    two = json.loads((out / "two" / "results.json").read_text())
    return out, one, two


METHODS = ("supervised", "grouped", "contrastive", "temporal_ensemble")


def test_two_processes_run_and_report_two(runs):
    _, one, two = runs
    for name in METHODS:
        assert one[name]["num_processes"] == 1 and two[name]["num_processes"] == 2
        assert one[name]["steps"] == two[name]["steps"]  # the same number of optimiser steps
        assert one[name]["test"]["n"] == two[name]["test"]["n"] == 48  # eval gathers every example once


def test_two_processes_match_one_process_within_tolerance(runs):
    _, one, two = runs
    for name, acc_tol, f1_tol in (("supervised", 1 / 48 + 1e-9, 0.03), ("grouped", 0.1, 0.1),
                                  ("contrastive", 0.1, 0.1), ("temporal_ensemble", 0.1, 0.1)):
        for split in ("dev", "test"):
            a, b = one[name][split], two[name][split]
            assert abs(a["accuracy"] - b["accuracy"]) <= acc_tol, (name, split, a, b)
            assert abs(a["macro_f1"] - b["macro_f1"]) <= f1_tol, (name, split, a, b)


@pytest.mark.parametrize("name", METHODS)
def test_every_labeled_example_is_trained_on_every_epoch(runs, name):
    """Batches are dealt whole to processes; P x K batches (uneven sizes) must not be dropped."""
    out, one, _ = runs
    n = one[name]["n_labeled"]
    for folder, ranks in (("one", [0]), ("two", [0, 1])):
        seen = [json.loads((out / folder / f"{name}_seen_{r}.json").read_text()) for r in ranks]
        for epoch in seen[0]:
            ids = set().union(*(set(s[epoch]) for s in seen))
            assert len(ids) == n, f"{folder} process(es), epoch {epoch}: {len(ids)} of {n} labeled examples"


def test_temporal_ensemble_z_is_the_same_on_both_processes(runs):
    """Z comes from the steps' outputs: each process gathers every process's, so Z and the update
    counts are identical on both; every example a step visited was updated once per epoch."""
    import torch

    out, one, _ = runs
    z0, z1 = (torch.load(out / "two" / f"temporal_ensemble_z_{r}.pt") for r in (0, 1))
    assert torch.equal(z0["Z"], z1["Z"]) and torch.equal(z0["updates"], z1["updates"])
    labeled = sorted(set(json.loads((out / "two" / "temporal_ensemble_seen_0.json").read_text())["1"])
                     | set(json.loads((out / "two" / "temporal_ensemble_seen_1.json").read_text())["1"]))
    assert (z0["updates"][labeled] == 2).all()  # every labeled example, once in each of the 2 epochs
    assert int((z0["updates"] > 0).sum()) > len(labeled)  # and unlabeled ones from the steps
    z_one = torch.load(out / "one" / "temporal_ensemble_z_0.pt")
    assert torch.equal(z_one["updates"] > 0, z0["updates"] > 0)  # the same rows as one process
    assert torch.allclose(z_one["Z"], z0["Z"], atol=0.05)


def test_supervised_steps_are_the_same_on_one_and_two_processes(runs):
    """Dropout off, the same 16 examples per global step: every step of the two-process run starts
    from the weights the one-process run had at that step (float reduction order aside), and both
    processes hold the same weights."""
    import torch

    out, one, _ = runs
    ref = torch.load(out / "one" / "supervised_weights_0.pt")
    ranks = [torch.load(out / "two" / f"supervised_weights_{r}.pt") for r in (0, 1)]
    assert len(ref) == one["supervised"]["steps"] == len(ranks[0]) == len(ranks[1])
    assert any("lora_B" in n for n in ref[0]) and "head.weight" in ref[0]
    assert any(not torch.equal(ref[-1][n], ref[0][n]) for n in ref[0] if "lora_B" in n)  # it trained
    for step, (a, b0, b1) in enumerate(zip(ref, *ranks)):
        assert a.keys() == b0.keys() == b1.keys()
        for n in a:
            assert torch.equal(b0[n], b1[n]), (step, n)  # the processes never drift apart
            torch.testing.assert_close(b0[n], a[n], atol=1e-5, rtol=1e-4, msg=f"step {step}: {n}")
