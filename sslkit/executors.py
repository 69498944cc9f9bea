"""Sweeps on a SLURM cluster: every grid point becomes one job, submitted through ``submitit``.

``sslkit sweep GRID.yaml --executor slurm`` expands the grid exactly as a local sweep does
(:mod:`sslkit.sweep`) and shares its status files, so the same rules hold on a cluster:

* **Skip rule**: points whose status says ``done`` are not submitted again.
* **One array job**: the points to run go to SLURM as one job array (``array_parallelism`` of
  them at once), each with the resources of the grid file's ``slurm:`` section, overridden by the
  flags ``--partition --gpus-per-job --time --array-parallelism``::

      slurm:
        partition: gpu          # default: the cluster's default partition
        gpus_per_job: 1         # default 1
        cpus_per_task: 8        # default 8
        mem_gb: 32              # default: the partition's default
        time: "2:00:00"         # SLURM's formats: minutes, H:MM:SS, D-HH:MM ...; default 2:00:00
        array_parallelism: 16   # jobs of the array running at once; default 16
        account: myproject      # optional, as are qos, constraint
        setup: ["module load cuda/12.4"]     # shell lines run before the job
        additional: {mail-type: FAIL}        # any other sbatch option

* **Waiting**: the command waits for the jobs and reports each one as it ends; a failed job is
  reported with its log paths (the point's ``<point>.log`` and the job's own log under
  ``reports/sweeps/<grid>/slurm/``) and does not stop the others; the command exits 1 if one
  failed.
* **Interruption**: Ctrl-C (or SIGTERM) stops only the waiting: the jobs stay in SLURM's queue.
  Their ids are kept in ``reports/sweeps/<grid>/slurm/jobs.json``; running the same command
  again re-attaches to the jobs that are still queued or running and submits only the points that
  are neither done nor in the queue.
* ``--dry-run`` lists the jobs and their resources without submitting; it needs no cluster.

Each job runs the same worker as a local sweep (``python -m sslkit.sweep --run-point``) with the
Python that submitted it, so the reports folder and the virtualenv must be on a file system the
compute nodes share. ``SSLKIT_SUBMITIT_CLUSTER=local`` sends the jobs to submitit's
``LocalExecutor`` instead (subprocesses on this machine): the tests use it, and it tries a grid
through the cluster code path without a cluster.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from .runs import read_json, reports_dir, write_json
from .sweep import (Grid, Point, SweepResult, _install_handlers, _now, read_status, _refresh,
                    _restore_handlers, _write_manifest, load_grid, point_state, sweep_dir)

__all__ = ["SlurmSettings", "parse_time", "run_job", "submit_sweep"]

#: submitit's cluster for `--executor slurm`; "local" runs the jobs as subprocesses (tests).
CLUSTER_ENV = "SSLKIT_SUBMITIT_CLUSTER"
#: SLURM states of a job that is still coming or going (sacct); anything else has ended.
_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
          "REQUEUE_HOLD", "REQUEUE_FED"}
_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def parse_time(value: str | int | float) -> int:
    """A SLURM time limit in whole minutes (rounded up). Accepts SLURM's own formats: minutes,
    ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` (``"2:00:00"`` -> 120, ``"1-0"`` -> 1440)."""
    if isinstance(value, bool):
        raise ValueError(f"time: expected minutes or H:MM:SS, got {value!r}")
    if isinstance(value, (int, float)):
        minutes = float(value)
    else:
        m = _TIME.match(str(value).strip())
        if not m:
            raise ValueError(f"time: {value!r} is not a SLURM time (minutes, H:MM:SS, D-HH:MM, ...)")
        d, a, b, c = (int(x) if x else 0 for x in m.group("d", "a", "b", "c"))
        if m.group("d"):  # D-H[:M[:S]]
            seconds = ((d * 24 + a) * 60 + b) * 60 + c
        elif m.group("c"):  # H:M:S
            seconds = (a * 60 + b) * 60 + c
        elif m.group("b"):  # M:S
            seconds = a * 60 + b
        else:  # M
            seconds = a * 60
        minutes = seconds / 60
    if minutes <= 0:
        raise ValueError(f"time: must be positive, got {value!r}")
    return int(-(-minutes // 1))


def _clock(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}:00"


@dataclass
class SlurmSettings:
    """The resources of each job (one grid point per job); see the module doc for the YAML."""

    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_task: int | None = 8
    mem_gb: float | None = None
    time: int = 120  # minutes; parse_time() reads SLURM's formats
    array_parallelism: int = 16
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)
    additional: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_grid(cls, section: dict | None = None, **overrides: Any) -> "SlurmSettings":
        """The grid file's ``slurm:`` section, then the command-line flags (None: not given)."""
        values = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"slurm: unknown key(s) {', '.join(map(str, unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        if "time" in values:
            values["time"] = parse_time(values["time"])
        settings = cls(**values)
        for name in ("gpus_per_job", "array_parallelism", "cpus_per_task"):
            value = getattr(settings, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < (0 if name == "gpus_per_job" else 1)):
                raise ValueError(f"slurm: {name} must be a whole number"
                                 f"{' >= 0' if name == 'gpus_per_job' else ' >= 1'}, got {value!r}")
        if not isinstance(settings.setup, list) or not isinstance(settings.additional, dict):
            raise ValueError("slurm: 'setup' must be a list of shell lines and 'additional' a mapping")
        return settings

    def parameters(self, name: str) -> dict[str, Any]:
        """The keyword arguments of ``submitit.AutoExecutor.update_parameters``."""
        slurm = {"partition": self.partition, "array_parallelism": self.array_parallelism,
                 "account": self.account, "qos": self.qos, "constraint": self.constraint,
                 "setup": self.setup or None, "additional_parameters": self.additional or None}
        return {"name": name, "timeout_min": self.time,
                "gpus_per_node": self.gpus_per_job or None,  # 0: no --gpus-per-node (CPU partitions)
                "cpus_per_task": self.cpus_per_task, "mem_gb": self.mem_gb, "nodes": 1,
                "tasks_per_node": 1, "stderr_to_stdout": True,
                **{f"slurm_{k}": v for k, v in slurm.items() if v is not None}}

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(default)'}", f"{self.gpus_per_job} GPU(s)"]
        if self.cpus_per_task:
            parts.append(f"{self.cpus_per_task} CPU(s)")
        if self.mem_gb:
            parts.append(f"{self.mem_gb:g} GB")
        parts.append(f"time {_clock(self.time)}")
        parts += [f"{k} {v}" for k, v in (("account", self.account), ("qos", self.qos),
                                           ("constraint", self.constraint)) if v]
        if self.additional:
            parts.append(" ".join(f"--{k}={v}" for k, v in self.additional.items()))
        return ", ".join(parts)


# --------------------------------------------------------------------------- inside the job


def run_job(status_path: str) -> int:
    """The job's function (runs on the compute node): mark the point running, then run it as the
    local sweep's worker does, its output in ``<point>.log``. In this process rather than a child:
    sslkit (torch) is already imported to unpickle this function, and importing it twice costs
    seconds per point."""
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    from .sweep import _run_point

    path = Path(status_path)
    status = read_json(path)
    try:
        import submitit

        job_id: str | None = submitit.JobEnvironment().job_id
    except Exception:  # not inside a submitit job (a direct call)
        job_id = None
    started = time.time()
    status.update(status="running", started=_now(), finished=None, seconds=None, error=None,
                  job_id=job_id, host=socket.gethostname(),
                  gpu=os.environ.get("CUDA_VISIBLE_DEVICES") or None)
    write_json(path, status)
    root = logging.getLogger()
    handlers = list(root.handlers)
    with open(path.with_suffix(".log"), "w", encoding="utf-8") as log, \
            redirect_stdout(log), redirect_stderr(log):
        try:
            return _run_point(path)
        except BaseException as err:  # _run_point records notebook errors; this is anything else
            status.update(status="failed", finished=_now(), seconds=round(time.time() - started, 3),
                          error=f"the job's worker stopped: {type(err).__name__}: {err}")
            write_json(path, status)
            raise
        finally:  # the worker's log handler writes to this file: gone with it
            for handler in set(root.handlers) - set(handlers):
                root.removeHandler(handler)


# --------------------------------------------------------------------------- submitting


def _executor(folder: Path, cluster: str, settings: SlurmSettings, name: str) -> Any:
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:  # SlurmExecutor: no srun on this machine
        raise ValueError(f"cannot submit to SLURM here ({err}); --dry-run lists the jobs "
                         "without a cluster") from None
    executor.update_parameters(**settings.parameters(name))
    return executor


def _job(cluster: str, folder: Path, job_id: str) -> Any:
    import submitit

    cls = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
    return cls(folder=folder, job_id=job_id)


def _alive(job: Any) -> bool:
    """Whether a job submitted by an earlier run is still queued or running (then it is waited
    for, not submitted again). An id the cluster no longer knows counts as ended."""
    if job.done(force_check=True):
        return False
    return str(job.state).upper().split()[0] in _ALIVE


def _log_note(reports: Path, status: dict, job_log: Path | None) -> str:
    logs = [str(reports / status["log"])] if status.get("log") else []
    if job_log is not None:
        logs.append(f"job log {job_log}")
    return f" (log: {'; '.join(logs)})" if logs else ""


def _print_plan(grid: Grid, states: list, records: dict[str, dict], settings: SlurmSettings,
                cluster: str, folder: Path, name: str, out: TextIO) -> None:
    """The dry run's listing: what would be submitted, with which resources, and why."""
    jobs_dir = folder / "slurm"
    to_submit = sum(1 for _, state, _ in states if state != "done")
    skipped = len(states) - to_submit
    where = "SLURM" if cluster == "slurm" else f"submitit cluster '{cluster}'"
    print(f"sweep {grid.name} ({where}): {len(grid.points)} point(s), "
          f"{to_submit} to submit, {skipped} done (skipped) -> {folder}", file=out)
    print(f"  each job: {settings.describe()}", file=out)
    print(f"  one array job '{name}' of {to_submit}, at most {settings.array_parallelism} "
          "at once", file=out)
    print(f"  logs: {folder}/<point>.log, {jobs_dir}/<job id>_0_log.out", file=out)
    for point, state, status in states:
        job = records.get(point.name, {}).get("job_id")
        if state == "done":
            verb, note = "skip  ", f"done {(status or {}).get('finished') or ''}".strip()
        elif state in ("queued", "running") and job:
            verb, note = "submit", (f"job {job} {state} before: waited for if still in the "
                                    "queue, else submitted again")
        else:
            verb = "submit"
            note = {"failed": f"failed before: {(status or {}).get('error')}",
                    "interrupted": "interrupted before"}.get(state, state)
        print(f"  {verb}  {point.label()}  [{point.name}; {note}]", file=out)


def _still_queued(pending: list, records: dict[str, dict], cluster: str,
                  jobs_dir: Path) -> dict[str, tuple[Point, Any]]:
    """Jobs of an earlier run that are still queued or running: waited for, not submitted again."""
    waiting: dict[str, tuple[Point, Any]] = {}
    for point, state in pending:
        job_id = records.get(point.name, {}).get("job_id")
        if state in ("queued", "running") and job_id:
            job = _job(cluster, jobs_dir, job_id)
            if _alive(job):
                waiting[point.name] = (point, job)
    return waiting


def _mark_queued(grid: Grid, folder: Path, points: list[Point], kernel: str, progress: bool,
                 reports: Path, cluster: str) -> None:
    """Write each point's status file before submitting: the job reads its work from it."""
    for point in points:
        path = folder / f"{point.name}.json"
        previous = read_status(path) or {}
        write_json(path, {
            "grid": grid.name, "point": point.name, "hash": point.key, "notebook": point.stem,
            "source": str(point.notebook), "parameters": point.parameters, "status": "queued",
            "error": None, "started": None, "finished": None, "seconds": None, "gpu": None,
            "attempt": int(previous.get("attempt") or 0) + 1, "kernel": kernel,
            "progress": progress, "reports": str(reports), "executor": cluster,
            "executed": f"sweeps/{grid.name}/{point.name}.ipynb",
            "html": f"sweeps/{grid.name}/{point.name}.html",
            "log": f"sweeps/{grid.name}/{point.name}.log",
        })


def _submit_array(executor: Any, folder: Path, points: list[Point], records: dict[str, dict],
                  waiting: dict[str, tuple[Point, Any]], cluster: str) -> None:
    """Submit ``points`` as one array job and keep the job ids in ``jobs.json``, so that a rerun
    re-attaches to them. A refused submission marks the points failed and is a ValueError."""
    try:
        with executor.batch():
            jobs = [executor.submit(run_job, str(folder / f"{p.name}.json")) for p in points]
    except Exception as err:  # sbatch refused (a partition that does not exist, ...)
        for point in points:
            path = folder / f"{point.name}.json"
            write_json(path, {**(read_status(path) or {}), "status": "failed",
                              "error": f"not submitted: {err}"})
        raise ValueError(f"SLURM refused the jobs: {err}") from None
    for point, job in zip(points, jobs):
        records[point.name] = {"job_id": str(job.job_id), "submitted": _now(),
                               "job_log": str(job.paths.stdout), "cluster": cluster}
        waiting[point.name] = (point, job)
    write_json(folder / "slurm" / "jobs.json", records)


def _report_ended(point: Point, job: Any, folder: Path, reports: Path, result: SweepResult,
                  out: TextIO) -> None:
    """Record and print an ended job; one killed before its point finished counts as failed."""
    path = folder / f"{point.name}.json"
    status = read_status(path) or {}
    if status.get("status") not in ("done", "failed"):  # killed: time limit, memory...
        status.update(status="failed", finished=_now(),
                      error=f"job {job.job_id} ended ({job.state}) before the point finished")
        write_json(path, status)
    secs = status.get("seconds")
    took = f" in {secs:.0f} s" if isinstance(secs, (int, float)) else ""
    if status["status"] == "done":
        result.done.append(point.name)
        print(f"done    {point.label()}{took} (job {job.job_id})", file=out, flush=True)
    else:
        error = f"{status.get('error')}{_log_note(reports, status, job.paths.stdout)}"
        result.failed[point.name] = error
        print(f"FAILED  {point.label()}{took} (job {job.job_id}): {error}", file=out, flush=True)


def _wait_for(waiting: dict[str, tuple[Point, Any]], folder: Path, reports: Path,
              result: SweepResult, poll: float, out: TextIO) -> None:
    """Poll until every job has ended, reporting each as it ends. Ended jobs leave ``waiting`` as
    they go, so after an interruption it holds the jobs still in the queue."""
    while waiting:
        time.sleep(poll)
        for key in list(waiting):
            point, job = waiting[key]
            if not job.done():
                continue
            del waiting[key]
            _report_ended(point, job, folder, reports, result, out)
            _refresh(reports)


def submit_sweep(
    grid: Grid | str | os.PathLike,
    reports: str | os.PathLike | None = None,
    kernel: str = "sslkit",
    settings: SlurmSettings | None = None,
    dry_run: bool = False,
    progress: bool = False,
    notebooks_dir: str | os.PathLike | None = None,
    out: TextIO | None = None,
    cluster: str | None = None,
    poll_seconds: float | None = None,
) -> SweepResult:
    """Submit every point of ``grid`` that is not done (and not still in the queue) as one SLURM
    job, then wait for them and report each; see the module doc. ``settings`` defaults to the grid
    file's ``slurm:`` section. ``cluster``: submitit's cluster name, default
    ``$SSLKIT_SUBMITIT_CLUSTER`` or ``"slurm"``. Returns a :class:`sslkit.sweep.SweepResult`
    (``signum`` set when the waiting was interrupted; the jobs go on)."""
    from .book import _check_kernel

    out = out or sys.stdout
    if not isinstance(grid, Grid):
        grid = load_grid(grid, notebooks_dir)
    settings = settings or SlurmSettings.from_grid(grid.slurm)
    cluster = cluster or os.environ.get(CLUSTER_ENV) or "slurm"
    poll = poll_seconds if poll_seconds is not None else (10.0 if cluster == "slurm" else 0.5)
    reports_path = reports_dir(reports).resolve()
    folder = sweep_dir(grid, reports_path)
    jobs_dir = folder / "slurm"
    records: dict[str, dict] = read_status(jobs_dir / "jobs.json") or {}
    result = SweepResult(name=grid.name, folder=folder, points=grid.points)
    states = [(p, *point_state(p, folder)) for p in grid.points]
    result.skipped = [p.name for p, state, _ in states if state == "done"]
    pending = [(p, state) for p, state, _ in states if state != "done"]
    name = f"sslkit-{grid.name}"

    if dry_run:
        _print_plan(grid, states, records, settings, cluster, folder, name, out)
        return result

    _check_kernel(kernel)
    folder.mkdir(parents=True, exist_ok=True)
    waiting = _still_queued(pending, records, cluster, jobs_dir)
    to_submit = [p for p, _ in pending if p.name not in waiting]
    executor = _executor(jobs_dir, cluster, settings, name) if to_submit else None
    _mark_queued(grid, folder, to_submit, kernel, progress, reports_path, cluster)
    _write_manifest(grid, folder, "running")
    old = _install_handlers()
    try:
        if executor is not None:
            _submit_array(executor, folder, to_submit, records, waiting, cluster)
        print(f"sweep {grid.name}: {len(to_submit)} job(s) submitted, "
              f"{len(waiting) - len(to_submit)} still queued from before, "
              f"{len(result.skipped)} done (skipped); {settings.describe()}; logs in {folder}",
              file=out, flush=True)
        for point, job in waiting.values():
            print(f"  job {job.job_id}  {point.label()}", file=out)
        _wait_for(waiting, folder, reports_path, result, poll, out)
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM turned into SweepInterrupted
        result.signum = getattr(err, "signum", int(signal.SIGINT))
        result.interrupted = list(waiting)
        ids = " ".join(str(job.job_id) for _, job in waiting.values())
        print(f"stopped waiting ({signal.Signals(result.signum).name}): {len(waiting)} job(s) stay "
              f"in the queue ({ids}); rerun the same command to wait for them, or scancel them",
              file=out)
    finally:
        _restore_handlers(old)
        _write_manifest(grid, folder, "interrupted" if result.signum else "finished", result)
        _refresh(reports_path)
    return result
