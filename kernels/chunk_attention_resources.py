"""Compile the chunk-attention kernels for a GPU without one, and report what each autotune config costs.

    python -m jala_kernels.chunk_attention_resources                     # sm_90, bf16, head dims 64 and 128
    python -m jala_kernels.chunk_attention_resources --head-dim 128 --first --dtype fp16

For every config: shared memory (it must fit the card: 227 KiB per block on an H100), registers per thread
and the bytes per thread spilled to the stack (``gpu_compile.compile_for_gpu``: no GPU or driver needed). This checks what the interpreter tests cannot: that the kernels compile for the GPU at all, and
which configs are worth autotuning. The arguments are specialised as a launch specialises them (16-byte
aligned pointers; strides and N divisible by 16), without which Triton would not pipeline the loads.
Run it where Triton has not been imported for the interpreter (no ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import argparse

from jala_kernels.chunk_attention_backward import _delta_kernel, chunk_attention_dkdv_kernel, chunk_attention_dq_kernel
from jala_kernels.chunk_attention_forward import chunk_attention_forward_kernel
from jala_kernels.chunk_attention_tiles import INTERPRETED
from jala_kernels.gpu_compile import SHARED_MEMORY_LIMIT, Resources, compile_for_gpu

KERNELS = {"forward": chunk_attention_forward_kernel, "dk/dv": chunk_attention_dkdv_kernel,
           "dq": chunk_attention_dq_kernel}
SIZES, SCALES = {"N_CTX", "H_Q", "H_KV"}, {"qk_scale", "scale"}
FP32_POINTERS, INT32_POINTERS = {"LSE", "DELTA"}, {"KEY_START", "KEY_STOP", "QUERY_START", "QUERY_STOP"}


def compile_kernel(jit_fn, constants: dict, num_warps: int, num_stages: int, dtype: str, arch: int) -> Resources:
    """Compile ``jit_fn`` (a ``JITFunction``) for ``sm_<arch>`` with ``dtype`` data pointers; read its costs."""
    signature = {}
    for name in jit_fn.arg_names:
        if name in constants:
            continue
        if name in SCALES:
            signature[name] = "fp32"
        elif name in SIZES or name.startswith("stride"):
            signature[name] = "i32"
        else:  # a pointer: capitals name every pointer argument of these kernels
            signature[name] = "*fp32" if name in FP32_POINTERS else "*i32" if name in INT32_POINTERS else f"*{dtype}"
    aligned = tuple(name for name, kind in signature.items()
                    if kind.startswith("*") or name.startswith("stride") or name == "N_CTX")
    return compile_for_gpu(jit_fn, signature, constants, num_warps, num_stages, arch, aligned)


def config_resources(dtype: str = "bf16", head_dims: tuple[int, ...] = (64, 128), group: int = 6, arch: int = 90,
                     first_only: bool = False) -> list[dict[str, object]]:
    """One row per (kernel, head dim, autotune config), plus the delta kernel's fixed config."""
    precision = "ieee" if dtype == "fp32" else "tf32"
    rows = []
    for head_dim in head_dims:
        for name, autotuned in KERNELS.items():
            for config in autotuned.configs[:1] if first_only else autotuned.configs:
                constants = dict(config.kwargs, GROUP=group, HEAD_DIM=head_dim, INPUT_PRECISION=precision)
                used = compile_kernel(autotuned.fn, constants, config.num_warps, config.num_stages, dtype, arch)
                rows.append({"kernel": name, "head dim": head_dim, "BLOCK_M": config.kwargs["BLOCK_M"],
                             "BLOCK_N": config.kwargs["BLOCK_N"], "warps": config.num_warps,
                             "stages": config.num_stages, **vars(used)})
        used = compile_kernel(_delta_kernel, {"HEAD_DIM": head_dim, "BLOCK": 128}, 4, 1, dtype, arch)
        rows.append({"kernel": "delta", "head dim": head_dim, "warps": 4, **vars(used)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jala_kernels.chunk_attention_resources",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_MEMORY_LIMIT), help="sm_XX target")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--first", action="store_true", help="only the first config of each kernel (quick)")
    args = parser.parse_args(argv)
    if INTERPRETED:
        parser.error("TRITON_INTERPRET=1 is set: the kernels were built for the interpreter; unset it")
    limit = SHARED_MEMORY_LIMIT[args.arch]
    rows = config_resources(args.dtype, tuple(args.head_dim), arch=args.arch, first_only=args.first)
    for row in rows:
        fits = "fits" if row["shared_bytes"] <= limit else f"OVER the {limit} B limit"
        print("  ".join(f"{key}={value}" for key, value in row.items()), fits)
    return 0 if all(row["shared_bytes"] <= limit for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
