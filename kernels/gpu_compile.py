"""Compile Triton kernels for a GPU without one: what the interpreter tests cannot check.

    python -m jala_kernels.gpu_compile            # the fused LM ops and GRVQ kernels for sm_90, bf16
    python -m jala_kernels.gpu_compile --arch 80  # for an A100 / A800

The interpreter runs a kernel's Python; only the compiler finds what the GPU build refuses (a shape it cannot
lower, an op on the wrong dtype, too much shared memory). Triton ships ptxas and cuobjdump, so compiling to a
cubin and reading its registers, spills and shared memory needs no GPU or driver. Each kernel is compiled at
the recipe's sizes with its launch's constants; ``chunk_attention_resources.py`` sweeps the attention kernels'
autotune configs the same way. Run it where Triton has not been imported for the interpreter (no
``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime import JITFunction

SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912}
"""Largest dynamic shared memory per block in bytes: H100/H200 (sm_90), A100/A800 (sm_80)."""


@dataclass(frozen=True)
class Resources:
    shared_bytes: int
    registers: int
    spill_bytes: int
    """Stack bytes per thread: register spills (0 when everything fits in registers)."""


def compile_for_gpu(kernel: JITFunction, signature: dict[str, str], constants: dict, num_warps: int,
                    num_stages: int = 2, arch: int = 90, aligned: tuple[str, ...] = ()) -> Resources:
    """Compile ``kernel`` for ``sm_<arch>``; ``signature`` types every non-constant argument (``*bf16``, ``i32``,
    ``fp32``...), ``aligned`` names those a launch would specialise as divisible by 16 (so loads pipeline)."""
    attrs = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(kernel.arg_names) if name in aligned}
    source = ASTSource(fn=kernel, signature={**signature, **dict.fromkeys(constants, "constexpr")},
                       constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    registers, stack = _register_usage(compiled.asm["cubin"])
    return Resources(compiled.metadata.shared, registers, stack)


def _register_usage(cubin: bytes) -> tuple[int, int]:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([str(cuobjdump), "--dump-resource-usage", file.name], capture_output=True, text=True,
                                check=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", report)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no register usage:\n{report}")
    return int(match.group(1)), int(match.group(2))


def lm_and_grvq_kernels(dtype: str) -> list[tuple[str, JITFunction, dict[str, str], dict, int]]:
    """(name, kernel, signature, constants, warps) of the fused LM ops at InternVL3-2B's sizes and of GRVQ at the
    paper tokenizer's (D=512, G=2, R=8), as their launches set them."""
    from jala_kernels.grvq_triton import block_dim, decode_configs, grvq_decode_kernel, grvq_encode_kernel
    from jala_kernels.rms_norm_triton import (
        BACKWARD_CONFIGS,
        launch_shape,
        rms_norm_backward_kernel,
        rms_norm_forward_kernel,
    )
    from jala_kernels.rotary_triton import BLOCK_T, NUM_WARPS, rotary_kernel
    from jala_kernels.swiglu_triton import BLOCK, swiglu_backward_kernel, swiglu_forward_kernel

    data, i32 = f"*{dtype}", "i32"
    block, tile_rows, warps = launch_shape(1536)
    norm = {"BLOCK": block, "BLOCK_R": tile_rows}
    rotary_args = {"X": data, "COS": data, "SIN": data, "OUT": data, "n_tokens": i32, "n_heads": i32,
                   **dict.fromkeys(("stride_xb", "stride_xh", "stride_xt", "stride_ab", "stride_at", "stride_ob",
                                    "stride_oh", "stride_ot"), i32)}
    grvq = {"G": 2, "R": 8, "BLOCK_D": block_dim(256)}
    return [
        ("rms_norm forward", rms_norm_forward_kernel,
         {"X": data, "W": data, "Y": data, "RSTD": "*fp32", "n_rows": i32, "n_cols": i32, "stride_x": i32,
          "stride_y": i32, "eps": "fp32"}, norm, warps),
        *((f"rms_norm backward {config.kwargs['BLOCK_R']} rows", rms_norm_backward_kernel,
           {"DY": data, "X": data, "W": data, "RSTD": "*fp32", "DX": data, "DW_PARTIAL": "*fp32", "n_rows": i32,
            "n_cols": i32, "stride_dy": i32, "stride_x": i32, "stride_dx": i32}, {"BLOCK": block, **config.kwargs},
           config.num_warps) for config in BACKWARD_CONFIGS),
        ("swiglu forward", swiglu_forward_kernel, {"GATE": data, "UP": data, "OUT": data, "n": i32},
         {"BLOCK": BLOCK}, 4),
        ("swiglu backward", swiglu_backward_kernel,
         {"DOUT": data, "GATE": data, "UP": data, "DGATE": data, "DUP": data, "n": i32}, {"BLOCK": BLOCK}, 4),
        ("rotary forward", rotary_kernel, rotary_args, {"HEAD_DIM": 128, "BLOCK_T": BLOCK_T, "TRANSPOSED": False},
         NUM_WARPS),
        ("rotary backward", rotary_kernel, rotary_args, {"HEAD_DIM": 128, "BLOCK_T": BLOCK_T, "TRANSPOSED": True},
         NUM_WARPS),
        ("grvq encode", JITFunction(grvq_encode_kernel),
         {"x_ptr": data, "books_ptr": data, "norms_ptr": "*fp32", "codes_ptr": "*i64", "quant_ptr": data, "N": i32,
          "K": i32, "GROUP_DIM": i32}, {**grvq, "BLOCK_N": 64, "BLOCK_K": 64, "DOT_PRECISION": "ieee"}, 4),
        *((f"grvq decode {config.kwargs['BLOCK_N']} rows", JITFunction(grvq_decode_kernel),
           {"codes_ptr": "*i64", "books_ptr": data, "out_ptr": data, "N": i32, "K": i32, "GROUP_DIM": i32},
           {**grvq, **config.kwargs}, config.num_warps) for config in decode_configs()),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jala_kernels.gpu_compile", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_MEMORY_LIMIT), help="sm_XX target")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args(argv)
    from jala_kernels.rms_norm_triton import INTERPRETED

    if INTERPRETED:
        parser.error("TRITON_INTERPRET=1 is set: the kernels were built for the interpreter; unset it")
    limit, ok = SHARED_MEMORY_LIMIT[args.arch], True
    for name, kernel, signature, constants, warps in lm_and_grvq_kernels(args.dtype):
        used = compile_for_gpu(kernel, signature, constants, warps, arch=args.arch)
        fits = used.shared_bytes <= limit
        ok &= fits
        print(f"kernel={name}  warps={warps}  " + "  ".join(f"{k}={v}" for k, v in vars(used).items()),
              "fits" if fits else f"OVER the {limit} B limit")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
