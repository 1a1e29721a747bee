"""The attention benchmark's smoke run (so it cannot rot) and its JALA-shaped row packing."""
import pytest
import torch

from benchmarks import attention
from jala_kernels import chunk_attention_bounds


def test_packed_rows_hold_whole_jala_documents_then_padding():
    doc_ids, chunk_ids = attention.packed_layout(4, 2048, attention.SampleShape(), seed=0)
    chunk_attention_bounds(doc_ids, chunk_ids)  # raises unless documents and chunks are contiguous runs
    for row_docs, row_chunks in zip(doc_ids, chunk_ids):
        docs = row_docs[row_docs >= 0]
        assert docs.unique().tolist() == list(range(int(docs.max()) + 1)), "documents numbered 0, 1, ... per row"
        assert bool((row_docs[len(docs):] == -1).all()), "padding only after the last document"
        sizes = row_chunks[row_chunks >= 0].unique(return_counts=True)[1]
        assert bool((sizes == 128).all()), "every motion chunk is 128 codes"
        for doc in docs.unique():
            in_doc = row_docs == doc
            n_chunks = len(row_chunks[in_doc & (row_chunks >= 0)].unique())
            # <img> 256 </img>, 40-80 instruction tokens, then <mot> 128 </mot> per chunk.
            assert 1 <= n_chunks <= 4 and 258 + 40 <= int(in_doc.sum()) - 130 * n_chunks <= 258 + 80


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_smoke_run_writes_every_backend_with_matching_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the kernel tests cover the interpreter; keep it quick
    assert attention.main(["--smoke", "--out", str(tmp_path)]) == 0
    [table] = tmp_path.glob("*_attention_*.md")
    assert table.with_suffix(".png").is_file()
    header, _, *rows = ([cell.strip() for cell in line.split("|")[1:-1]]
                        for line in table.read_text().splitlines() if line.startswith("|"))
    by_key = {row[header.index("key")]: dict(zip(header, row)) for row in rows}
    assert {"ours", "flex", "sdpa_mask", "sdpa_causal_rows", "sdpa_causal_docs", "eager"} <= set(by_key)
    for key in ("flex", "sdpa_mask", "eager"):
        assert float(by_key[key]["max abs diff vs ours"]) < 1e-5, f"{key} computes another mask"
    assert float(by_key["ours"]["fwd+bwd TFLOP/s"]) > 0
    assert torch.cuda.is_available() or "does not support backward on CPU" in by_key["flex"]["note"]


def test_head_shapes_are_read_as_query_kv_dim_and_bad_ones_are_refused_with_the_form():
    import argparse

    assert attention.heads_arg("12/2/128") == (12, 2, 128)
    for bad in ("12/5/128", "12x2x128", "12/0/64"):
        with pytest.raises(argparse.ArgumentTypeError, match="QUERY/KV/DIM"):
            attention.heads_arg(bad)
