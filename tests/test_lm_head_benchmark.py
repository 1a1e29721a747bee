"""`python -m benchmarks.lm_head --smoke`: both heads compute the same thing, and the results are written."""
import torch

from benchmarks import lm_head


def test_the_padded_head_gives_the_unpadded_logits_and_gradient():
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(6, 16, generator=gen, dtype=torch.float64), torch.randn(64, 16, generator=gen,
                                                                                          dtype=torch.float64)
    grad = torch.randn(6, 50, generator=gen, dtype=torch.float64)
    unpadded = lm_head.training_call(hidden, weight[:50].clone(), 50, grad)()
    padded = lm_head.training_call(hidden, weight, 50, grad)()  # rows 50..63 hold values no token stands for
    for a, b in zip(unpadded, padded):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_smoke_run_writes_a_table_and_an_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)   # MLflow puts artifacts under ./mlruns
    md, rows = lm_head.run(smoke=True, out_dir=tmp_path / "results")
    assert md.is_file() and "lm_head" in md.name
    vocab = lm_head.SMOKE["vocab"]
    assert [r["rows"] for r in rows] == [vocab, -(-vocab // 64) * 64]
    assert all(r["ms"] > 0 and r["TFLOP/s"] > 0 for r in rows) and rows[0]["x_vs_unpadded"] == 1
    from mlflow import MlflowClient

    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("benchmarks").experiment_id])
    assert {"unpadded_ms", "padded_ms"} <= set(run.data.metrics)
