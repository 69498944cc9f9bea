"""`sslkit sweep --executor slurm`: resources from the grid file and flags, a dry run without a
cluster, and real jobs through submitit's LocalExecutor (subprocesses on this machine): a failing
point is reported with its log and does not stop the others; a rerun submits only what is missing."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from sslkit.cli import main
from sslkit.executors import SlurmSettings, parse_time
from sslkit.sweep import load_grid


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "sslkit" if "sslkit" in KernelSpecManager().find_kernel_specs() else "python3"


KERNEL = _kernel()

#: the point's work: count its starts, fail on purpose or write a small run record (no torch import)
CELL = '''import json, os
from pathlib import Path

marks = Path(marks)
marks.mkdir(parents=True, exist_ok=True)
with open(marks / f"start-{x}", "a") as fh:
    fh.write("1\\n")
if fail:
    raise RuntimeError(f"stub failure {x}")
record = Path(os.environ["SSLKIT_REPORTS"]) / "runs" / f"stub-{x}"
record.mkdir(parents=True, exist_ok=True)
(record / "summary.json").write_text(json.dumps({"x": x}))
'''


def _grid(tmp_path: Path, slurm: str = "") -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('x = 0\nfail = False\nmarks = "marks"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(CELL)]
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, tmp_path / "nb" / "stub.ipynb")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
name: small
notebooks_dir: nb
parameters: {{marks: "{tmp_path / 'marks'}"}}
{slurm}
grid:
  - notebook: stub
    parameters: {{x: [1, 2]}}
  - notebook: stub
    parameters: {{x: 3, fail: true}}
""")
    return grid


def _starts(tmp_path: Path, x: int) -> int:
    path = tmp_path / "marks" / f"start-{x}"
    return len(path.read_text().split()) if path.exists() else 0


def test_parse_time():
    assert parse_time("2:00:00") == 120 and parse_time("90") == 90 and parse_time(45) == 45
    assert parse_time("1-0") == 1440 and parse_time("1-02:30") == 1590 and parse_time("10:30") == 11
    for bad in ("soon", "0", "-1", "1:2:3:4", True):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_settings_from_grid_and_flags(tmp_path):
    s = SlurmSettings.from_grid({"partition": "a100", "time": "4:00:00", "mem_gb": 32,
                                 "setup": ["module load cuda"]}, partition="h100", time=None,
                                gpus_per_job=2)
    assert (s.partition, s.time, s.gpus_per_job, s.mem_gb) == ("h100", 240, 2, 32)  # flags win
    params = s.parameters("sslkit-x")
    assert params["slurm_partition"] == "h100" and params["timeout_min"] == 240
    assert params["gpus_per_node"] == 2 and params["slurm_setup"] == ["module load cuda"]
    import submitit

    submitit.AutoExecutor(folder=tmp_path, cluster="local").update_parameters(**params)  # its names
    with pytest.raises(ValueError, match="unknown key"):
        SlurmSettings.from_grid({"gpu": 1})
    with pytest.raises(ValueError, match="gpus_per_job"):
        SlurmSettings.from_grid({"gpus_per_job": -1})


