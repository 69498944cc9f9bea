"""`sslkit sweep`: grid expansion, skip of finished points, failures, dry runs, GPU workers, and
interruption by SIGTERM / SIGINT (the kernel stops, nothing is marked done, a rerun continues)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from sslkit.cli import main
from sslkit.sweep import Point, expand_grid, gpu_slots, load_grid, point_hash, run_sweep, sweep_status


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "sslkit" if "sslkit" in KernelSpecManager().find_kernel_specs() else "python3"


KERNEL = _kernel()

#: A 2-cell stub: the parameters, then a cell that logs its start (with the kernel's pid), may fail
#: or sleep, writes a run record's summary.json atomically as the trainer does, and logs its end.
STUB = '''import json, os, time
from pathlib import Path

def write_json(path, obj):  # as sslkit.runs.write_json does (temporary file, then rename), without
    path.parent.mkdir(parents=True, exist_ok=True)  # importing torch into every stub kernel
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)

marks = Path(marks)
marks.mkdir(parents=True, exist_ok=True)
with open(marks / f"start-{x}", "a") as fh:
    fh.write(f"{os.getpid()}\\n")
(marks / f"cvd-{x}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
if fail:
    raise RuntimeError(f"stub failure {x}")
if slow and os.path.exists(slow) and x == 2:
    time.sleep(300)
write_json(Path(os.environ["SSLKIT_REPORTS"]) / "runs" / f"stub-{x}" / "summary.json", {"x": x})
with open(marks / f"end-{x}", "a") as fh:
    fh.write("ok\\n")
'''


def _stub(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('x = 0\nfail = False\nslow = ""\nmarks = "marks"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(STUB)]
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "stub.ipynb")
    return folder / "stub.ipynb"


def _grid(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    _stub(tmp_path / "nb")
    path = tmp_path / name
    path.write_text(text)
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _statuses(reports: Path, grid: str) -> dict:
    out = {}
    for f in (reports / "sweeps" / grid).glob("stub-*.json"):
        s = json.loads(f.read_text())
        out[s["parameters"]["x"]] = s
    return out


def _all_json_parses(root: Path) -> int:
    files = list(root.rglob("*.json"))
    for f in files:
        json.loads(f.read_text())  # raises on a half-written file
    return len(files)


# --------------------------------------------------------------------------- the grid


def test_grid_expansion(tmp_path):
    grid = _grid(tmp_path, """
name: g1
notebooks_dir: nb
parameters: {dataset: banking77, fail: false}
grid:
  - notebook: stub
    parameters:
      labeled: [0.05, 0.1, 0.2]
      seed: [0, 1]
      variants: [[adaptive, fixed]]
  - notebook: nb/stub.ipynb           # a path, relative to the grid file
    parameters: {labeled: 0.1, seed: 0, variants: [[adaptive, fixed]], dataset: hwu64}
  - notebook: stub                    # repeats the first point of entry 1: dropped
    parameters: {labeled: 0.05, seed: 0, variants: [[adaptive, fixed]]}
