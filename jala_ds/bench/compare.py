"""Side-by-side comparison of MLflow runs: a table, its CSV and markdown, and the metric curves overlaid.

The runs are one job's (training by default: an experiment also holds its tokenizer's and its evaluations' runs,
whose configs and metrics have little in common with it). The table has one row per run: name, id, status,
duration in hours, every config param whose value differs between the runs, the final and best value of each
chosen metric, the median of the throughput metrics (``samples_per_s``, ``tokens_per_s``, ``mfu``, also under a
prefix such as ``train/mfu``) and the largest peak memory (``peak_memory_gb``) when a run logged them. Medians,
because the first logged values include start-up and compilation; the largest memory, because that is what a run
needs.

    result = compare_runs("jala-tiny", metrics=["loss", "align_loss"], out_dir="compare_jala-tiny")
    result.paths        # comparison.csv, comparison.md, curves.png
"""
from __future__ import annotations

import csv
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jala_ds.bench.tables import markdown_table
from jala_ds.train.tracking import JOB_TAG, resolve_uri

THROUGHPUT_METRICS = ("samples_per_s", "tokens_per_s", "mfu")
MEMORY_METRICS = ("peak_memory_gb",)
SEARCH_PAGE = 1000
"""Runs asked of the store at a time (MLflow's most); an experiment with more is read page by page."""


@dataclass(frozen=True)
class MetricSpec:
    """A metric to compare; ``best`` is its minimum unless written ``NAME:max``."""

    key: str
    maximize: bool = False

    @classmethod
    def parse(cls, text: str) -> MetricSpec:
        key, _, direction = text.partition(":")
        if direction not in ("", "min", "max") or not key:
            raise ValueError(f"--metric {text!r}: write NAME, NAME:min or NAME:max (e.g. loss, accuracy:max)")
        return cls(key, direction == "max")


@dataclass(frozen=True)
class Comparison:
    rows: list[dict[str, object]]
    paths: dict[str, Path]


def _check_store_exists(uri: str) -> None:
    # Opening a missing sqlite file or store folder would silently create an empty store and then report "no
    # experiment".
    if uri.startswith("sqlite:///"):
        path, exists = Path(uri[len("sqlite:///"):]), Path.is_file
    elif urlparse(uri).scheme in ("", "file"):
        path, exists = Path(urlparse(uri).path), Path.is_dir
    else:
        return
    if not exists(path):
        raise ValueError(f"no MLflow store at {path.resolve()}: train first, or point --tracking-uri (or "
                         "MLFLOW_TRACKING_URI) at the store that holds the runs")


def job_of(run) -> str:
    """The job that made ``run`` (its ``JOB_TAG``); a run from before the tag is an evaluation when nested under
    another run, else a training run."""
    tags = run.data.tags
    return tags.get(JOB_TAG) or ("eval" if "mlflow.parentRunId" in tags else "train")


