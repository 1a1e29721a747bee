"""The fused RMSNorm, SwiGLU and rotary kernels against a float64 reference, by the rule of the attention tests.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (fp32, fp16); with one, on CUDA tensors,
bf16 included. Rule: in the output and in every input gradient the kernel's largest error against float64 is at
most twice that of the plain-PyTorch reference (eager Qwen2) computed in the kernel's dtype, plus a small floor.
"""
import pytest
import torch

from jala_kernels import rms_norm, rms_norm_reference, rotary, rotary_reference, swiglu, swiglu_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# Shapes that leave the last tile, block or program partly empty, and that need several of them (the interpreter's
# tiles: 64 rows for RMSNorm, with 2 backward programs; 16,384 elements for SwiGLU; 256 tokens for rotary).
# (leading shape, features): rows that do not fill a tile, features that do not fill a block, one row.
RMS_SHAPES = [((2, 37), 48), ((5,), 100), ((1, 1), 16), ((3, 70), 1536)]
SWIGLU_SHAPES = [(3, 50, 77), (3, 7000), (1,)]
# (batch, heads, tokens, head dim, q laid out as transformers hands it over: a transposed view of [B, T, H, D])
ROTARY_SHAPES = [(2, 3, 37, 16, True), (1, 2, 300, 128, True), (2, 1, 20, 32, False)]


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def output_and_grads(fn, inputs, grad_out):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def assert_within_twice_the_eager_error(kernel, eager, exact, dtype):
    for got, reference, truth in zip(kernel, eager, exact):
        error = (got.double() - truth).abs().max().item()
        allowed = 2 * (reference.double() - truth).abs().max().item() + FLOOR[dtype]
        assert error <= allowed, (error, allowed)


def rms_problem(lead, features, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, features, generator=gen) * 3
    weight = torch.randn(features, generator=gen) * 0.5 + 1
    grad = torch.randn(*lead, features, generator=gen)
    return [t.to(DEVICE, dtype) for t in (x, weight)], grad.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,features", RMS_SHAPES)
def test_rms_norm_matches_float64(lead, features, dtype):
    inputs, grad = rms_problem(lead, features, dtype)
    kernel = output_and_grads(lambda x, w: rms_norm(x, w, 1e-6), inputs, grad)
    eager = output_and_grads(lambda x, w: rms_norm_reference(x, w, 1e-6), inputs, grad)
    exact = output_and_grads(lambda x, w: rms_norm_reference(x, w, 1e-6), [t.double() for t in inputs], grad)
    assert kernel[0].dtype == dtype and kernel[2].dtype == dtype
    assert_within_twice_the_eager_error(kernel, eager, exact, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SWIGLU_SHAPES, ids=str)
def test_swiglu_matches_float64(shape, dtype):
    gen = torch.Generator().manual_seed(1)
    gate, up, grad = (torch.randn(*shape, generator=gen).mul(3).to(DEVICE, dtype) for _ in range(3))
    kernel = output_and_grads(swiglu, [gate, up], grad)
    eager = output_and_grads(swiglu_reference, [gate, up], grad)
    exact = output_and_grads(swiglu_reference, [gate.double(), up.double()], grad)
    assert_within_twice_the_eager_error(kernel, eager, exact, dtype)


def rotary_problem(batch, heads, tokens, head_dim, transposed, dtype, seed=2):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, tokens, heads, head_dim) if transposed else (batch, heads, tokens, head_dim)
    x = torch.randn(*shape, generator=gen).to(DEVICE, dtype)
    x = x.transpose(1, 2) if transposed else x
    angles = torch.rand(batch, tokens, head_dim // 2, generator=gen) * 100
    angles = torch.cat([angles, angles], dim=-1)  # as Qwen2's rotary embedding repeats its frequencies
    grad = torch.randn(batch, heads, tokens, head_dim, generator=gen).to(DEVICE, dtype)
    return x, angles.cos().to(DEVICE, dtype), angles.sin().to(DEVICE, dtype), grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROTARY_SHAPES, ids=str)
def test_rotary_matches_float64(shape, dtype):
    x, cos, sin, grad = rotary_problem(*shape, dtype)
    kernel = output_and_grads(lambda t: rotary(t, cos, sin), [x], grad)
    eager = output_and_grads(lambda t: rotary_reference(t, cos, sin), [x], grad)
    exact = output_and_grads(lambda t: rotary_reference(t, cos.double(), sin.double()), [x.double()], grad)
    assert kernel[0].stride() == x.stride()  # written in q's own layout: no copy for the attention after it
    assert_within_twice_the_eager_error(kernel, eager, exact, dtype)


def test_a_float32_weight_on_half_rows_gives_float32_as_eager_does():
    (x, weight), grad = rms_problem((4,), 32, torch.float16)
    out = rms_norm(x, weight.float(), 1e-5)
    assert out.dtype == torch.float32
    assert (out - rms_norm_reference(x, weight.float(), 1e-5)).abs().max() < 1e-5


