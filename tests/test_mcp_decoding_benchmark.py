"""`python -m benchmarks.mcp_decoding` on the session's tiny corpus: both ways of decoding run and the table says
which is which."""
from benchmarks import mcp_decoding


def test_smoke_run_writes_both_variants(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns
    rows = mcp_decoding.run("tiny_cpu", [], tiny_corpus.mds, records=1, ensemble=1, rounds=1,
                            out_dir=tmp_path / "results")
    whole, short = rows
    assert whole["passes"] == "every pass over the whole sequence" and whole["whole / this"] == 1.0
    assert short["passes"].startswith("1 whole pass, then ") and short["ms per window"] > 0
    (table,) = (tmp_path / "results").glob("*_mcp_decoding_*.md")
    assert "tiny_cpu" in table.read_text()
