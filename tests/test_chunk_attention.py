"""The Triton chunk-attention kernels against a float64 reference, by the flash-attention rule.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (fp32 and fp16: the interpreter's bf16
tl.dot is not exact); with one, on CUDA tensors, bf16 included. Rule: in the output and in dQ, dK, dV the
kernel's largest error against float64 is at most twice that of the plain-PyTorch reference computed in the
kernel's dtype, plus a small floor for errors near zero.
"""
import pytest
import torch
from chunk_layouts import packed_rows, random_rows

from jala_kernels import ChunkBounds, chunk_attention, chunk_attention_bounds, chunk_attention_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}  # about one unit in the last place at 1

# name: (N, rows, query heads, KV heads, head dim). Interpreter tiles are 32 queries x 16 keys (16 x 32 for
# dK/dV), so chunk edges below fall inside tiles, on tile edges, and across them.
CASES = {
    "plain causal (no chunks)": (77, [[(77, [])]], 1, 1, 16),
    "one chunk over the whole document (bidirectional)": (64, [[(50, [(0, 50)])]], 2, 1, 32),
    "unaligned chunks, several documents, padding": (150, [[(70, [(5, 18), (30, 21)]), (60, [(10, 33)])]], 6, 1, 64),
    "chunks at the start and the end of the row": (96, [[(96, [(0, 13), (40, 8), (48, 16), (83, 13)])]], 4, 2, 128),
    "one-token documents and chunks": (40, [[(1, []), (1, [(0, 1)]), (5, [(4, 1)]), (1, []), (31, [(0, 1)])]], 2, 2,
                                       16),
    "a row entirely of padding": (60, [[(33, [(32, 1)]), (20, [(3, 17)])], []], 2, 1, 32),
    "random 0": (200, random_rows(2, 200, seed=0), 2, 1, 32),
    "random 1": (333, random_rows(1, 333, seed=1), 2, 2, 64),
    "random 2": (512, random_rows(1, 512, seed=2, max_doc=400, max_chunk=130), 2, 1, 16),
}


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def attention_problem(n, rows, heads_q, heads_kv, head_dim, seed=0, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    doc_ids, chunk_ids = packed_rows(n, rows)
    batch = doc_ids.shape[0]
    q, k, v = (torch.randn(batch, h, n, head_dim, generator=gen) for h in (heads_q, heads_kv, heads_kv))
    grad_out = torch.randn(batch, heads_q, n, head_dim, generator=gen)
    return [t.to(device) for t in (q, k, v, doc_ids, chunk_ids, grad_out)]


def output_and_grads(attention, q, k, v, doc_ids, chunk_ids, grad_out, dtype, scale=None):
    leaves = [t.to(dtype, copy=True).requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, doc_ids, chunk_ids, scale)
    out.backward(grad_out.to(dtype))
    return [out.detach()] + [t.grad for t in leaves]


def max_errors(results, exact):
    return [float((r.double() - e).abs().max()) for r, e in zip(results, exact)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_output_and_gradients_within_twice_the_reference_error(case, dtype):
    problem = attention_problem(*CASES[case])
    exact = output_and_grads(chunk_attention_reference, *problem, torch.float64)
    kernel = output_and_grads(chunk_attention, *problem, dtype)
    same_dtype = output_and_grads(chunk_attention_reference, *problem, dtype)
    for name, got, allowed in zip(("out", "dq", "dk", "dv"), max_errors(kernel, exact), max_errors(same_dtype, exact)):
        assert got <= 2 * allowed + FLOOR[dtype], f"{name}: error {got:.3g}, reference's in {dtype} {allowed:.3g}"
    assert all(bool(t.isfinite().all()) for t in kernel)
    padding = (problem[3] < 0)[:, None, :, None]
    assert bool((kernel[0].masked_select(padding) == 0).all()), "padding rows must return exact zeros"
    assert bool((kernel[1].masked_select(padding) == 0).all()), "padding rows get no query gradient"


def test_strided_heads_major_views_and_a_custom_scale():
    # transformers hands over q/k/v as [B, N, H, D] tensors transposed to [B, H, N, D]: not contiguous.
    q, k, v, doc_ids, chunk_ids, grad_out = attention_problem(*CASES["unaligned chunks, several documents, padding"])
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    exact = output_and_grads(chunk_attention_reference, q, k, v, doc_ids, chunk_ids, grad_out, torch.float64, 0.3)
    kernel = output_and_grads(chunk_attention, *views, doc_ids, chunk_ids, grad_out, torch.float32, 0.3)
    for got in max_errors(kernel, exact):
        assert got < 1e-5


def test_compiled_calls_trace_into_one_graph_and_give_the_eager_results():
    """Compiled layers (``train.compile_blocks``) keep the kernel as one custom operator: tracing with
    ``fullgraph`` (no graph break allowed) succeeds on the layout transformers hands over, and the compiled call
    gives exactly the eager output and gradients."""
    torch._dynamo.reset()
    q, k, v, doc_ids, chunk_ids, grad_out = attention_problem(*CASES["unaligned chunks, several documents, padding"])
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    compiled = torch.compile(chunk_attention, backend="aot_eager", fullgraph=True, dynamic=True)
    eager = output_and_grads(chunk_attention, *views, doc_ids, chunk_ids, grad_out, torch.float32, 0.3)
    traced = output_and_grads(compiled, *views, doc_ids, chunk_ids, grad_out, torch.float32, 0.3)
    assert all(torch.equal(a, b) for a, b in zip(traced, eager))


def test_bounds_found_beforehand_give_the_same_results_and_wrong_ones_are_refused():
    """A loader computes the bounds on the host (``jala_ds/data/batch_index.py``); the kernel reads them as given."""
    problem = attention_problem(*CASES["unaligned chunks, several documents, padding"])
    doc_ids, chunk_ids = problem[3], problem[4]
    bounds = chunk_attention_bounds(doc_ids.cpu(), chunk_ids.cpu())
    found = output_and_grads(chunk_attention, *problem, torch.float32)
    given = output_and_grads(lambda *a: chunk_attention(*a, bounds=ChunkBounds(*(b.to(DEVICE) for b in bounds))),
                             *problem, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(given, found))
    per_token = torch.stack(tuple(bounds), -1).to(DEVICE)  # [B, N, 4]: each bound a view with stride 4 along N
    strided = output_and_grads(lambda *a: chunk_attention(*a, bounds=ChunkBounds(*per_token.unbind(-1))),
                               *problem, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(strided, found))
    q, k, v = problem[:3]
    with pytest.raises(ValueError, match=r"bounds.key_stop is torch.int64 .* must be int32"):
        chunk_attention(q, k, v, doc_ids, chunk_ids, bounds=bounds._replace(key_stop=bounds.key_stop.long()))


def test_backward_is_deterministic():
    problem = attention_problem(*CASES["chunks at the start and the end of the row"], seed=3)
    first = output_and_grads(chunk_attention, *problem, torch.float16)
    second = output_and_grads(chunk_attention, *problem, torch.float16)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_cpu_tensors_without_the_interpreter_run_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, doc_ids, chunk_ids, _ = attention_problem(*CASES["random 0"], device="cpu")
    reference = chunk_attention_reference(q, k, v, doc_ids, chunk_ids)
    assert torch.equal(chunk_attention(q, k, v, doc_ids, chunk_ids), reference)
    # float64 and head dim 8 exist only on the reference path: the kernel would refuse them.
    q, k, v = (t[..., :8].double() for t in (q, k, v))
    reference = chunk_attention_reference(q, k, v, doc_ids, chunk_ids)
    assert torch.equal(chunk_attention(q, k, v, doc_ids, chunk_ids), reference)


def test_unsupported_head_dim_and_dtype_are_refused_on_the_kernel_path():
    q, k, v, doc_ids, chunk_ids, _ = attention_problem(*CASES["random 0"])
    with pytest.raises(ValueError, match="head dim 24 is not supported.*pad the heads"):
        chunk_attention(q[..., :24], k[..., :24], v[..., :24], doc_ids, chunk_ids)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32.*got torch.float64"):
        chunk_attention(q.double(), k.double(), v.double(), doc_ids, chunk_ids)
    # no forward tile config fits an H100's shared memory at float32 x 256 (the autotuner's launch failed there)
    wide = [t.repeat(1, 1, 1, 8) for t in (q, k, v)]
    with pytest.raises(ValueError, match="float32 q/k/v of head dim 256 do not fit.*cast them to bfloat16"):
        chunk_attention(*wide, doc_ids, chunk_ids)


@pytest.mark.parametrize("change, message", [
    (lambda p: {**p, "k": p["k"][:, :, :-1], "v": p["v"][:, :, :-1]}, r"k/v .* must match q"),
    (lambda p: {**p, "k": p["k"].expand(-1, 4, -1, -1), "v": p["v"].expand(-1, 4, -1, -1)},
     r"query heads \(6\) must be a multiple of key/value heads \(4\)"),
    (lambda p: {**p, "v": p["v"].half()}, r"share one floating dtype"),
    # zero KV heads ended in a ZeroDivisionError (Hq % 0)
    (lambda p: {**p, "k": p["k"][:, :0], "v": p["v"][:, :0]}, r"k/v \(1, 0, 150, 64\) have no heads"),
    (lambda p: {**p, "doc_ids": p["doc_ids"][:, :-1]}, r"doc_ids must be \[B, N\]"),
    (lambda p: {**p, "chunk_ids": p["chunk_ids"].float()}, r"chunk_ids must hold integers"),
    # Rolled by 25, the tail of document 1 lands before document 0: document 1 is split in two.
    (lambda p: {**p, "doc_ids": p["doc_ids"].roll(25, dims=1)}, r"doc_ids/chunk_ids row 0: .*split"),
])
def test_bad_inputs_get_one_clear_error(change, message):
    q, k, v, doc_ids, chunk_ids, _ = attention_problem(*CASES["unaligned chunks, several documents, padding"])
    inputs = change({"q": q, "k": k, "v": v, "doc_ids": doc_ids, "chunk_ids": chunk_ids})
    with pytest.raises(ValueError, match=message):
        chunk_attention(**inputs)
