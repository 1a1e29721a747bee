"""MLflow tracking against a real sqlite store: default URI, rank-0 only, resume continues the run, and an
unreachable server (or a failing call) costs one warning while every later call does nothing."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from jala_ds.train.config import TrackingConfig
from jala_ds.train.tracking import DEFAULT_URI, Tracker, tracking_uri


def tracker_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "jala_ds.train.tracking" and r.levelno >= logging.WARNING]


def test_uri_comes_from_config_then_environment_then_mlflow_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert DEFAULT_URI == "sqlite:///mlflow.db"
    assert tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(TrackingConfig()) == "http://tracking.example:5000"
    assert tracking_uri(TrackingConfig(uri="sqlite:////data/elsewhere.db")) == "sqlite:////data/elsewhere.db"
    assert tracking_uri(TrackingConfig(uri="sqlite:///elsewhere.db")) == f"sqlite:///{tmp_path.resolve() / 'elsewhere.db'}"


def test_rank_zero_logs_to_sqlite_in_the_working_dir_and_a_resumed_job_continues_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(experiment="jala-test")
    assert Tracker(cfg, rank=1, run_name="quiet", job="train").run_id is None

    first = Tracker(cfg, rank=0, run_name="tiny", job="train")
    first.log_params({"train.lr": 1e-3, "train.betas": [0.9, 0.95]})
    first.log_metrics({"loss": 2.0}, step=1)
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.001\n")
    first.log_artifact(tmp_path / "config.yaml")
    first.close()
    assert (tmp_path / "mlflow.db").is_file()

    resumed = Tracker(cfg, rank=0, run_name="tiny", job="train", resume_run_id=first.run_id)
    resumed.log_params({"train.lr": 1e-3, "train.max_steps": 40})
    resumed.log_metrics({"loss": 1.5}, step=2)
    resumed.close()
    assert resumed.run_id == first.run_id

    client = MlflowClient(DEFAULT_URI)
    run = client.get_run(first.run_id)
    assert run.info.run_name == "tiny"
    assert run.data.params == {"train.lr": "0.001", "train.betas": "[0.9, 0.95]", "train.max_steps": "40"}
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [(1, 2.0), (2, 1.5)]
    assert [a.path for a in client.list_artifacts(first.run_id)] == ["config.yaml"]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_unreachable_server_costs_one_warning_and_later_calls_do_nothing(caplog):
    caplog.set_level(logging.WARNING)
    tracker = Tracker(TrackingConfig(uri="http://127.0.0.1:9"), rank=0, run_name="offline", job="train")
    tracker.log_params({"train.lr": 1e-3})
    for step in range(3):
        tracker.log_metrics({"loss": 1.0}, step=step)
    tracker.log_artifact("nothing-here.yaml")
    tracker.close()
    warnings = tracker_warnings(caplog)
    assert len(warnings) == 1 and "127.0.0.1:9" in warnings[0] and "continues" in warnings[0]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1  # no other logger's retries
    assert tracker.run_id is None and not tracker.active


def test_a_failing_call_mid_run_turns_tracking_off_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'runs.db'}"), rank=0, run_name="flaky", job="train")
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_artifact(tmp_path / "missing.json")  # a real failure: MLflow cannot log a file that is not there
    tracker.log_metrics({"loss": 0.5}, step=2)
    tracker.close()
    assert len(tracker_warnings(caplog)) == 1
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs.db'}")
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [1]
    assert client.get_run(tracker.run_id).info.status == "FAILED"


@pytest.mark.parametrize("enabled, rank", [(False, 0), (True, 3)])
def test_disabled_or_other_ranks_touch_nothing(tmp_path, monkeypatch, enabled, rank):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(TrackingConfig(enabled=enabled), rank=rank, run_name="x", job="train")
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.close()
    assert tracker.run_id is None and not (tmp_path / "mlflow.db").exists()


def test_a_job_that_crashes_before_close_leaves_its_run_failed_not_finished(tmp_path):
    """MLflow's own exit hook would end the open run as FINISHED, and ``jala compare`` would show a crash as done."""
    crash = ("from jala_ds.train.config import TrackingConfig\n"
             "from jala_ds.train.tracking import Tracker\n"
             "tracker = Tracker(TrackingConfig(experiment='e'), rank=0, run_name='crashed', job='train')\n"
             "tracker.log_metrics({'loss': 1.0}, step=1)\n"
             "raise RuntimeError('out of memory')\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "out of memory" in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert (run.info.run_name, run.info.status) == ("crashed", "FAILED")
