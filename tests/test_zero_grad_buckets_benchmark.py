"""`python -m benchmarks.zero_grad_buckets`: at the full recipe's tensor count, the bucketed reduction leaves out
the operators DeepSpeed's spends on every gradient in the backward, and the table is written."""
from train_parts import world_of_one

from benchmarks import zero_grad_buckets


def test_the_bucketed_reduction_calls_a_handful_of_operators_per_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)   # MLflow puts artifacts under ./mlruns
    with world_of_one():
        stock, bucketed, plain = zero_grad_buckets.run(rounds=1, steps=1, out_dir=tmp_path / "results")
    # 847 tensors: DeepSpeed copies each gradient twice (into a bucket, into the partition); the bucketed path
    # joins and adds once per bucket, so beyond the plain backward it adds about one view per gradient
    assert stock["beyond plain autograd"] - bucketed["beyond plain autograd"] > 847 * 2
    assert bucketed["beyond plain autograd"] < 847 * 3
    assert plain["beyond plain autograd"] == 0 and stock["ms per backward"] > 0 and bucketed["ms per backward"] > 0
    (md,) = (tmp_path / "results").glob("*_zero_grad_buckets_*.md")
    assert "847 trainable tensors" in md.read_text()
