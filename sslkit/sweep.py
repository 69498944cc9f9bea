"""Parameter sweeps: a grid of notebooks x parameters, executed with papermill.

A grid file (YAML)::

    name: default                 # optional; default: the file's stem
    parameters:                   # optional; given to every entry (an entry's own values win)
      dataset: banking77
    grid:                         # the entries (a file that is only a list is the grid itself)
      - notebook: 01_supervised   # a stem, unique prefix or path (book.resolve_notebook)
        parameters:
          labeled: [0.05, 0.1, 0.2]   # a list: one point per value (cartesian product)
          seed: [0, 1, 2]
          variants: [[adaptive]]      # a list as ONE value: wrap it in another list
    slurm:                        # optional; used only by `--executor slurm` (sslkit.executors)
      partition: gpu
      gpus_per_job: 1

Every grid point runs ``book.run_notebook`` in a worker process, which writes its executed copy,
HTML, log and status into ``reports/sweeps/<grid>/<notebook>-<hash>.{ipynb,html,log,json}``
(``hash`` = :func:`point_hash` of the notebook stem and parameters); run records go to
``reports/runs`` as usual. After each point, reports/ablation.csv/.md (from every run record)
and reports/index.html are rebuilt. Serially on a CPU; with N GPUs, N workers at once, each with
``CUDA_VISIBLE_DEVICES`` set to its own GPU.

* **Skip rule**: a point whose status file says ``done`` (same hash, same parameters) is not run
  again; inside the notebooks ``fit(..., reuse=True)`` also loads finished runs of the same config.
* **Failures**: a failing point is recorded (``status: failed`` and the error) and the sweep goes
  on; :func:`run_sweep` reports it and the command exits 1.
* **Interruption**: SIGINT or SIGTERM stops the sweep: the running workers and their kernels are
  terminated (killed after a grace period), their points are marked ``interrupted`` (never
  ``done``), the index is rebuilt, and the command exits 128 + the signal number. Rerunning the same
  command continues with the points that are not done. Every status file is written atomically,
  as are the trainer's summary.json files, so none is ever left half-written.
* **On a cluster**: ``--executor slurm`` submits the same points as SLURM jobs instead
  (:mod:`sslkit.executors`); they share these status files and so the skip rule.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, TextIO

from .report_index import read_status, sweep_status  # noqa: F401 - sweep_status: re-exported, the sweep API
from .runs import config_hash, read_json, reports_dir, to_json, write_json

__all__ = ["Grid", "Point", "SweepInterrupted", "SweepResult", "expand_grid", "gpu_slots",
           "load_grid", "point_hash", "run_sweep", "sweep_status"]

#: The statuses a point's file can hold; only "done" is skipped by the next run ("queued": submitted
#: to SLURM by sslkit.executors, not started yet).
STATUSES = ("queued", "running", "done", "failed", "interrupted")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Seconds a worker gets to stop after SIGTERM before it is killed.
GRACE_SECONDS = 5.0


class SweepInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a sweep (SIGTERM is handled like Ctrl-C)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


# --------------------------------------------------------------------------- the grid


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def point_hash(stem: str, parameters: dict) -> str:
    """The identity of a grid point: 8 hex digits of the notebook stem and its parameters
    (key order does not matter)."""
    return config_hash({"notebook": stem, "parameters": parameters})


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)) or value is None:
        return json.dumps(value)
    return str(value)


@dataclass
class Point:
    """One notebook with one set of parameters."""

    notebook: Path
    parameters: dict

    @property
    def stem(self) -> str:
        return self.notebook.stem

    @property
    def key(self) -> str:
        return point_hash(self.stem, self.parameters)

    @property
    def name(self) -> str:
        """The base name of its files under reports/sweeps/<grid>/."""
        return f"{self.stem}-{self.key}"

    def label(self) -> str:
        params = " ".join(f"{k}={_format_value(v)}" for k, v in self.parameters.items())
        return f"{self.stem} {params}".strip()


@dataclass
class Grid:
    name: str
    points: list[Point]
    path: Path | None = None
    #: the grid file's ``slurm:`` section (job resources), read by sslkit.executors only
    slurm: dict = field(default_factory=dict)


def _choices(name: str, value: Any, where: str) -> list:
    """The values a parameter takes: a list is one point per element, anything else one value."""
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{where}: parameter '{name}' has an empty list of values")
        return list(value)
    return [value]


def expand_grid(entries: Iterable[dict], notebooks_dir: str | os.PathLike = "notebooks",
                shared: dict | None = None, base_dir: str | os.PathLike | None = None,
                where: str = "grid") -> list[Point]:
    """The points of a list of grid entries: for each entry, the cartesian product of its
    list-valued parameters (the first parameter varies slowest). Points that repeat an earlier
    one (same notebook and parameters) are dropped."""
    from .book import resolve_notebook

    points: list[Point] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"{where}: entry {i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{at}: expected a mapping with 'notebook' and 'parameters', got {entry!r}")
        unknown = set(entry) - {"notebook", "parameters"}
        if unknown:
            raise ValueError(f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                             "(an entry has 'notebook' and 'parameters')")
        if not entry.get("notebook"):
            raise ValueError(f"{at}: no 'notebook'")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise ValueError(f"{at}: 'parameters' must be a mapping, got {params!r}")
        merged = {**(shared or {}), **params}
        for key in merged:
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"{at}: parameter name {key!r} is not a Python identifier")
        name = str(entry["notebook"])
        try:
            notebook = resolve_notebook(name, notebooks_dir)
        except FileNotFoundError:
            if base_dir is None or not (Path(base_dir) / name).is_file():
                raise
            notebook = resolve_notebook(Path(base_dir) / name, notebooks_dir)
        notebook = notebook.resolve()
        keys = list(merged)
        for combo in itertools.product(*[_choices(k, merged[k], at) for k in keys]):
            point = Point(notebook, dict(zip(keys, combo)))
            if point.key not in seen:
                seen.add(point.key)
                points.append(point)
    if not points:
        raise ValueError(f"{where}: the grid has no points")
    return points


def load_grid(path: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None) -> Grid:
    """Read a grid file (see the module doc). Notebook stems are looked up in ``notebooks_dir``
    when given (``--notebooks-dir``), else in the file's own ``notebooks_dir`` (relative to the
    file), else in ./notebooks; a notebook path may also be relative to the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: grid file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    shared: dict = {}
    slurm: dict = {}
    name = path.stem
    folder = notebooks_dir if notebooks_dir is not None else "notebooks"
    if isinstance(data, dict):
        unknown = set(data) - {"name", "parameters", "grid", "notebooks_dir", "slurm"}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                             "(a grid file has name, parameters, notebooks_dir, grid and slurm)")
        name = str(data.get("name") or name)
        shared = data.get("parameters") or {}
        if not isinstance(shared, dict):
            raise ValueError(f"{path}: 'parameters' must be a mapping")
        slurm = data.get("slurm") or {}
        if not isinstance(slurm, dict):
            raise ValueError(f"{path}: 'slurm' must be a mapping (partition, gpus_per_job, time, ...)")
        if data.get("notebooks_dir") and notebooks_dir is None:
            folder = path.parent / str(data["notebooks_dir"])
        entries = data.get("grid")
    else:
        entries = data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of entries (or a mapping with 'grid:'), "
                         f"got {type(entries).__name__}")
    if not _NAME.match(name):
        raise ValueError(f"{path}: grid name '{name}' may only use letters, digits, '_', '-', '.'")
    points = expand_grid(entries, folder, shared=shared, base_dir=path.parent, where=str(path))
    return Grid(name=name, points=points, path=path, slurm=slurm)


