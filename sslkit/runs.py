"""Run records on disk: reports/runs/<run_id>/{config.json, metrics.jsonl, summary.json, ...}.

A run's identity is the hash of :func:`run_config`: the data budget, the backbone, the method's
knobs, the optimisation settings, the device kind and precision, and :data:`RECORD_VERSION`. Two
runs of the same identity compute the same result, so a finished record is reused instead of
retrained. :data:`RECORD_VERSION` is bumped whenever a change to the code alters results: older
records then stop matching and are retrained; no setting is ever left out of the hash to keep them.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves half a JSON file. :func:`load_runs` turns all summaries into one
DataFrame; the index page and the ablation notebook are built from it, never from typed numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

#: Bumped by every change that alters what a run computes (see the module docstring).
RECORD_VERSION = 2
#: The epoch checkpoint a run resumes from (deleted when the run finishes).
LAST_STATE = "last_epoch.pt"


def reports_dir(path: str | os.PathLike | None = None) -> Path:
    """The reports folder: the argument, else $SSLKIT_REPORTS, else ./reports."""
    return Path(path or os.environ.get("SSLKIT_REPORTS") or "reports")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default(obj: Any):
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_default)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dataclass_values(obj: Any) -> dict:
    """A dataclass's fields as a dict, with ints given to float fields stored as floats: 1 and 1.0
    are the same setting, and must give the same configuration hash (and so the same run id)."""
    from dataclasses import fields

    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if isinstance(value, int) and not isinstance(value, bool) and kind.split("|")[0].strip() == "float":
            value = float(value)
        out[f.name] = value
    return out


def budget_tag(budget) -> str:
    """The budget as it appears in a run id: a labeled fraction, labels per class, or "natural";
    labels bought by a query strategy carry its name ("0.05-margin"), so tables never mix them with
    a random stratified split of the same size."""
    chosen = getattr(budget, "chosen_by", "")
    if budget.labeled_fraction is not None:
        return f"{budget.labeled_fraction:g}" + (f"-{chosen}" if chosen else "")
    if budget.per_class is not None:
        return f"{budget.per_class}pc"
    return "natural"


def run_config(model, budget, method, config, *, device: str = "cpu", precision: str = "no") -> dict:
    """Everything that decides a run's result (its identity: the run id hashes it). ``config`` is a
    :class:`sslkit.trainer.TrainConfig`, whose precision is recorded as resolved (``precision``)."""
    from dataclasses import asdict

    train = dataclass_values(config)
    train["mixed_precision"] = precision
    return {
        "record_version": RECORD_VERSION,
        "dataset": budget.dataset,
        "budget": budget.describe(),
        "backbone": {k: v for k, v in asdict(model.info).items() if k not in ("label_names", "path")},
        "method": method.config(),
        "train": train,
        "device": device,
    }


def run_identity(rconf: dict) -> str:
    """The hash of a :func:`run_config`."""
    return config_hash(rconf)


def finished_record(run_dir: str | os.PathLike, identity: str) -> dict | None:
    """A finished run of this identity in ``run_dir`` (summary + checkpoint on disk), loaded as the
    ``summary``, ``history`` and ``model`` of a RunResult; None if there is none."""
    from .backbones import load_saved_backbone

    run_dir = Path(run_dir)
    try:
        config = read_json(run_dir / "config.json")
        summary = read_json(run_dir / "summary.json")
    except (OSError, ValueError):
        return None
    if config.get("identity") != identity or not (run_dir / "checkpoint").is_dir():
        return None
    return {"summary": summary, "history": read_metrics(run_dir), "model": load_saved_backbone(run_dir / "checkpoint")}


def versions() -> dict:
    """The versions of Python and of the packages that compute a run, for its config.json."""
    import platform

    import accelerate
    import numpy as np
    import peft
    import torch
    import transformers

    from ._version import __version__

    return {"sslkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "numpy": np.__version__}


def peak_memory_mb(device) -> dict:
    """The process's peak resident memory, and the GPU's peak allocation on a CUDA device, in MB."""
    import resource

    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def config_hash(config: dict, length: int = 8) -> str:
    """A short stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=_default, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:length]


