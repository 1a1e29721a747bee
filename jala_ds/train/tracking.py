"""MLflow tracking from rank 0: params, metrics, system metrics, artifacts; never the reason a job stops.

The tracking URI is ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own default
``sqlite:///mlflow.db`` in the working directory. A resumed job continues its MLflow run (the run id travels
in the checkpoint). If the server cannot be reached, or any later call fails, the tracker logs one warning
and every later call does nothing: training goes on.

    tracker = Tracker(cfg.tracking, rank=rank, run_name=cfg.name, job="train", resume_run_id=None)
    tracker.log_params(cfg.flat()); tracker.log_metrics({"loss": 1.2}, step=10); tracker.close()
"""
from __future__ import annotations

import atexit
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from jala_ds.train.config import TrackingConfig

log = logging.getLogger(__name__)
DEFAULT_URI = "sqlite:///mlflow.db"
JOB_TAG = "jala.job"
"""MLflow tag naming the job that made a run (train, tokenizer, token-predictor, eval): runs of one experiment
that ``jala compare`` puts side by side are runs of one job."""
# MLflow retries an unreachable server for minutes by default (7 retries, exponential back-off, 120 s
# timeout); bound that so a dead server costs seconds, unless the user chose otherwise.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def resolve_uri(explicit: str | None) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; a relative sqlite path is made
    absolute against the working directory now, because MLflow caches one database engine per URI string for
    the life of the process, and a later ``chdir`` would otherwise keep writing to the first directory's file."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def tracking_uri(cfg: TrackingConfig) -> str:
    return resolve_uri(cfg.uri)


class Tracker:
    """MLflow on rank 0; a no-op on other ranks, when ``tracking.enabled`` is false, or after a failure."""

    def __init__(self, cfg: TrackingConfig, *, rank: int, run_name: str, job: str, resume_run_id: str | None = None):
        self.run_id: str | None = None
        self.active = cfg.enabled and rank == 0
        self.uri = tracking_uri(cfg)
        self._call(self._start, cfg.experiment, run_name, job, resume_run_id)

    def _start(self, experiment: str, run_name: str, job: str, resume_run_id: str | None) -> None:
        import mlflow  # here, not at the top: a disabled tracker (and every rank but 0) never needs MLflow

        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
        # urllib3 logs every retry as a warning; the tracker's own single warning says what matters.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment)
        if resume_run_id and not self._run_exists(resume_run_id):
            log.warning("MLflow run %s is not in %s: starting a new run", resume_run_id, self.uri)
            resume_run_id = None
        with_system_metrics = importlib.util.find_spec("psutil") is not None
        run = mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else run_name,
                               tags={JOB_TAG: job}, log_system_metrics=with_system_metrics)
        self.run_id = run.info.run_id
        # MLflow's own exit hook ends an open run as FINISHED: a job that exits before close() (a crash) did not.
        atexit.register(self._close_unfinished)

    def _close_unfinished(self) -> None:
        if self.active:
            self.close(status="FAILED")

    @staticmethod
    def _run_exists(run_id: str) -> bool:
        """Whether the store knows ``run_id``; an unreachable store raises (one warning, then tracking is off)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            mlflow.get_run(run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False
        return True

    def _call(self, fn, *args: Any, **kwargs: Any) -> None:
        """Run one MLflow call if tracking is still on; the first failure turns tracking off with one warning."""
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (any failure of the tracking backend, by design)
            self.active = False
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("MLflow tracking at %s failed (%s): training continues without tracking",
                        self.uri, first_line[:300])
            self._abandon_run()

    def _abandon_run(self) -> None:
        """Mark a started run as failed (best effort) so its system-metrics thread stops with it."""
        if self.run_id is None:
            return
        import mlflow

        try:
            mlflow.end_run(status="FAILED")
        except Exception:  # noqa: BLE001  (the backend is already known to be failing; stay quiet)
            pass

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; on a resumed run only the new ones (MLflow refuses to change a logged value)."""
        self._call(self._log_params, params)

    def _log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        logged = mlflow.get_run(self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))
        if changed:
            log.warning("resumed MLflow run keeps the first value of changed params: %s", ", ".join(changed))
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call(self._mlflow_call, "log_metrics", {k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self._call(self._mlflow_call, "log_artifact", str(path))

    def close(self, status: str = "FINISHED") -> None:
        self._call(self._mlflow_call, "end_run", status=status)
        self.active = False
        atexit.unregister(self._close_unfinished)

    @staticmethod
    def _mlflow_call(name: str, *args: Any, **kwargs: Any) -> None:
        import mlflow

        getattr(mlflow, name)(*args, **kwargs)
