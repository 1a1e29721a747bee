"""`python -m benchmarks.grvq --smoke`: every contender runs (or says why not) and the results are written."""
import os

from benchmarks import grvq


def test_smoke_run_writes_a_table_a_plot_and_an_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)   # MLflow puts artifacts under ./mlruns
    md, rows = grvq.run(smoke=True, out_dir=tmp_path / "results")
    assert "TRITON_INTERPRET" not in os.environ      # switched on around the Triton rows only
    assert md.is_file() and md.with_suffix(".png").is_file()
    for op in ("encode", "decode"):
        assert {r["impl"] for r in rows if r["op"] == op} == {"triton", "eager", "compile", "vector-quantize-pytorch"}
        timed = [r for r in rows if r["op"] == op and r["impl"] in ("triton", "eager")]
        assert all(r["ms"] > 0 and r["GB/s"] > 0 and r["x_vs_eager"] > 0 for r in timed)
    triton_encodes = [r for r in rows if (r["op"], r["impl"]) == ("encode", "triton")]
    assert triton_encodes and all(r["codes_agree"] == 1.0 for r in triton_encodes)
    (tokenize,) = [r for r in rows if r["op"] == "tokenize_corpus"]
    assert tokenize["clips/s"] > 0

    from mlflow import MlflowClient

    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("benchmarks").experiment_id])
    assert run.data.metrics["tokenize_clips_per_s"] > 0 and "encode_triton_N16_K16_ms" in run.data.metrics
