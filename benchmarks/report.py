"""Where every benchmark's numbers go: a dated markdown table (and PNG) in benchmarks/results/, and MLflow.

    path = write_results("attention", rows, title="chunk attention, fwd+bwd", device=device_name(),
                         notes=["ratios are measured side by side in one run"], figure=fig)
"""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

from jala_ds.bench.tables import markdown_table

RESULTS_DIR = Path(__file__).parent / "results"


def device_name() -> str:
    """The card's name (``NVIDIA H100 80GB HBM3``) or the CPU's, for the results' headings."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def write_results(name: str, rows: list[dict[str, Any]], *, title: str, device: str,
                  notes: list[str] = (), figure: Any = None, out_dir: Path | None = None,
                  mlflow_metrics: dict[str, float] | None = None) -> Path:
    """Write ``<date>_<name>_<device>.md`` (+ ``.png`` when a matplotlib ``figure`` is given); log to MLflow.

    Returns the markdown path. MLflow logging uses the default store unless ``MLFLOW_TRACKING_URI`` says
    otherwise, and a tracking failure costs one printed warning, never the benchmark.
    """
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = dt.date.today().isoformat()
    slug = "".join(ch if ch.isalnum() else "-" for ch in device).strip("-").lower()[:40]
    stem = out_dir / f"{date}_{name}_{slug}"
    body = [f"# {title}", "", f"- date: {date}", f"- device: {device}", *[f"- {n}" for n in notes], "",
            markdown_table(rows), ""]
    md = stem.with_suffix(".md")
    if figure is not None:
        figure.savefig(stem.with_suffix(".png"), dpi=120, bbox_inches="tight")
        body.append(f"![{name}]({stem.with_suffix('.png').name})")
    md.write_text("\n".join(body) + "\n")
    log_benchmark(name, md, mlflow_metrics or {}, device)
    return md


def log_benchmark(name: str, md: Path, metrics: dict[str, float], device: str) -> None:
    try:
        import mlflow

        mlflow.set_experiment("benchmarks")
        with mlflow.start_run(run_name=f"{name}-{dt.date.today().isoformat()}"):
            mlflow.set_tags({"benchmark": name, "device": device})
            if metrics:
                mlflow.log_metrics(metrics)
            mlflow.log_artifact(str(md))
            png = md.with_suffix(".png")
            if png.exists():
                mlflow.log_artifact(str(png))
    except Exception as err:  # tracking is a convenience: the results files are already written
        print(f"warning: benchmark {name} not logged to MLflow ({err.__class__.__name__}: {err})")