# --------------------------------------------------------------------------- status files


def sweep_dir(grid: Grid | str, reports: str | os.PathLike | None = None) -> Path:
    name = grid.name if isinstance(grid, Grid) else str(grid)
    return reports_dir(reports) / "sweeps" / name


def _same_params(a: Any, b: Any) -> bool:
    return to_json(a) == to_json(b)


def point_state(point: Point, folder: Path) -> tuple[str, dict | None]:
    """("done" | "failed" | "interrupted" | "running" | "new", status dict) of a point."""
    status = read_status(folder / f"{point.name}.json")
    if status is None or status.get("hash") != point.key \
            or not _same_params(status.get("parameters"), point.parameters):
        return "new", None
    state = status.get("status")
    return (state if state in STATUSES else "new"), status


# --------------------------------------------------------------------------- devices and workers


def gpu_slots(gpus: int | None = None) -> list[str | None]:
    """One entry per worker: the CUDA_VISIBLE_DEVICES value of each GPU, or ``[None]`` (one
    worker, devices untouched) on a machine without GPUs or with ``gpus=0``. ``gpus=None``
    counts them with ``torch.cuda.device_count()``; an inherited CUDA_VISIBLE_DEVICES list is
    respected (its entries are handed out)."""
    if gpus is not None and gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    if gpus == 0:
        return [None]
    if gpus is None:
        try:
            import torch

            gpus = torch.cuda.device_count()
        except Exception:  # pragma: no cover - a broken CUDA setup runs on the CPU
            gpus = 0
    if not gpus:
        return [None]
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible:
        if gpus > len(visible):
            raise ValueError(f"{gpus} GPU workers asked for, but CUDA_VISIBLE_DEVICES lists only "
                             f"{len(visible)}: {','.join(visible)}")
        return visible[:gpus]
    return [str(i) for i in range(gpus)]


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