class MetricsLog:
    """Append-only metrics.jsonl (one JSON object per line); flushed after every line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_default, ensure_ascii=False) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash: ignore, it is re-logged on resume
                    continue
        return rows

    def truncate_after(self, epoch: int) -> None:
        """Keep only lines of epochs <= ``epoch`` (used when resuming from an epoch checkpoint)."""
        rows = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r, default=_default, ensure_ascii=False) + "\n"
                                             for r in rows))


def read_metrics(run_dir: str | os.PathLike) -> pd.DataFrame:
    """metrics.jsonl of one run as a DataFrame."""
    return pd.DataFrame(MetricsLog(Path(run_dir) / "metrics.jsonl").read())


def flatten(obj: dict, prefix: str = "") -> dict:
    """{"test": {"accuracy": 0.9}} -> {"test.accuracy": 0.9}."""
    out: dict = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def runs_folder(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the run records: ``<root>/runs`` for a reports folder, or ``root``
    itself when it is a runs folder already (its subfolders hold summary.json files)."""
    base = reports_dir(root)
    if (base / "runs").is_dir() or root is None:
        return base / "runs"
    if base.is_dir() and any((p / "summary.json").is_file() for p in base.iterdir() if p.is_dir()):
        return base
    return base / "runs"


def iter_run_dirs(root: str | os.PathLike | None = None) -> Iterable[Path]:
    """The run folders with a summary.json under a reports folder (or a runs folder)."""
    runs = runs_folder(root)
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if (p / "summary.json").is_file())


#: config.json keys that identify a run or do not change its result; left out of ``knobs``.
_IDENTITY = {"run_id", "label", "notebook", "identity", "versions", "dataset", "budget", "seed", "backbone",
             "method", "record_version", "device"}
_HOUSEKEEPING = {"train.seed", "backbone.name", "backbone.num_labels", "backbone.model_type", "backbone.kind",
                 "method.name"}


def run_knobs(config: dict) -> dict:
    """The settings of a run's config.json that may differ between variants of one method, flat:
    ``{"method.threshold": "fixed", "train.lr": 0.002, "backbone.lora.r": 16, ...}``.

    Identity fields (dataset, budget, seed, backbone name, method name) and settings that do not
    change results (device, logging, checkpoint saving) are left out. A trainer record nests its
    settings under method / train / backbone; a flat record (the frozen-embedding references)
    contributes its remaining top-level keys (e.g. ``C``, ``max_length``).
    """
    if not isinstance(config, dict):
        return {}
    out: dict = {}
    nested = False
    for part in ("method", "train", "backbone"):
        if isinstance(config.get(part), dict):
            nested = True
            out.update(flatten(config[part], f"{part}."))
    if not nested:
        out = {k: v for k, v in config.items() if k not in _IDENTITY}
    return {k: v for k, v in out.items() if k not in _HOUSEKEEPING}


def load_runs(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per finished run (every summary.json under ``root``: a reports folder, default
    $SSLKIT_REPORTS or ./reports, or its runs/ folder), with flattened columns such as
    ``test.accuracy``, ``test.macro_f1``, ``dev.macro_f1``, ``minutes``, the run's ``run_dir``,
    and from its config.json ``identity`` and ``knobs`` (:func:`run_knobs` as a JSON string
    with sorted keys, so runs of the same settings compare equal; None without a config.json)."""
    rows = []
    for run_dir in iter_run_dirs(root):
        try:
            summary = read_json(run_dir / "summary.json")
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(summary, dict):
            continue
        flat = flatten(summary)
        flat["run_dir"] = str(run_dir)
        try:
            config = read_json(run_dir / "config.json")
        except (OSError, json.JSONDecodeError):
            config = None
        if isinstance(config, dict):
            flat["identity"] = config.get("identity")
            flat["knobs"] = json.dumps(run_knobs(config), sort_keys=True, default=_default,
                                       ensure_ascii=False)
        else:
            flat["identity"] = flat["knobs"] = None
        rows.append(flat)
    columns = ["run_id", "notebook", "dataset", "budget", "method", "backbone", "seed",
               "test.accuracy", "test.macro_f1", "minutes"]
    if not rows:
        return pd.DataFrame(columns=columns + ["run_dir", "identity", "knobs"])
    df = pd.DataFrame(rows)
    first = [c for c in columns if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def read_traces(run_dir: str | os.PathLike) -> pd.DataFrame:
    """traces.jsonl (per step: tau and every tau_c) as a DataFrame; tau_c stays a list per row."""
    return pd.DataFrame(MetricsLog(Path(run_dir) / "traces.jsonl").read())


def read_rounds(run_dir: str | os.PathLike) -> pd.DataFrame:
    """rounds.jsonl as one row per (round, class): candidates, selected, precision, pool size."""
    rows = []
    for r in MetricsLog(Path(run_dir) / "rounds.jsonl").read():
        for c in r.get("per_class", []):
            rows.append({"round": r["round"], "epoch": r["epoch"], "pool": r["pool"], **c})
    return pd.DataFrame(rows, columns=["round", "epoch", "pool", "class", "candidates", "selected", "precision"])
