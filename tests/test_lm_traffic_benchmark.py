"""`python -m benchmarks.lm_traffic`: the fused kernels cut the language model's calls and non-matmul traffic."""
import pytest
import torch

from benchmarks import lm_traffic


def test_fused_ops_leave_matmuls_and_attention_alone_and_cut_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    md, (eager, fused) = lm_traffic.run(arch="tiny", tokens=48, dtype="fp32", out_dir=tmp_path / "results")
    assert md.is_file() and "## Costliest operators" in md.read_text()
    assert fused["matmul GB"] == eager["matmul GB"] > 0 and fused["attention GB"] == eager["attention GB"] > 0
    assert fused["operator calls"] < eager["operator calls"] and fused["other GB"] < eager["other GB"]


def test_the_census_counts_every_byte_in_and_out_once_and_no_view():
    x = torch.randn(4, 8)
    with lm_traffic.OperatorCensus() as counted:
        (x * 2).t().contiguous()
    assert counted.calls == {"mul": 1, "clone": 1}
    assert counted.bytes["mul"] == 2 * 4 * 8 * 4  # a tensor in, a tensor out (the scalar is no tensor)
    assert counted.bytes["clone"] == pytest.approx(2 * 4 * 8 * 4)