def _terminate(procs: list, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``timeout`` (psutil processes)."""
    if not procs:
        return
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)


@dataclass
class _Worker:
    proc: subprocess.Popen
    point: Point
    slot: str | None
    started: float
    log: TextIO


def _launch(point: Point, slot: str | None, folder: Path, reports: Path, kernel: str,
            progress: bool, grid: str) -> _Worker:
    status_path = folder / f"{point.name}.json"
    previous = read_status(status_path) or {}
    write_json(status_path, {
        "grid": grid, "point": point.name, "hash": point.key, "notebook": point.stem,
        "source": str(point.notebook), "parameters": point.parameters, "status": "running",
        "error": None, "started": _now(), "finished": None, "seconds": None, "gpu": slot,
        "attempt": int(previous.get("attempt") or 0) + 1, "kernel": kernel, "progress": progress,
        "reports": str(reports), "executed": f"sweeps/{grid}/{point.name}.ipynb",
        "html": f"sweeps/{grid}/{point.name}.html", "log": f"sweeps/{grid}/{point.name}.log",
    })
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    log = open(folder / f"{point.name}.log", "w", encoding="utf-8")
    cmd = [sys.executable, "-m", "sslkit.sweep", "--run-point", str(status_path),
           "--parent", str(os.getpid())]
    # a session of its own: a Ctrl-C in the terminal reaches only this process, which stops the
    # workers and their kernels in order
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    return _Worker(proc=proc, point=point, slot=slot, started=time.time(), log=log)


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _finish(worker: _Worker, folder: Path, rc: int) -> dict:
    """The status of a worker that exited by itself (it wrote done/failed; a crash is recorded)."""
    worker.log.close()
    path = folder / f"{worker.point.name}.json"
    status = read_status(path) or {}
    if (rc == 0 and status.get("status") == "done") or (rc == 1 and status.get("status") == "failed"):
        return status
    tail = _log_tail(folder / f"{worker.point.name}.log")
    status.update(status="failed", finished=_now(), seconds=round(time.time() - worker.started, 3),
                  error=f"worker exited with code {rc}" + (f": {tail.splitlines()[-1]}" if tail else ""))
    write_json(path, status)
    return status


def _stop(worker: _Worker, folder: Path) -> dict:
    """Stop a running worker and its kernel; its point becomes ``interrupted`` unless it had just
    finished."""
    kids = _descendants(worker.proc.pid)  # the papermill kernel (its own session) among them
    if worker.proc.poll() is None:
        try:
            worker.proc.terminate()
        except OSError:
            pass
    _terminate(kids)
    try:
        worker.proc.wait(GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        worker.proc.wait()
    _terminate(_descendants(worker.proc.pid) + kids, timeout=1.0)
    worker.log.close()
    path = folder / f"{worker.point.name}.json"
    status = read_status(path) or {}
    if worker.proc.returncode == 0 and status.get("status") == "done":
        return status
    status.update(status="interrupted", finished=_now(),
                  seconds=round(time.time() - worker.started, 3),
                  error="interrupted (the sweep was stopped); rerun the sweep to run it again")
    write_json(path, status)
    return status


# --------------------------------------------------------------------------- the sweep


def _refresh(reports: Path) -> None:
    """After each point: reports/ablation.csv/.md from every run record, then index.html."""
    from .ablation import write_ablation
    from .report_index import build_index
    from .runs import load_runs

    try:
        runs = load_runs(reports)
        if len(runs):
            write_ablation(runs, reports)
    except Exception as err:  # the report must never stop a sweep
        print(f"sweep: could not refresh the ablation files: {type(err).__name__}: {err}",
              file=sys.stderr)
    build_index(reports)


@dataclass
class SweepResult:
    name: str
    folder: Path
    points: list[Point]
    skipped: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: list[str] = field(default_factory=list)
    signum: int | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.signum is None


def _write_manifest(grid: Grid, folder: Path, state: str, result: SweepResult | None = None) -> None:
    data = {"name": grid.name, "grid_file": str(grid.path) if grid.path else None,
            "points": [p.name for p in grid.points],
            "labels": {p.name: p.label() for p in grid.points}, "state": state, "updated": _now()}
    if result is not None:
        data.update(skipped=len(result.skipped), done=len(result.done), failed=len(result.failed),
                    interrupted=len(result.interrupted))
    write_json(folder / "sweep.json", data)


def _install_handlers():
    """SIGTERM raises SweepInterrupted like SIGINT does; returns the previous handlers."""
    def handler(signum, frame):
        raise SweepInterrupted(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return old


def _restore_handlers(old: dict) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)


def _where(slots: list) -> str:
    return "CPU, 1 worker" if slots == [None] else \
        f"{len(slots)} GPU worker(s): CUDA_VISIBLE_DEVICES={','.join(slots)}"


def _print_plan(grid: Grid, states: list, folder: Path, n_todo: int, slots: list, out: TextIO) -> None:
    """The dry run: every point, whether it would run or is skipped, and which worker takes it."""
    print(f"sweep {grid.name}: {len(grid.points)} point(s), {n_todo} to run, "
          f"{len(grid.points) - n_todo} done (skipped) -> {folder}; {_where(slots)}", file=out)
    k = 0
    for point, state, status in states:
        verb = "skip" if state == "done" else "run "
        status = status or {}
        note = {"done": f"done {status.get('finished') or ''}".strip(),
                "failed": f"failed before: {status.get('error')}",
                "interrupted": "interrupted before",
                "queued": "queued on SLURM before (still there? see `squeue`)",
                "running": "marked running (a sweep still going, or one that was killed)",
                "new": "new"}[state]
        gpu = ""
        if state != "done" and slots != [None]:  # the first free worker takes the next point
            gpu = f" gpu={slots[k % len(slots)]}"
            k += 1
        print(f"  {verb}  {point.label()}  [{point.name}; {note}]{gpu}", file=out)


def _report(worker: _Worker, status: dict, result: SweepResult, bar, out: TextIO) -> None:
    """One finished point: into the result, one line out, the bar advanced."""
    bar.update(1)
    secs = status.get("seconds")
    took = f" in {secs:.0f} s" if isinstance(secs, (int, float)) else ""
    if status.get("status") == "done":
        result.done.append(worker.point.name)
        bar.write(f"done    {worker.point.label()}{took}", file=out)
    else:
        result.failed[worker.point.name] = str(status.get("error"))
        bar.write(f"FAILED  {worker.point.label()}{took}: {status.get('error')}", file=out)
    bar.set_postfix(failed=len(result.failed))


def _stop_all(running: dict, folder: Path, result: SweepResult) -> None:
    """Stop every running worker; a point that finished meanwhile still counts as done."""
    for worker in running.values():
        status = _stop(worker, folder)
        if status.get("status") == "done":
            result.done.append(worker.point.name)
        else:
            result.interrupted.append(worker.point.name)
    running.clear()


def run_sweep(
    grid: Grid | str | os.PathLike,
    reports: str | os.PathLike | None = None,
    kernel: str = "sslkit",
    gpus: int | None = None,
    dry_run: bool = False,
    progress: bool = False,
    notebooks_dir: str | os.PathLike | None = None,
    out: TextIO | None = None,
    poll_seconds: float = 0.2,
) -> SweepResult:
    """Run every point of ``grid`` (a :class:`Grid` or a grid file) that is not done yet.

    ``gpus``: workers = GPUs (default ``torch.cuda.device_count()``; 0 or no GPU: one worker on the
    CPU). ``dry_run``: only print what would run, is skipped, and on which GPU. ``progress``: bars
    inside the notebooks (into each point's .log). Lines per point go to ``out`` (stdout), the bar
    over points to stderr. An interrupted sweep returns with ``signum`` set (see the module doc).
    """
    from tqdm import tqdm

    from .book import _check_kernel

    out = out or sys.stdout
    if not isinstance(grid, Grid):
        grid = load_grid(grid, notebooks_dir)
    reports_path = reports_dir(reports).resolve()
    folder = sweep_dir(grid, reports_path)
    result = SweepResult(name=grid.name, folder=folder, points=grid.points)
    states = [(p, *point_state(p, folder)) for p in grid.points]
    todo = [p for p, state, _ in states if state != "done"]
    result.skipped = [p.name for p, state, _ in states if state == "done"]

    if dry_run:
        _print_plan(grid, states, folder, len(todo), gpu_slots(gpus), out)
        return result

    _check_kernel(kernel)
    slots = gpu_slots(gpus)
    folder.mkdir(parents=True, exist_ok=True)
    _write_manifest(grid, folder, "running")
    print(f"sweep {grid.name}: {len(todo)} to run, {len(result.skipped)} done (skipped); {_where(slots)}; "
          f"logs in {folder}", file=out, flush=True)

    queue = list(todo)
    running: dict[int, _Worker] = {}
    bar = tqdm(total=len(grid.points), initial=len(result.skipped), desc=f"sweep {grid.name}",
               unit="point", file=sys.stderr, disable=None, dynamic_ncols=True)
    old = _install_handlers()
    try:
        while queue or running:
            for i, slot in enumerate(slots):
                if i not in running and queue:
                    running[i] = _launch(queue.pop(0), slot, folder, reports_path, kernel, progress,
                                         grid.name)
            time.sleep(poll_seconds)
            for i in list(running):
                rc = running[i].proc.poll()
                if rc is None:
                    continue
                worker = running.pop(i)
                _report(worker, _finish(worker, folder, rc), result, bar, out)
                _refresh(reports_path)
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM turned into SweepInterrupted
        result.signum = getattr(err, "signum", int(signal.SIGINT))
        for sig in old:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        _stop_all(running, folder, result)
        bar.write(f"interrupted ({signal.Signals(result.signum).name}): "
                  f"{len(result.interrupted)} point(s) stopped, {len(queue)} not started; "
                  "rerun the same command to continue", file=out)
    finally:
        for worker in running.values():  # an unexpected error: leave no worker behind
            _stop(worker, folder)
        bar.close()
        try:
            _write_manifest(grid, folder, "interrupted" if result.signum else "finished", result)
            _refresh(reports_path)
        finally:
            _restore_handlers(old)
    return result


# --------------------------------------------------------------------------- the worker process


def _watch_parent(parent: int) -> None:
    """Exit (and take the kernel along) when the sweep process is gone, e.g. killed with -9."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            _terminate(_descendants(os.getpid()), timeout=2.0)
            os._exit(3)


def _run_point(status_path: Path, parent: int | None = None) -> int:
    """Execute one point (the worker's job): 0 done, 1 failed; the status file says which."""
    import logging

    from .book import _describe_error, run_notebook

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if parent:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    status = read_json(status_path)
    folder = status_path.parent
    started = time.time()
    try:
        run_notebook(status["source"], status["parameters"], status["reports"],
                     kernel=status.get("kernel") or "sslkit", progress=bool(status.get("progress")),
                     log_output=True, output=folder / f"{status['point']}.ipynb", timings=False)
        status.update(status="done", error=None)
        rc = 0
    except Exception as err:
        status.update(status="failed", error=_describe_error(err))
        print(f"point failed: {status['error']}", flush=True)
        rc = 1
    status.update(finished=_now(), seconds=round(time.time() - started, 3))
    write_json(status_path, status)
    return rc


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sslkit.sweep",
                                description="a sweep's worker (started by `sslkit sweep`)")
    p.add_argument("--run-point", required=True, help="the point's status file")
    p.add_argument("--parent", type=int, default=None, help="the sweep's pid (exit when it dies)")
    args = p.parse_args(argv)
    return _run_point(Path(args.run_point), args.parent)


if __name__ == "__main__":  # pragma: no cover - the worker entry point
    raise SystemExit(_main())
