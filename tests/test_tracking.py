"""sslkit.tracking: what a Tracker logs reads back from the local MLflow store (MlflowClient) and
from TensorBoard's event files; no tracker, or a failing one, never stops a run."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sslkit.tracking import Tracker, flatten, mlflow_uri

CONFIG = {"dataset": "banking77", "labeled": 0.1, "seed": 0, "method": {"name": "self_training",
          "tau0": 0.8, "variants": ["adaptive", "fixed"]}, "head_lr": None}
CURVE = [(10, {"loss": 1.5, "lr": 2e-3}), (20, {"loss": 1.1, "lr": 1.9e-3}),
         (30, {"loss": 0.7, "lr": 1.5e-3, "dev": {"macro_f1": 0.61}, "note": "text is skipped"})]
SUMMARY = {"run_id": "banking77-10pct-st-0", "dev": {"accuracy": 0.82, "macro_f1": 0.8},
           "test": {"accuracy": 0.79, "macro_f1": 0.77}, "minutes": 1.5, "stopped_early": False}


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS",
                 "MLFLOW_NESTED_RUN", "SSLKIT_TRACKER", "SSLKIT_REPORTS"):
        monkeypatch.delenv(name, raising=False)


def _train(tracker: Tracker, run_id: str, tmp_path: Path) -> None:
    """What the trainer does: four calls."""
    figure = tmp_path / "confusion.png"
    figure.write_bytes(b"\x89PNG not really")
    tracker.start(run_id, CONFIG)
    for step, metrics in CURVE:
        tracker.log(metrics, step=step)
    tracker.log_artifact(figure)
    tracker.finish(SUMMARY)


def test_kinds_and_off(clean_env, monkeypatch, tmp_path):
    assert not Tracker().enabled and not Tracker(None).enabled
    off = Tracker(None, reports=tmp_path)
    off.start("x", CONFIG).log({"loss": 1.0}, step=1)  # nothing is written, nothing imported
    off.finish({"dev": {"macro_f1": 1.0}})
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("SSLKIT_TRACKER", "mlflow, tensorboard")
    assert Tracker().kinds == ["mlflow", "tensorboard"]
    monkeypatch.setenv("SSLKIT_TRACKER", "none")
    assert Tracker().kinds == []
    with pytest.raises(ValueError, match="unknown tracker wandb"):
        Tracker("wandb")
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}, "/") == {"a/b": 1, "a/c/d": 2, "e": 3}


def test_mlflow_local_store_reads_back(clean_env, tmp_path):
    from mlflow.tracking import MlflowClient

    reports = tmp_path / "reports"
    tracker = Tracker("mlflow", reports=reports)
    _train(tracker, "banking77-10pct-st-0", tmp_path)
    uri = mlflow_uri(reports)
    assert uri == f"sqlite:///{reports.resolve()}/mlruns/mlflow.db" and (reports / "mlruns" / "mlflow.db").is_file()
    client = MlflowClient(uri)
    run = client.get_run(tracker.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "banking77-10pct-st-0"
    assert run.data.tags["sslkit.run_id"] == "banking77-10pct-st-0"
    assert client.get_experiment(run.info.experiment_id).name == "sslkit"
    assert run.data.params == {"dataset": "banking77", "labeled": "0.1", "seed": "0",
                               "method.name": "self_training", "method.tau0": "0.8",
                               "method.variants": '["adaptive", "fixed"]', "head_lr": "null"}
    for key in ("loss", "lr"):
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(history) == [(step, m[key]) for step, m in CURVE]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "dev/macro_f1")] \
        == [(30, 0.61), (30, 0.8)]  # the curve's point, then the final score at the last step
    final = run.data.metrics  # the latest value of each
    assert final["dev/macro_f1"] == 0.8 and final["test/macro_f1"] == 0.77
    assert final["test/accuracy"] == 0.79 and final["minutes"] == 1.5
    assert "note" not in final and "stopped_early" not in final
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["confusion.png"]
    assert list((reports / "mlruns" / "artifacts").rglob("confusion.png"))

    # a run id whose MLflow run never finished (the training was killed) continues that run
    again = Tracker("mlflow", reports=reports).start("banking77-10pct-st-1", CONFIG)
    again.log({"loss": 2.0}, step=5)  # ... and the process dies here, no finish()
    resumed = Tracker("mlflow", reports=reports).start("banking77-10pct-st-1", CONFIG)
    assert resumed.mlflow_run_id == again.mlflow_run_id != tracker.mlflow_run_id
    resumed.log({"loss": 1.0}, step=6)
    resumed.finish({"test": {"macro_f1": 0.5}})
    assert [m.value for m in client.get_metric_history(resumed.mlflow_run_id, "loss")] == [2.0, 1.0]
    assert client.get_run(resumed.mlflow_run_id).info.status == "FINISHED"


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of TensorBoard event files (TFRecord: length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for file in folder.rglob("events.out.tfevents.*"):
        data = file.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, round(value.simple_value, 6)))
    return out


def test_tensorboard_event_files(clean_env, tmp_path):
    reports = tmp_path / "reports"
    _train(Tracker("tensorboard", reports=reports), "run-tb", tmp_path)
    folder = reports / "tensorboard" / "run-tb"
    assert list(folder.glob("events.out.tfevents.*")), list(folder.rglob("*"))
    scalars = _events(folder)
    assert scalars["loss"] == [(10, 1.5), (20, 1.1), (30, 0.7)]
    assert scalars["dev/macro_f1"] == [(30, 0.61), (30, 0.8)]
    assert scalars["test/macro_f1"] == [(30, 0.77)]
    assert list(folder.rglob("hparams.yml"))  # the configuration, beside the curves


def test_a_failing_tracker_warns_and_goes_quiet(clean_env, tmp_path):
    tracker = Tracker("tensorboard", reports=tmp_path).start("run-x", CONFIG)

    def broken(*args, **kwargs):
        raise ConnectionError("server gone")

    tracker.trackers[0].log = broken
    with pytest.warns(RuntimeWarning, match="server gone"):
        tracker.log({"loss": 1.0}, step=1)
    tracker.log({"loss": 0.5}, step=2)  # no second warning, no exception
    tracker.finish(SUMMARY)
    assert tracker.trackers == []


def test_import_stays_light():
    code = "import sys, sslkit.tracking; print(sorted({'mlflow', 'tensorboardX', 'submitit'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_main_process_writes(clean_env, monkeypatch, tmp_path):
    import sslkit.tracking

    monkeypatch.setattr(sslkit.tracking, "_main_process", lambda: False)  # rank 1 of a torchrun
    tracker = Tracker(["mlflow", "tensorboard"], reports=tmp_path).start("run-r1", CONFIG)
    tracker.log({"loss": 1.0}, step=1)
    tracker.finish(SUMMARY)
    assert tracker.trackers == [] and not any(tmp_path.iterdir())


def test_parallel_workers_share_one_new_store(clean_env, tmp_path):
    """Sweep workers start at the same moment: the first creates the SQLite tables, none fails."""
    code = ("import sys; from sslkit.tracking import Tracker\n"
            "t = Tracker('mlflow', reports=sys.argv[1]).start('run-' + sys.argv[2], {'a': 1})\n"
            "t.log({'loss': 1.0}, step=1); t.finish({'dev': {'macro_f1': 0.5}})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("sslkit").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == \
        [(f"run-{i}", "FINISHED") for i in range(2)]


def test_a_fit_with_mlflow_leaves_the_run_record_in_mlflow(clean_env, tmp_path, mcid_budget, make_tiny_model,
                                                          monkeypatch):
    """fit(..., tracker="mlflow"): the MLflow run's parameters are the run's config.json and its
    metric histories equal metrics.jsonl, step by step; the final scores are summary.json's."""
    import json

    from mlflow.tracking import MlflowClient

    from sslkit.trainer import fit

    monkeypatch.setenv("SSLKIT_REPORTS", str(tmp_path / "reports"))
    budget = mcid_budget(train=160, labeled=0.25)
    res = fit(make_tiny_model(budget), budget, "supervised", epochs=2, batch_size=16, log_every=2,
              progress=False, save_checkpoint=False, tracker="mlflow")
    client = MlflowClient(mlflow_uri(tmp_path / "reports"))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string=f"tags.`sslkit.run_id` = '{res.run_id}'")
    config = json.loads((res.run_dir / "config.json").read_text())
    assert run.data.params["identity"] == config["identity"]
    assert run.data.params["train.lr"] == str(config["train"]["lr"])
    lines = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "dev_macro_f1"):
        expected = [(r["step"], r[key]) for r in lines if key in r]
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert expected and [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected])
    assert run.data.metrics["test/accuracy"] == pytest.approx(res.summary["test"]["accuracy"])
