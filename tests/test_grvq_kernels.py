"""Fused GRVQ Triton kernels against the plain-PyTorch reference, fp32: compiled on a GPU when there is one, in
Triton's interpreter on CPU tensors otherwise."""
import pytest
import torch

from jala_kernels import grvq_decode, grvq_decode_reference, grvq_encode, grvq_encode_reference, grvq_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def random_problem(seed: int, n: int, groups: int, stages: int, k: int, group_dim: int, device: str = DEVICE):
    gen = torch.Generator().manual_seed(seed)
    x, books = torch.randn(n, groups * group_dim, generator=gen), torch.randn(groups, stages, k, group_dim, generator=gen)
    return x.to(device), books.to(device)


@pytest.mark.parametrize("n, groups, stages, k, group_dim, block_k", [
    (21, 2, 3, 21, 12, 16),   # K and D not powers of two, K spans two tiles, a ragged last row tile
    (16, 1, 1, 16, 16, 16),   # R = 1, everything one tile
    (20, 1, 2, 40, 5, 16),    # three codebook tiles, a group narrower than tl.dot's minimum of 16
    (9, 4, 2, 33, 3, 32),     # four groups, a ragged codebook tile
])
def test_codes_equal_the_reference_and_quantized_vectors_agree(n, groups, stages, k, group_dim, block_k):
    x, books = random_problem(n + k, n, groups, stages, k, group_dim)
    codes, quantized = grvq_triton.grvq_encode_triton(x, books, block_n=16, block_k=block_k)
    ref_codes, ref_quantized = grvq_encode_reference(x, books)
    assert codes.dtype == torch.int64 and codes.shape == (n, groups, stages)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(quantized, ref_quantized, rtol=1e-5, atol=1e-5)


def test_decode_inverts_encode():
    x, books = random_problem(3, 29, 2, 3, 19, 7)
    codes, quantized = grvq_encode(x, books)
    assert torch.equal(grvq_decode(codes, books), quantized)


def test_ties_go_to_the_lowest_index_within_and_across_codebook_tiles():
    # Small integers keep every dot product exact; codeword 3 is repeated at 9 (same tile) and 20 and 35
    # (later tiles), so every vector nearest to it ties four ways.
    gen = torch.Generator().manual_seed(4)
    books = torch.randint(-4, 5, (1, 2, 40, 6), generator=gen).float()
    for stage in range(2):
        for twin in (9, 20, 35):
            books[0, stage, twin] = books[0, stage, 3]
    x = torch.cat([books[0, 0, 3].repeat(8, 1), torch.randint(-4, 5, (24, 6), generator=gen).float()])
    books, x = books.to(DEVICE), x.to(DEVICE)
    codes, _ = grvq_triton.grvq_encode_triton(x, books, block_n=16, block_k=16)
    assert torch.equal(codes, grvq_encode_reference(x, books)[0])
    assert torch.all(codes[:8, 0, 0] == 3)
    assert not torch.isin(codes.cpu(), torch.tensor([9, 20, 35])).any()


@pytest.mark.parametrize("on", ["1", "true"])
def test_dispatcher_reads_the_environment_at_call_time_as_triton_does(monkeypatch, on):
    calls = []
    real = grvq_triton.grvq_encode_triton
    monkeypatch.setattr(grvq_triton, "grvq_encode_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x, books = random_problem(5, 16, 1, 2, 16, 16, device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", on)
    interpreted = grvq_encode(x, books)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    referenced = grvq_encode(x, books)
    assert calls == [1]
    assert torch.equal(interpreted[0], referenced[0])


def test_a_code_outside_the_codebook_is_nan_in_the_kernel_and_an_error_in_the_reference():
    _, books = random_problem(5, 3, 1, 2, 4, 3)
    codes = torch.tensor([[[0, 1]], [[-1, 0]], [[2, 4]]], device=DEVICE)
    decoded = grvq_triton.grvq_decode_triton(codes, books)
    assert decoded[1:].isnan().all() and not decoded[0].isnan().any()  # no memory outside the books is read
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\), got \[-1, 4\]"):
        grvq_decode_reference(codes, books)


def test_empty_input_returns_empty_results():
    books = torch.randn(2, 3, 16, 4, device=DEVICE)
    codes, quantized = grvq_encode(torch.zeros(0, 8, device=DEVICE), books)
    assert codes.shape == (0, 2, 3) and quantized.shape == (0, 8)
    assert grvq_decode(codes, books).shape == (0, 8)


def test_kernels_on_cpu_tensors_without_the_interpreter_get_one_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, books = random_problem(6, 16, 1, 1, 16, 16, device="cpu")
    with pytest.raises(ValueError, match="need CUDA tensors"):
        grvq_triton.grvq_encode_triton(x, books)
    with pytest.raises(ValueError, match="need CUDA tensors"):
        grvq_triton.grvq_decode_triton(torch.zeros(16, 1, 1, dtype=torch.int64), books)


def test_codebooks_without_codewords_are_refused_before_any_kernel_reads_them():
    # K = 0: the kernel picked code 0 and read past the codebooks (a segfault in the interpreter)
    x, books = torch.randn(4, 8, device=DEVICE), torch.randn(1, 1, 0, 8, device=DEVICE)
    for encode in (grvq_encode, grvq_encode_reference, grvq_triton.grvq_encode_triton):
        with pytest.raises(ValueError, match=r"K=0 codewords per stage: give each stage at least one"):
            encode(x, books)


def test_float64_takes_the_reference_and_the_kernels_refuse_it():
    # the kernels keep residuals and sums in fp32: float64 came back with fp32's precision
    x, books = (t.double() for t in random_problem(8, 21, 2, 3, 21, 12))
    codes, quantized = grvq_encode(x, books)
    expected_codes, expected = grvq_encode_reference(x, books)
    assert torch.equal(codes, expected_codes) and torch.equal(quantized, expected)
    assert torch.equal(grvq_decode(codes, books), grvq_decode_reference(codes, books))
    with pytest.raises(ValueError, match=r"float32 codebooks, got torch.float64; cast it"):
        grvq_triton.grvq_encode_triton(x.float(), books)
    with pytest.raises(ValueError, match=r"float32 codebooks, got torch.float64; cast it"):
        grvq_triton.grvq_decode_triton(codes, books)