""")
    g = load_grid(grid)
    assert g.name == "g1" and len(g.points) == 7
    first = g.points[:6]
    assert [(p.parameters["labeled"], p.parameters["seed"]) for p in first] == [
        (0.05, 0), (0.05, 1), (0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]  # first parameter slowest
    assert all(p.parameters["dataset"] == "banking77" and p.parameters["fail"] is False
               and p.parameters["variants"] == ["adaptive", "fixed"] for p in first)
    assert g.points[6].parameters["dataset"] == "hwu64"  # an entry's own value wins
    assert all(p.notebook == (tmp_path / "nb" / "stub.ipynb").resolve() for p in g.points)
    assert len({p.key for p in g.points}) == 7
    assert all(p.name == f"stub-{p.key}" for p in g.points)
    # the hash is the notebook stem + parameters, key order ignored
    assert point_hash("stub", {"a": 1, "b": 0.1}) == point_hash("stub", {"b": 0.1, "a": 1})
    assert point_hash("stub", {"a": 1}) != point_hash("stub", {"a": 2}) != point_hash("other", {"a": 2})
    # a file that is only a list is the grid; its name is the file's stem
    only = tmp_path / "plain.yaml"
    only.write_text("- notebook: stub\n  parameters: {x: [1, 2]}\n")
    g2 = load_grid(only, tmp_path / "nb")
    assert g2.name == "plain" and [p.parameters for p in g2.points] == [{"x": 1}, {"x": 2}]


@pytest.mark.parametrize("text, message", [
    ("grid:\n  - notebook: stub\n    parameters: {x: []}\n", "empty list"),
    ("grid:\n  - notebook: stub\n    parameter: {x: 1}\n", "unknown key"),
    ("grid:\n  - parameters: {x: 1}\n", "no 'notebook'"),
    ("grid:\n  - notebook: stub\n    parameters: {1x: 1}\n", "not a Python identifier"),
    ("grid:\n  - notebook: nope\n", "not found"),
    ("grids: []\n", "unknown key"),
    ("name: 'a b'\ngrid:\n  - notebook: stub\n", "grid name"),
    ("grid: {notebook: stub}\n", "expected a list"),
    ("grid: [notebook: stub\n", "not valid YAML"),
])
def test_grid_errors(tmp_path, text, message, capsys):
    path = _grid(tmp_path, "notebooks_dir: nb\n" + text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_grid(path)
    assert main(["sweep", str(path), "--dry-run"]) == 2  # bad input: exit 2, no traceback
    err = capsys.readouterr().err
    assert "sslkit sweep: error" in err and "Traceback" not in err


def test_expand_grid_bad_entry(tmp_path):
    _stub(tmp_path / "nb")
    with pytest.raises(ValueError, match="expected a mapping"):
        expand_grid(["stub"], tmp_path / "nb")
    with pytest.raises(ValueError, match="no points"):
        expand_grid([], tmp_path / "nb")


def test_gpu_slots(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_slots(0) == [None]
    assert gpu_slots(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    assert gpu_slots(2) == ["3", "5"]
    with pytest.raises(ValueError, match="lists only 3"):
        gpu_slots(4)
    with pytest.raises(ValueError):
        gpu_slots(-1)


# --------------------------------------------------------------------------- running


def test_sweep_runs_records_failures_and_skips_finished(tmp_path, capsys):
    grid = _grid(tmp_path, f"""
name: small
notebooks_dir: nb
parameters: {{marks: "{tmp_path / 'marks'}"}}
grid:
  - notebook: stub
    parameters: {{x: [1, 2]}}
  - notebook: stub
    parameters: {{x: 3, fail: true}}
""")
    reports = tmp_path / "reports"
    marks = tmp_path / "marks"
    # dry run: lists every point, runs nothing
    assert main(["sweep", str(grid), "--reports", str(reports), "--kernel", KERNEL, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 point(s), 3 to run, 0 done" in out and out.count("  run   stub") == 3
    assert not marks.exists() and not (reports / "sweeps").exists()

    rc = main(["sweep", str(grid), "--reports", str(reports), "--kernel", KERNEL, "--gpus", "0"])
    captured = capsys.readouterr()
    assert rc == 1  # a point failed, the others still ran
    assert "stub failure 3" in captured.err and "2 run, 0 skipped" in captured.out
    status = _statuses(reports, "small")
    assert {x: s["status"] for x, s in status.items()} == {1: "done", 2: "done", 3: "failed"}
    assert "RuntimeError: stub failure 3" in status[3]["error"]
    for x in (1, 2):
        assert _lines(marks / f"start-{x}") and _lines(marks / f"end-{x}") == ["ok"]
        name = status[x]["point"]
        # each point has its own executed copy, HTML and log; the book's copies are untouched
        for ext in ("ipynb", "html", "log"):
            assert (reports / "sweeps" / "small" / f"{name}.{ext}").is_file()
        assert (reports / "runs" / f"stub-{x}" / "summary.json").is_file()
    assert not (reports / "stub.ipynb").exists() and not (reports / "book_timings.json").exists()
    assert "stub failure 3" in (reports / "sweeps" / "small" / f"{status[3]['point']}.html").read_text()
    index = (reports / "index.html").read_text()
    assert "Sweeps" in index and f'href="sweeps/small/{status[1]["point"]}.html"' in index
    assert "stub failure 3" in index
    assert [r["status"] for r in sweep_status(reports)["small"]] == ["done", "done", "failed"]

    # the next run skips the finished points and retries the failed one
    assert main(["sweep", str(grid), "--reports", str(reports), "--kernel", KERNEL, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 to run, 2 done (skipped)" in out and out.count("  skip  stub") == 2
    assert "failed before: RuntimeError: stub failure 3" in out
    assert main(["sweep", str(grid), "--reports", str(reports), "--kernel", KERNEL, "--gpus", "0"]) == 1
    assert "0 run, 2 skipped" in capsys.readouterr().out
    assert len(_lines(marks / "start-1")) == len(_lines(marks / "start-2")) == 1  # not repeated
    assert len(_lines(marks / "start-3")) == 2
    assert _statuses(reports, "small")[3]["attempt"] == 2
    assert _all_json_parses(reports) >= 5


def test_sweep_one_worker_per_gpu(tmp_path, monkeypatch):
    """With N GPUs, N workers run at once, each with CUDA_VISIBLE_DEVICES set to its own GPU
    (the stub notebooks do not use a GPU, so this runs on a CPU machine too)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    grid = _grid(tmp_path, f"""
notebooks_dir: nb
grid:
  - notebook: stub
    parameters: {{x: [1, 2], marks: "{tmp_path / 'marks'}"}}
""")
    reports = tmp_path / "reports"
    result = run_sweep(grid, reports, kernel=KERNEL, gpus=2, out=open(os.devnull, "w"))
    assert result.ok and len(result.done) == 2
    seen = {(tmp_path / "marks" / f"cvd-{x}").read_text() for x in (1, 2)}
    assert seen == {"4", "6"}
    status = _statuses(reports, "grid")
    assert {s["gpu"] for s in status.values()} == {"4", "6"}
    for x, s in status.items():
        assert (tmp_path / "marks" / f"cvd-{x}").read_text() == s["gpu"]


