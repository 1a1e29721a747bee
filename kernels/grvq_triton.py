"""Fused GRVQ encode and decode in Triton (same contract as ``grvq_reference``).

Encode: one program per (tile of ``BLOCK_N`` vectors, group). The tile's residual stays in registers for all R
stages; for each stage the program sweeps the stage's codebook in ``BLOCK_K`` tiles, scoring
``|c|^2 - 2 <r, c>`` with one ``tl.dot`` per tile (codeword norms are precomputed once per call) and keeping a
running (best score, best code) pair per vector. Only a strictly smaller score replaces the running best, and
``tl.min`` breaks ties inside a tile to the left, so the lowest index wins as in the reference. The chosen
codewords are then gathered, subtracted from the residual and added to the quantized sum. The N x K distance
matrix never exists in memory: HBM traffic is x in, codes and quantized out, and the codebooks (L2-resident).

Decode: one program per (tile, group) gathers the R codewords of each vector and sums them in fp32; the tile
height and warps are autotuned on the GPU among shapes that do not spill registers.

Dot products: bf16/fp16 codebooks multiply in their dtype with fp32 accumulation (the residual is cast down
for the dot only; it stays fp32 in registers). fp32 codebooks follow PyTorch's own switch,
``torch.backends.cuda.matmul.allow_tf32``: exact fp32 (``ieee``) by default, TF32 tensor cores when a user
allows them for matmuls too. The interpreter (``TRITON_INTERPRET=1``, CPU tensors) always multiplies in fp32.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime import JITFunction
from triton.runtime.interpreter import InterpretedFunction

from jala_kernels.dispatch import KERNEL_DTYPES, dot_precision, interpreter_requested
from jala_kernels.grvq_reference import check_codes, check_grvq_shapes

# Small tiles for the interpreter: it runs every program in Python, and tl.dot needs sides of at least 16.
INTERPRETER_BLOCK_N = 16
INTERPRETER_BLOCK_K = 16


# TRITON_INTERPRET is read per call, but triton decides compiler or interpreter for its own library (tl.min,
# tl.zeros, ...) once, at import. The kernels therefore call builtins only, are wrapped for the mode of each
# call (``compiled_kernels``), and reduce with ``lowest_min``, a JITFunction in both modes: the interpreter
# runs a combine function's Python body, the compiler inlines it.
@JITFunction
def lowest_min(value_a, index_a, value_b, index_b):
    """Reduction step of the running arg-min: the smaller score wins; on equal scores the lower code does."""
    take_b = (value_b < value_a) | ((value_b == value_a) & (index_b < index_a))
    return tl.where(take_b, value_b, value_a), tl.where(take_b, index_b, index_a)


def grvq_encode_kernel(x_ptr, books_ptr, norms_ptr, codes_ptr, quant_ptr, N, K, GROUP_DIM,
                       G: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    group = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < GROUP_DIM
    tile_ok = row_ok[:, None] & dim_ok[None, :]
    x_offsets = rows.to(tl.int64)[:, None] * (G * GROUP_DIM) + group * GROUP_DIM + dims[None, :]
    residual = tl.load(x_ptr + x_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    quantized = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    for stage in range(R):
        book = books_ptr + (group * R + stage).to(tl.int64) * K * GROUP_DIM
        norms = norms_ptr + (group * R + stage) * K
        lhs = residual.to(books_ptr.dtype.element_ty)
        best_score = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
        best_code = tl.full([BLOCK_N], 0, dtype=tl.int32)
        for k_start in range(0, K, BLOCK_K):
            codes = k_start + tl.arange(0, BLOCK_K)
            code_ok = codes < K
            words = tl.load(book + codes[:, None] * GROUP_DIM + dims[None, :],
                            mask=code_ok[:, None] & dim_ok[None, :], other=0.0)
            # Padding codes score +inf, so they can never win.
            word_norms = tl.load(norms + codes, mask=code_ok, other=float("inf"))
            dots = tl.dot(lhs, tl.trans(words), input_precision=DOT_PRECISION)
            scores = word_norms[None, :] - 2.0 * dots
            tile_best, tile_code = tl.reduce((scores, tl.broadcast_to(codes[None, :], [BLOCK_N, BLOCK_K])), 1,
                                             lowest_min)
            # Strictly smaller only: an equal score in a later tile has a higher index and loses the tie.
            better = tile_best < best_score
            best_score = tl.where(better, tile_best, best_score)
            best_code = tl.where(better, tile_code, best_code)
        chosen = tl.load(book + best_code.to(tl.int64)[:, None] * GROUP_DIM + dims[None, :], mask=tile_ok,
                         other=0.0).to(tl.float32)
        residual -= chosen
        quantized += chosen
        tl.store(codes_ptr + rows.to(tl.int64) * (G * R) + group * R + stage, best_code.to(tl.int64), mask=row_ok)
    tl.store(quant_ptr + x_offsets, quantized.to(quant_ptr.dtype.element_ty), mask=tile_ok)


def grvq_decode_kernel(codes_ptr, books_ptr, out_ptr, N, K, GROUP_DIM, G: tl.constexpr, R: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    group = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    tile_ok = row_ok[:, None] & (dims < GROUP_DIM)[None, :]
    total = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    for stage in range(R):
        code = tl.load(codes_ptr + rows.to(tl.int64) * (G * R) + group * R + stage, mask=row_ok, other=0)
        book = books_ptr + (group * R + stage).to(tl.int64) * K * GROUP_DIM
        # a code outside [0, K) reads no memory and makes its row NaN, as visible as the reference's error
        in_book = (code >= 0) & (code < K)
        total += tl.load(book + code.to(tl.int64)[:, None] * GROUP_DIM + dims[None, :],
                         mask=tile_ok & in_book[:, None], other=float("nan")).to(tl.float32)
    out_offsets = rows.to(tl.int64)[:, None] * (G * GROUP_DIM) + group * GROUP_DIM + dims[None, :]
    tl.store(out_ptr + out_offsets, total.to(out_ptr.dtype.element_ty), mask=tile_ok)


def decode_configs() -> list[triton.Config]:
    """Tile heights and warps the GPU autotuner tries for decode (keyed on the group width and R). The gathers
    are latency-bound, so the trade between rows in flight per program and programs per SM is measured; only
    shapes that compile for sm_90 without register spills at 256-wide groups are offered (the 64-row, 4-warp
    tile decode had before spilled; ``python -m jala_kernels.gpu_compile`` shows each kernel's registers)."""
    return [triton.Config({"BLOCK_N": bn}, num_warps=w) for bn, w in ((16, 2), (16, 4), (16, 8), (32, 4), (32, 8),
                                                                      (64, 8))]


def encode_configs() -> list[triton.Config]:
    """Tile shapes the GPU autotuner tries (keyed on K, the group width and R)."""
    shapes = [(64, 64, 4), (64, 128, 8), (128, 64, 8), (32, 128, 4), (128, 128, 8), (32, 64, 4)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w in shapes for s in (2, 3)]


@functools.cache
def compiled_kernels(interpret: bool):
    """``(encode, decode)``: wrapped for the interpreter, or jitted and autotuned for the GPU."""
    if interpret:
        return InterpretedFunction(grvq_encode_kernel), InterpretedFunction(grvq_decode_kernel)
    encode = triton.autotune(configs=encode_configs(), key=["K", "GROUP_DIM", "R"])(JITFunction(grvq_encode_kernel))
    decode = triton.autotune(configs=decode_configs(), key=["GROUP_DIM", "R"])(JITFunction(grvq_decode_kernel))
    return encode, decode


def interpret_on(tensor: torch.Tensor) -> bool:
    """True to run in the interpreter (CPU tensors, TRITON_INTERPRET=1); False for the GPU; else one clear error."""
    if tensor.is_cuda:
        return False
    if interpreter_requested():
        return True
    raise ValueError(f"the Triton GRVQ kernels need CUDA tensors (got {tensor.device}), or TRITON_INTERPRET=1 to "
                     "run them in the interpreter: call jala_kernels.grvq_encode / grvq_decode to pick for you")


def check_kernel_dtypes(**tensors: torch.Tensor) -> None:
    """Refuse float64 (and non-float) tensors: the kernels keep residuals and sums in fp32, which would drop
    float64's precision without a word."""
    for name, tensor in tensors.items():
        if tensor.dtype not in KERNEL_DTYPES:
            raise ValueError(f"grvq: the Triton kernels take float16, bfloat16 or float32 {name}, got {tensor.dtype}; "
                             "cast it, or call jala_kernels.grvq_encode / grvq_decode (the reference takes it)")


def block_dim(group_dim: int) -> int:
    return max(16, triton.next_power_of_2(group_dim))


def grvq_encode_triton(x: torch.Tensor, codebooks: torch.Tensor, *, block_n: int | None = None,
                       block_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused encode; ``block_n``/``block_k`` pin the tiles (tests use them; the GPU otherwise autotunes)."""
    check_grvq_shapes(x, codebooks)
    check_kernel_dtypes(x=x, codebooks=codebooks)
    x, books = x.contiguous(), codebooks.contiguous()
    groups, stages, k, group_dim = books.shape
    n = x.shape[0]
    codes = torch.empty(n, groups, stages, dtype=torch.int64, device=x.device)
    quantized = torch.empty_like(x)
    if n == 0:
        return codes, quantized
    interpret = interpret_on(x)
    norms = books.float().pow(2).sum(dim=-1).contiguous()
    encode, _ = compiled_kernels(interpret)
    args = (x, books, norms, codes, quantized, n, k, group_dim)
    common = {"G": groups, "R": stages, "BLOCK_D": block_dim(group_dim), "DOT_PRECISION": dot_precision(books.dtype)}
    if interpret or block_n is not None or block_k is not None:
        tiles = {"BLOCK_N": block_n or INTERPRETER_BLOCK_N, "BLOCK_K": block_k or INTERPRETER_BLOCK_K}
        kernel = encode.fn if isinstance(encode, triton.runtime.Autotuner) else encode
        kernel[(triton.cdiv(n, tiles["BLOCK_N"]), groups)](*args, **common, **tiles)
    else:
        encode[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), groups)](*args, **common)
    return codes, quantized


def grvq_decode_triton(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Fused gather-and-sum of the chosen codewords; codes must lie in ``[0, K)`` (not checked on the device)."""
    check_codes(codes, codebooks)
    check_kernel_dtypes(codebooks=codebooks)
    books = codebooks.contiguous()
    codes = codes.contiguous()
    groups, stages, k, group_dim = books.shape
    n = codes.shape[0]
    out = torch.empty(n, groups * group_dim, dtype=books.dtype, device=books.device)
    if n == 0:
        return out
    interpret = interpret_on(books)
    _, decode = compiled_kernels(interpret)
    args = (codes, books, out, n, k, group_dim)
    common = {"G": groups, "R": stages, "BLOCK_D": block_dim(group_dim)}
    if interpret:
        decode[(triton.cdiv(n, INTERPRETER_BLOCK_N), groups)](*args, **common, BLOCK_N=INTERPRETER_BLOCK_N)
    else:
        decode[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), groups)](*args, **common)
    return out
