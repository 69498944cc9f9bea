"""Experiment tracking: a run's configuration, curves and final scores in MLflow or TensorBoard.

The run records under ``reports/runs`` stay the source of truth (the index and the ablation are
built from them); a tracker adds a browsable, searchable view of many runs. :class:`Tracker` is a
thin layer over accelerate's own trackers (``accelerate.tracking.MLflowTracker`` and
``TensorBoardTracker``). In a distributed run only the main process writes (accelerate's
``PartialState``); the other ranks' trackers do nothing, so every rank may make the same calls. The trainer calls it in four lines::

    tracker = Tracker().start(run_id, config)          # kind from $SSLKIT_TRACKER; off when unset
    tracker.log({"loss": 0.41, "dev_macro_f1": 0.83}, step=120)   # each logged step / epoch
    tracker.log_artifact(run_dir / "confusion.png")     # optional: a figure (MLflow only)
    tracker.finish(summary)                              # final dev/test scores, then close

Stores, both embedded (no server):

* ``mlflow``: ``MLFLOW_TRACKING_URI`` when set (a team's server, e.g. ``http://mlflow:5000``),
  else SQLite in ``reports/mlruns/mlflow.db`` with the artifacts in ``reports/mlruns/artifacts``
  (MLflow 3 keeps its plain-file store in maintenance mode, and SQLite needs no service).
  Browse: ``mlflow ui --backend-store-uri sqlite:///reports/mlruns/mlflow.db``.
  Experiment: ``MLFLOW_EXPERIMENT_NAME``, else ``sslkit``; the MLflow run is named after the run id
  and tagged ``sslkit.run_id`` / ``sslkit.notebook``; starting a run id whose MLflow run never
  finished (a resumed training) continues that MLflow run.
* ``tensorboard``: event files in ``reports/tensorboard/<run_id>/``.
  Browse: ``tensorboard --logdir reports/tensorboard``.

Tracking never stops a training: once started, a failing call (a server gone away) is reported
once as a warning and the tracker goes quiet. mlflow and tensorboardX are imported only when a
tracker starts, so ``import sslkit`` stays fast.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from contextlib import contextmanager, nullcontext
from numbers import Real
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .runs import reports_dir

__all__ = ["Tracker", "KINDS", "flatten", "mlflow_uri"]

#: The trackers a :class:`Tracker` can drive.
KINDS = ("mlflow", "tensorboard")
#: The environment variable read by ``Tracker()`` (comma-separated kinds; empty or "none": off).
ENV = "SSLKIT_TRACKER"


def flatten(values: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: trackers take flat key/value pairs."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, sep, name))
        else:
            out[name] = value
    return out


def _param(value: Any) -> str | int | float | bool:
    """A configuration value as a tracker parameter (lists, None, paths: as JSON text)."""
    if isinstance(value, (bool, str)) or (isinstance(value, Real) and not isinstance(value, bool)):
        return value if isinstance(value, (bool, str, int, float)) else float(value)
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among ``values`` (nested keys joined by "/"), as floats; text, None and
    booleans are left out (they are not curves)."""
    return {k: float(v) for k, v in flatten(values, "/").items()
            if isinstance(v, Real) and not isinstance(v, bool)}