# --------------------------------------------------------------------------- interruption


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _dead(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _interrupt(cmd: list[str], marks: Path, reports: Path, sig: int) -> None:
    """Run the sweep command, send ``sig`` while point 2 sleeps in its cell, and check that the sweep
    stopped cleanly: exit 128 + sig, the kernel gone, point 2 ``interrupted``, point 1 ``done``."""
    started = len(_lines(marks / "start-2"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: len(_lines(marks / "start-2")) > started, 120), "point 2 never started"
        time.sleep(0.5)  # inside the sleeping cell
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (out, err)
    assert f"interrupted by {signal.Signals(sig).name}" in err and "Traceback" not in err
    # the kernel of the interrupted point is gone
    kernel_pid = int(_lines(marks / "start-2")[-1])
    assert _wait_for(lambda: _dead(kernel_pid), 15), "the kernel survived the interruption"
    status = _statuses(reports, "slow")
    assert status[1]["status"] == "done"
    assert status[2]["status"] == "interrupted" and not (marks / "end-2").exists()
    assert _all_json_parses(reports) >= 3  # status files, sweep.json, summary.json: all whole
    assert json.loads((reports / "sweeps" / "slow" / "sweep.json").read_text())["state"] == "interrupted"


def test_interrupted_sweep_stops_cleanly_and_continues(tmp_path):
    """Both signals on one sweep (each run of it starts a CLI, a worker and a kernel per point):
    SIGTERM stops the first run in point 2; the rerun skips point 1 and SIGINT stops it in point 2
    again; the third run finishes point 2 and repeats nothing."""
    flag = tmp_path / "SLOW"
    flag.write_text("")
    marks = tmp_path / "marks"
    grid = _grid(tmp_path, f"""
name: slow
notebooks_dir: nb
grid:
  - notebook: stub
    parameters: {{x: [1, 2], slow: "{flag}", marks: "{marks}"}}
""")
    reports = tmp_path / "reports"
    cmd = [sys.executable, "-m", "sslkit.cli", "sweep", str(grid), "--reports", str(reports),
           "--kernel", KERNEL, "--gpus", "0"]
    _interrupt(cmd, marks, reports, signal.SIGTERM)
    assert len(_lines(marks / "start-1")) == 1 and len(_lines(marks / "start-2")) == 1
    # started again, still slow: point 1 is not repeated, point 2 runs and is interrupted again
    _interrupt(cmd, marks, reports, signal.SIGINT)
    assert len(_lines(marks / "start-1")) == 1 and len(_lines(marks / "start-2")) == 2

    # start it again: the finished point is not repeated, the interrupted one runs
    flag.unlink()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 run, 1 skipped" in done.stdout
    assert len(_lines(marks / "start-1")) == 1 and len(_lines(marks / "start-2")) == 3
    assert _lines(marks / "end-2") == ["ok"]
    assert {s["status"] for s in _statuses(reports, "slow").values()} == {"done"}
    for summary in (reports / "runs").rglob("summary.json"):
        assert json.loads(summary.read_text())["x"] in (1, 2)
    _all_json_parses(reports)


def test_point_is_a_point():
    p = Point(Path("/x/01_supervised.ipynb"), {"labeled": 0.1, "seed": 0, "variants": ["a"]})
    assert p.stem == "01_supervised" and p.label() == '01_supervised labeled=0.1 seed=0 variants=["a"]'
