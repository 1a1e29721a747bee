"""`python -m benchmarks.mcp_decoding` on the session's tiny corpus: both ways of decoding run, for MCP and for
next-token decoding, and the table says which is which."""
import pytest

from benchmarks import mcp_decoding

NTP = ["model.objective=ntp", "model.align=false", "model.decoupled_ema=false"]


@pytest.mark.parametrize("overrides, name, short", [([], "mcp_decoding", "the chunk"),
                                                    (NTP, "ntp_decoding", "the token just written")])
def test_smoke_run_writes_both_variants(overrides, name, short, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns
    rows = mcp_decoding.run("tiny_cpu", overrides, tiny_corpus.mds, records=1, ensemble=1, rounds=1,
                            out_dir=tmp_path / "results")
    whole, short_passes = rows
    assert whole["passes"] == "every pass over the whole sequence" and whole["whole / this"] == 1.0
    assert short_passes["passes"].startswith("1 whole pass, then ") and short_passes["passes"].endswith(short)
    assert short_passes["ms per window"] > 0
    (table,) = (tmp_path / "results").glob(f"*_{name}_*.md")
    assert "tiny_cpu" in table.read_text()