def _kinds(kind: str | Sequence[str] | None) -> list[str]:
    if kind == "auto":
        kind = os.environ.get(ENV, "")
    if kind is None:
        return []
    names = [k.strip().lower() for k in (kind.split(",") if isinstance(kind, str) else kind)]
    names = [k for k in names if k and k != "none"]
    unknown = sorted(set(names) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown tracker {', '.join(unknown)} (known: {', '.join(KINDS)}, or None)")
    return list(dict.fromkeys(names))


def _main_process() -> bool:
    """Rank 0, as accelerate sees it (its trackers need its state anyway: the trainer's
    Accelerator made it, or this makes a single-process one)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def mlflow_uri(reports: str | os.PathLike | None = None) -> str:
    """Where MLflow writes: ``$MLFLOW_TRACKING_URI``, else ``reports/mlruns/mlflow.db`` (SQLite)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(reports_dir(reports).resolve() / 'mlruns' / 'mlflow.db').as_posix()}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: parallel sweep workers must not create the SQLite tables or
    the experiment twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, and a rare race
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Tracker:
    """One run's tracking in MLflow and/or TensorBoard (see the module doc).

    ``kind``: ``"mlflow"``, ``"tensorboard"``, both (a list or ``"mlflow,tensorboard"``), ``None``
    (off: every method does nothing), or ``"auto"`` (the default: ``$SSLKIT_TRACKER``, off when
    unset, so a sweep turns tracking on with ``SSLKIT_TRACKER=mlflow sslkit sweep ...`` and no
    notebook changes). ``reports``: the reports folder of the local stores (default
    ``$SSLKIT_REPORTS`` or ./reports). ``experiment``: the MLflow experiment (default
    ``$MLFLOW_EXPERIMENT_NAME`` or ``sslkit``).
    """

    def __init__(self, kind: str | Sequence[str] | None = "auto",
                 reports: str | os.PathLike | None = None, experiment: str | None = None):
        self.kinds = _kinds(kind)
        self.reports = reports_dir(reports).resolve()
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "sslkit"
        self.trackers: list[Any] = []  # accelerate's GeneralTracker objects, once started
        self.run_id: str | None = None
        self.mlflow_run_id: str | None = None  # the MLflow run's own id (for MlflowClient)
        self._last_step = 0

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)

    def start(self, run_id: str, config: Mapping[str, Any]) -> "Tracker":
        """Open the run ``run_id`` in each tracker and log ``config`` (nested keys joined by ".")
        as its parameters; returns self. Errors here raise (a missing package: ImportError with
        the pip line; an unreachable server): they come before any training, unlike later ones."""
        self.run_id = run_id
        params = {k: _param(v) for k, v in flatten(config).items()}
        for kind in self.kinds if _main_process() else []:
            tracker = self._mlflow(run_id) if kind == "mlflow" else self._tensorboard(run_id)
            self.trackers.append(tracker)
            tracker.store_init_configuration(params)
        return self

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the numbers of ``metrics`` (nested keys joined by "/") at training step ``step``."""
        self._last_step = max(self._last_step, int(step))
        values = _scalars(metrics)
        if values:
            for tracker in list(self.trackers):
                self._call(tracker, "log", values, step=int(step))

    def log_artifact(self, path: str | os.PathLike) -> None:
        """Attach a file (a figure, predictions.csv) to the MLflow run; TensorBoard has no place
        for files, so it ignores it."""
        for tracker in list(self.trackers):
            if tracker.name == "mlflow":
                self._call(tracker, "log_artifact", str(path))

    def finish(self, summary: Mapping[str, Any] | None = None) -> None:
        """Log the final scores of ``summary`` (e.g. ``{"dev": {"macro_f1": ...}, "test": {...}}``
        -> ``dev/macro_f1``, ``test/macro_f1``, plus its other numbers) at the last step, then close
        every tracker."""
        values = {k: v for k, v in _scalars(summary or {}).items() if math.isfinite(v)}
        for tracker in list(self.trackers):
            if values:
                self._call(tracker, "log", values, step=self._last_step)
            self._call(tracker, "finish")
        self.trackers = []

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.trackers:  # an exception inside the block: close the run anyway
            self.finish()

    # ------------------------------------------------------------------ the stores

    def _call(self, tracker: Any, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(tracker, method)(*args, **kwargs)
        except Exception as err:
            warnings.warn(f"tracking: {tracker.name} {method} failed, {tracker.name} is off for "
                          f"run {self.run_id}: {type(err).__name__}: {err}", RuntimeWarning,
                          stacklevel=3)
            if tracker in self.trackers:
                self.trackers.remove(tracker)

    def _mlflow(self, run_id: str) -> Any:
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ImportError(f"the mlflow tracker needs mlflow-skinny: pip install mlflow-skinny "
                              f"({err})") from None
        from accelerate.tracking import MLflowTracker

        uri = mlflow_uri(self.reports)
        local = "MLFLOW_TRACKING_URI" not in os.environ
        mlflow.set_tracking_uri(uri)
        with _locked(self.reports / "mlruns" / ".lock") if local else nullcontext():
            client = MlflowClient(uri)  # a new SQLite store creates its tables here
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                artifacts = (self.reports / "mlruns" / "artifacts").as_uri() if local else None
                try:
                    client.create_experiment(self.experiment, artifact_location=artifacts)
                except Exception:  # created meanwhile by another run (a shared server)
                    pass
                experiment = client.get_experiment_by_name(self.experiment)
        active = mlflow.active_run()
        if active is not None and "sslkit.run_id" in active.data.tags:
            mlflow.end_run("KILLED")  # an earlier fit in this kernel that raised before finish()
            active = None
        unfinished = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`sslkit.run_id` = '{run_id}' and "
                                                      "attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        tracker = MLflowTracker(experiment_name=self.experiment, run_name=run_id,
                                run_id=unfinished[0].info.run_id if unfinished else None,
                                nested_run=active is not None,  # inside the user's own run
                                tags={"sslkit.run_id": run_id,
                                      "sslkit.notebook": os.environ.get("SSLKIT_NOTEBOOK") or ""})
        tracker.start()
        self.mlflow_run_id = tracker.active_run.info.run_id if tracker.active_run else None
        return tracker

    def _tensorboard(self, run_id: str) -> Any:
        from accelerate.tracking import TensorBoardTracker

        tracker = TensorBoardTracker(run_id, self.reports / "tensorboard")
        try:
            tracker.start()
        except ImportError as err:
            raise ImportError(f"the tensorboard tracker needs tensorboardX (or tensorboard): "
                              f"pip install tensorboardX ({err})") from None
        return tracker