def load_runs(client, experiment: str, run_ids: list[str] | tuple[str, ...] = (), job: str = "train") -> list:
    """The runs of ``experiment``: all active ones of ``job``, oldest first, or the ``run_ids`` given, in that
    order, whatever their job."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ValueError(f"--experiment {experiment!r} is not in this store: known experiments are {known}")
    if not run_ids:
        runs = all_runs(client, found.experiment_id)
        if not runs:
            raise ValueError(f"experiment {experiment!r} has no runs yet")
        chosen = [run for run in runs if job_of(run) == job]
        if not chosen:
            jobs = ", ".join(sorted({job_of(run) for run in runs}))
            raise ValueError(f"--job {job}: experiment {experiment!r} has no runs of that job; its runs are of: "
                             f"{jobs}")
        return chosen
    from mlflow.exceptions import MlflowException

    runs = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = run_by_prefix(all_runs(client, found.experiment_id), run_id, experiment)
        if run.info.experiment_id != found.experiment_id:
            raise ValueError(f"--runs {run_id} belongs to another experiment than {experiment!r}")
        runs.append(run)
    return runs


def all_runs(client, experiment_id: str) -> list:
    """Every active run of the experiment, oldest first, however many pages the store returns them in."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"], max_results=SEARCH_PAGE,
                                  page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def run_by_prefix(runs: list, prefix: str, experiment: str):
    """The one run of ``runs`` whose id starts with ``prefix``: the table's ``run_id`` column shows 8 characters."""
    matches = [run for run in runs if run.info.run_id.startswith(prefix)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise ValueError(f"--runs {prefix}: {found} of experiment {experiment!r} {'have ids' if matches else 'has an id'}"
                         " starting so: give a run id, or enough of one to name a single run")
    return matches[0]


def differing_params(runs: list) -> list[str]:
    """Param keys whose values are not the same in every run (a key missing from a run counts as a value)."""
    keys = sorted({key for run in runs for key in run.data.params})
    return [key for key in keys if len({run.data.params.get(key) for run in runs}) > 1]


def logged_keys(run, names: tuple[str, ...]) -> list[str]:
    """The run's logged metrics whose last path component is one of ``names`` (``train/mfu`` for ``mfu``)."""
    return sorted(key for key in run.data.metrics if re.split(r"[/.]", key)[-1] in names)


def resumed_history(history: list) -> list:
    """Each step's last-logged value, by step. A run resumed after a crash logs again the steps between its
    checkpoint and the crash: the run went on from the second values, and the first are an abandoned branch."""
    return sorted({m.step: m for m in sorted(history, key=lambda m: m.timestamp)}.values(), key=lambda m: m.step)


def logged_value(value: float) -> float:
    """A metric's value as logged: MLflow's SQL stores keep an infinite value as the largest float."""
    return math.copysign(math.inf, value) if abs(value) == sys.float_info.max else value


def finite_values(history: list) -> list[float]:
    """The values of ``history`` that are numbers: a diverged step's NaN or inf is no run's best, median or peak."""
    return [value for value in (logged_value(m.value) for m in history) if math.isfinite(value)]


def run_row(run, histories: dict[str, list], metrics: list[MetricSpec], params: list[str]) -> dict[str, object]:
    """One table row from a run and its metric histories (``{key: [mlflow Metric, ...]}``)."""
    info = run.info
    end = info.end_time or time.time() * 1000
    row: dict[str, object] = {"run": info.run_name, "run_id": info.run_id[:8], "status": info.status,
                              "hours": (end - info.start_time) / 3.6e6}
    row.update({key: run.data.params.get(key) for key in params})
    for spec in metrics:
        history = sorted(histories.get(spec.key, []), key=lambda m: (m.step, m.timestamp))
        finite = finite_values(history)
        row[f"{spec.key} final"] = logged_value(history[-1].value) if history else None
        row[f"{spec.key} best"] = (max(finite) if spec.maximize else min(finite)) if finite else None
    for key in logged_keys(run, THROUGHPUT_METRICS):
        finite = finite_values(histories[key])
        row[f"{key} median"] = statistics.median(finite) if finite else None
    for key in logged_keys(run, MEMORY_METRICS):
        row[f"{key} max"] = max(finite_values(histories[key]), default=None)
    return row


def plot_curves(runs: list, histories: list[dict[str, list]], metrics: list[MetricSpec], path: Path):
    """One panel per metric, one line per run, against the step; written as PNG with the Agg canvas.

    Returns the matplotlib ``Figure``. A run with one logged point is drawn as a dot: a line needs two.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(metrics), 4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, spec in zip(axes, metrics):
        for run, history in zip(runs, histories):
            logged = ((m.step, logged_value(m.value)) for m in history.get(spec.key, []))
            points = sorted(point for point in logged if math.isfinite(point[1]))   # inf would flatten the axes
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=run.info.run_name, linewidth=1.5, marker="o" if len(points) == 1 else None)
        ax.set_title(spec.key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def write_outputs(rows: list[dict[str, object]], out_dir: Path, heading: str) -> dict[str, Path]:
    """The table as ``comparison.csv`` and ``comparison.md`` (which shows ``curves.png`` under it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path, md_path = out_dir / "comparison.csv", out_dir / "comparison.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(f"# {heading}\n\n{markdown_table(rows)}\n\n![metric curves](curves.png)\n")
    return {"csv": csv_path, "markdown": md_path}


def compare_runs(experiment: str, run_ids: list[str] | tuple[str, ...] = (), metrics: list[str] = ("loss",),
                 tracking_uri: str | None = None, out_dir: str | Path | None = None, job: str = "train") -> Comparison:
    """Compare the runs of ``experiment`` (``job``'s, or ``run_ids``) in the store at ``tracking_uri`` and write the
    table and curves."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(tracking_uri)
    _check_store_exists(uri)
    specs = [MetricSpec.parse(text) for text in metrics]
    try:
        client = MlflowClient(tracking_uri=uri)
        runs = load_runs(client, experiment, run_ids, job)
    except MlflowException as err:   # a server that does not answer, a folder that is no store, a file store
        reason = str(err.message).splitlines()[0][:200]
        raise ValueError(f"--tracking-uri {uri}: {reason}: point --tracking-uri (or MLFLOW_TRACKING_URI) at a "
                         "running server or an sqlite store (sqlite:///path/mlflow.db)") from None
    logged = {key for run in runs for key in run.data.metrics}
    missing = [spec.key for spec in specs if spec.key not in logged]
    if missing:
        raise ValueError(f"--metric {', '.join(missing)}: no run logged it; logged metrics are "
                         f"{', '.join(sorted(logged)) or 'none'}")
    histories = [{key: resumed_history(client.get_metric_history(run.info.run_id, key))
                  for key in {s.key for s in specs} | set(logged_keys(run, THROUGHPUT_METRICS + MEMORY_METRICS))
                  if key in run.data.metrics}
                 for run in runs]
    params = differing_params(runs)
    rows = [run_row(run, history, specs, params) for run, history in zip(runs, histories)]
    out = Path(out_dir or f"compare_{re.sub(r'[^A-Za-z0-9_.-]+', '_', experiment)}")
    paths = write_outputs(rows, out, f"{experiment}: {len(runs)} runs ({uri})")
    paths["png"] = out / "curves.png"
    plot_curves(runs, histories, specs, paths["png"])
    return Comparison(rows=rows, paths=paths)
