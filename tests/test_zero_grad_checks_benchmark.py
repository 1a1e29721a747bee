"""`python -m benchmarks.zero_grad_checks`: at the full recipe's tensor count, the multi-tensor checks leave most of
the optimiser step's operator calls out, re-pointing only moved weights leaves out the views of every weight,
deciding the skip on the device leaves no read to the host, and the table is written."""
from train_parts import world_of_one

from benchmarks import zero_grad_checks


def test_the_multi_tensor_checks_call_a_fraction_of_the_operators(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)   # MLflow puts artifacts under ./mlruns
    with world_of_one():
        stock, multi_tensor, repointed, shipped = zero_grad_checks.run(rounds=1, steps=1, out_dir=tmp_path / "results")
    # 847 tensors: DeepSpeed spends ~17 operators on each in the checks, the multi-tensor checks a handful in all
    assert stock["operator calls per step"] - multi_tensor["operator calls per step"] > 847 * 15
    # and re-points each weight with a view and a detach, at least
    assert multi_tensor["operator calls per step"] - repointed["operator calls per step"] >= 847 * 2
    # DeepSpeed reads its overflow verdict and the norm's validity (then again per parameter group while
    # clipping: two groups) on the host; the shipped step reads nothing
    assert [row["reads to the host per step"] for row in (stock, repointed, shipped)] == [4, 4, 0]
    assert repointed["operator calls per step"] > shipped["operator calls per step"]   # one pass over the grads less
    assert min(row["ms per step"] for row in (stock, multi_tensor, repointed, shipped)) > 0
    (md,) = (tmp_path / "results").glob("*_zero_grad_checks_*.md")
    assert "847 trainable tensors" in md.read_text()