def test_dry_run_needs_no_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun or sacct
    monkeypatch.delenv("SSLKIT_SUBMITIT_CLUSTER", raising=False)
    grid = _grid(tmp_path, "slurm: {partition: gpu, gpus_per_job: 1, time: '1:30:00', mem_gb: 16}")
    assert load_grid(grid).slurm["partition"] == "gpu"
    reports = tmp_path / "reports"
    rc = main(["sweep", str(grid), "--reports", str(reports), "--executor", "slurm", "--dry-run",
               "--array-parallelism", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 point(s), 3 to submit, 0 done" in out and out.count("  submit  stub") == 3
    assert "partition gpu, 1 GPU(s), 8 CPU(s), 16 GB, time 1:30:00" in out
    assert "array job 'sslkit-small' of 3, at most 2 at once" in out
    assert not reports.exists() and not (tmp_path / "marks").exists()
    # without --dry-run and without a cluster: a clear error, nothing submitted
    assert main(["sweep", str(grid), "--reports", str(reports), "--executor", "slurm",
                 "--kernel", KERNEL]) == 2
    assert "cannot submit to SLURM here" in capsys.readouterr().err


def test_jobs_failure_reported_and_rerun_submits_only_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSLKIT_SUBMITIT_CLUSTER", "local")
    grid = _grid(tmp_path, "slurm: {gpus_per_job: 0, time: 10}")
    reports = tmp_path / "reports"
    cmd = ["sweep", str(grid), "--reports", str(reports), "--executor", "slurm", "--kernel", KERNEL]

    assert main(cmd) == 1  # one point failed, the two others finished
    captured = capsys.readouterr()
    assert "3 job(s) submitted" in captured.out and "2 run, 0 skipped" in captured.out
    folder = reports / "sweeps" / "small"
    status = {json.loads(f.read_text())["parameters"]["x"]: json.loads(f.read_text())
              for f in folder.glob("stub-*.json")}
    assert {x: s["status"] for x, s in status.items()} == {1: "done", 2: "done", 3: "failed"}
    assert "RuntimeError: stub failure 3" in status[3]["error"]
    log = folder / f"{status[3]['point']}.log"
    assert "stub failure 3" in log.read_text()
    assert "FAILED  stub" in captured.out and str(log) in captured.err  # reported with its log
    assert all(s["job_id"] and s["executor"] == "local" for s in status.values())
    for x in (1, 2):
        assert (reports / "runs" / f"stub-{x}" / "summary.json").is_file()
        assert (folder / f"{status[x]['point']}.html").is_file()
    jobs = json.loads((folder / "slurm" / "jobs.json").read_text())
    assert set(jobs) == {s["point"] for s in status.values()}
    assert "sweeps/small" in (reports / "index.html").read_text()

    # the rerun skips both finished points and submits only the failed one
    assert main(cmd + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 to submit, 2 done (skipped)" in out and out.count("  skip    stub") == 2
    assert main(cmd) == 1
    out = capsys.readouterr().out
    assert "1 job(s) submitted" in out and "0 run, 2 skipped" in out
    assert [_starts(tmp_path, x) for x in (1, 2, 3)] == [1, 1, 2]
    again = json.loads((folder / f"{status[3]['point']}.json").read_text())
    assert again["attempt"] == 2 and again["job_id"] != status[3]["job_id"]


class _FakeJob:
    """A job an earlier run submitted, as the cluster reports it: still running (it finishes after a
    few polls, writing its point's status as run_job would) or gone (cancelled)."""

    def __init__(self, job_id: str, status_path: Path | None):
        self.job_id, self.status_path, self.polls = job_id, status_path, 0
        self.state = "RUNNING" if status_path else "CANCELLED"
        self.paths = type("Paths", (), {"stdout": Path(f"{job_id}_0_log.out")})()

    def done(self, force_check: bool = False) -> bool:
        if self.status_path is None:
            return True
        self.polls += 1
        if self.polls < 3:
            return False
        status = json.loads(self.status_path.read_text())
        status.update(status="done", seconds=1.0)
        self.status_path.write_text(json.dumps(status))
        self.state = "COMPLETED"
        return True


def test_rerun_after_interruption_waits_for_queued_jobs_and_submits_the_rest(tmp_path, capsys,
                                                                           monkeypatch):
    """The submitter was stopped while both jobs were queued: one is still running (waited for,
    not submitted again), the other was cancelled (submitted again)."""
    import sslkit.executors as executors
    from sslkit.runs import write_json

    monkeypatch.setenv("SSLKIT_SUBMITIT_CLUSTER", "local")
    grid = _grid(tmp_path, "slurm: {gpus_per_job: 0, time: 10}")
    grid.write_text(grid.read_text().replace("  - notebook: stub\n    parameters: {x: 3, fail: true}\n", ""))
    reports = tmp_path / "reports"
    folder = reports / "sweeps" / "small"
    points = load_grid(grid).points
    for point, job_id in zip(points, ("4242", "4243")):
        write_json(folder / f"{point.name}.json", {
            "point": point.name, "hash": point.key, "parameters": point.parameters,
            "status": "queued", "attempt": 1, "log": f"sweeps/small/{point.name}.log"})
    write_json(folder / "slurm" / "jobs.json",
               {p.name: {"job_id": j} for p, j in zip(points, ("4242", "4243"))})
    fakes = {"4242": _FakeJob("4242", folder / f"{points[0].name}.json"), "4243": _FakeJob("4243", None)}
    monkeypatch.setattr(executors, "_job", lambda cluster, jobs_dir, job_id: fakes[job_id])

    cmd = ["sweep", str(grid), "--reports", str(reports), "--executor", "slurm", "--kernel", KERNEL]
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "1 job(s) submitted, 1 still queued from before" in out and "2 run, 0 skipped" in out
    assert [_starts(tmp_path, x) for x in (1, 2)] == [0, 1]  # x=1 ran in the (fake) old job
    assert fakes["4242"].polls >= 3
    assert executors._alive(_FakeJob("1", tmp_path / "x")) and not executors._alive(fakes["4243"])


def test_refused_submission_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """sbatch says no (here: a fake sbatch/srun on PATH): exit 2 with its message, points failed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("SSLKIT_SUBMITIT_CLUSTER", raising=False)
    grid = _grid(tmp_path)
    reports = tmp_path / "reports"
    assert main(["sweep", str(grid), "--reports", str(reports), "--executor", "slurm",
                 "--kernel", KERNEL, "--partition", "nope"]) == 2
    assert "invalid partition specified: nope" in capsys.readouterr().err
    status = [json.loads(f.read_text()) for f in (reports / "sweeps" / "small").glob("stub-*.json")]
    assert len(status) == 3 and {s["status"] for s in status} == {"failed"}