def test_compiled_calls_trace_into_one_graph_and_give_the_eager_results():
    """Compiled layers keep both kernels as custom operators: ``fullgraph`` tracing succeeds, and the compiled
    call gives exactly the eager output and gradients."""
    torch._dynamo.reset()
    (x, weight), grad = rms_problem((2, 9), 64, torch.float32)

    cos, sin = torch.ones(2, 9, 64, device=DEVICE), torch.zeros(2, 9, 64, device=DEVICE)

    def norm_then_gate(x, weight):
        h = rms_norm(x, weight, 1e-6)
        return swiglu(h, rotary(h[:, None], cos, sin)[:, 0])

    compiled = torch.compile(norm_then_gate, backend="aot_eager", fullgraph=True, dynamic=True)
    eager = output_and_grads(norm_then_gate, [x, weight], grad)
    traced = output_and_grads(compiled, [x, weight], grad)
    assert all(torch.equal(a, b) for a, b in zip(traced, eager))


def test_cpu_tensors_without_the_interpreter_run_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, weight, gate = torch.randn(3, 8, dtype=torch.float64), torch.rand(8, dtype=torch.float64), torch.randn(5)
    assert torch.equal(rms_norm(x, weight, 1e-6), rms_norm_reference(x, weight, 1e-6))
    assert torch.equal(swiglu(gate, gate + 1), swiglu_reference(gate, gate + 1))
    q, cos, sin = torch.randn(1, 2, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    assert torch.equal(rotary(q, cos, sin), rotary_reference(q, cos, sin))


def test_float32_angles_on_half_heads_give_float32_as_eager_does():
    x, cos, sin, _ = rotary_problem(1, 2, 8, 16, True, torch.float16)
    out = rotary(x, cos.float(), sin.float())
    assert out.dtype == torch.float32
    assert torch.equal(out, rotary_reference(x, cos.float(), sin.float()))


def test_rotary_heads_of_no_power_of_two_take_the_reference():
    x, cos, sin, _ = rotary_problem(1, 2, 6, 24, True, torch.float32)
    assert torch.equal(rotary(x, cos, sin), rotary_reference(x, cos, sin))


def test_mismatched_inputs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"needs a weight of shape \[8\]"):
        rms_norm(torch.randn(2, 8), torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="one shape and dtype"):
        swiglu(torch.randn(2, 8), torch.randn(2, 9))
    with pytest.raises(ValueError, match=r"cos, sin \[B, T, D\]"):
        rotary(torch.randn(1, 2, 3, 8), torch.randn(3, 8), torch.randn(3, 8))


def test_inputs_on_two_devices_are_refused_with_the_fix():
    """A kernel launched with one operand elsewhere fails deep inside Triton's launcher; say which and what to move
    (the meta device stands in for a second device)."""
    elsewhere = {"device": "meta"}
    with pytest.raises(ValueError, match="move the weight to x's device"):
        rms_norm(torch.randn(2, 8), torch.ones(8, **elsewhere), 1e-6)
    with pytest.raises(ValueError, match="put both on one device"):
        swiglu(torch.randn(2, 8), torch.randn(2, 8, **elsewhere))
    with pytest.raises(ValueError, match="move the angles to x's device"):
        rotary(torch.randn(1, 2, 3, 8), torch.randn(1, 3, 8, **elsewhere), torch.randn(1, 3, 8, **elsewhere))


def test_float64_inputs_take_the_reference_on_the_kernel_path():
    """The kernels compute in fp32 registers: float64 given to them came back with fp32's precision (errors near
    1e-7 against the reference's float64). The dispatchers send it to the references instead."""
    gen = torch.Generator().manual_seed(0)
    x, weight = (torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE) for shape in ((3, 40), (40,)))
    assert torch.equal(rms_norm(x, weight, 1e-6), rms_norm_reference(x, weight, 1e-6))
    assert torch.equal(rms_norm(x.float(), weight, 1e-6), rms_norm_reference(x.float(), weight, 1e-6))
    assert torch.equal(swiglu(x, x + 1), swiglu_reference(x, x + 1))
    q, cos, sin = (torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE)
                   for shape in ((1, 2, 5, 16), (1, 5, 16), (1, 5, 16)))
    assert torch.equal(rotary(q, cos, sin), rotary_reference(q, cos, sin))


def test_sin_of_another_dtype_than_the_heads_takes_the_reference_as_cos_does():
    # only cos was compared with x: half heads with half cos and float32 sin came back half, eager gives float32
    x, cos, sin, _ = rotary_problem(1, 2, 8, 16, True, torch.float16)
    out = rotary(x, cos, sin.float())
    assert out.dtype == torch.float32
    assert torch.equal(out, rotary_reference(x, cos, sin.float()))
