"""`python -m benchmarks.fused_lm_ops --smoke`: every contender runs (or says why not) and the results are written."""
import os

from benchmarks import fused_lm_ops


def test_smoke_run_writes_a_table_and_an_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)   # MLflow puts artifacts under ./mlruns
    md, rows = fused_lm_ops.run(smoke=True, out_dir=tmp_path / "results")
    assert "TRITON_INTERPRET" not in os.environ      # switched on around the Triton rows only
    assert md.is_file()
    for op, calls in fused_lm_ops.CALLS_PER_STEP.items():
        assert {r["impl"] for r in rows if r["op"] == op} == {"triton", "eager", "compile"}
        for row in (r for r in rows if r["op"] == op and r["impl"] in ("triton", "eager")):
            assert row["ms"] > 0 and row["ms per step"] == row["ms"] * calls and row["x_vs_eager"] > 0
    from mlflow import MlflowClient

    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("benchmarks").experiment_id])
    assert "rms_norm_triton_ms" in run.data.metrics and "swiglu_eager_ms" in run.data.metrics
