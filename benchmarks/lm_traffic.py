"""Operator calls and memory traffic of the language model's training call, eager against ``model.fused_ops``.

    python -m benchmarks.lm_traffic                          # InternVL3-2B's LM, 9216 tokens (one micro-step), bf16
    python -m benchmarks.lm_traffic --arch tiny --tokens 64  # seconds; what the tests call

No GPU needed: the language model runs forward and backward on fake tensors (shapes only, nothing computed) at
its real sizes, and every operator it dispatches is counted: calls, which on a GPU are kernel launches the host
issues one by one, and the bytes of their inputs and outputs, the traffic of a kernel that reads each input and
writes each output once (a lower bound: eager's elementwise kernels do just that). Views cost nothing and are
not counted. Operators fall in three groups: matrix multiplies, attention (dense SDPA here; the recipe's Triton
chunk attention moves the same q, k, v and output) and the rest, the memory-bound elementwise work, norms and
casts that ``model.fused_ops`` targets. Results: a dated markdown table in benchmarks/results/.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.report import write_results
from benchmarks.timing import environment
from jala_ds.bench.tables import markdown_table
from jala_ds.model.backbone import INTERNVL3_2B_TEXT_VOCAB, backbone_config
from jala_ds.model.fused_lm_ops import fuse_language_model_ops

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward"}
"""Tensor-core work; a vision patch embedding's convolution is a matmul over its patches."""
ALIASES = {"_unsafe_view", "_reshape_alias", "lift_fresh"}
"""Operators that return a view without saying so in their schema: no kernel, no traffic."""
GROUPS = ("matmul", "attention", "other")


def group(name: str) -> str:
    return "matmul" if name in MATMULS else "attention" if "attention" in name else "other"


class OperatorCensus(TorchDispatchMode):
    """Counts each non-view operator's calls and the bytes of its tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if func.is_view or not outputs or func.overloadpacket.__name__ in ALIASES:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        name = func.overloadpacket.__name__
        self.calls[name] += 1
        self.bytes[name] += sum(t.numel() * t.element_size() for t in inputs + outputs)
        return out


def census(arch: str, tokens: int, dtype: torch.dtype, fused: bool) -> OperatorCensus:
    """One forward + backward of ``arch``'s language model over ``tokens`` positions, counted."""
    config = backbone_config(arch, 448, INTERNVL3_2B_TEXT_VOCAB, image_token_id=0).text_config
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = transformers.Qwen2Model(config).to(dtype)
    if fused:
        fuse_language_model_ops(model)
    counted = OperatorCensus()
    # The fused kernels' dispatchers take CPU tensors to Triton only when told to; on fake tensors no kernel runs.
    with environment("TRITON_INTERPRET", "1"), FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        embeds = torch.randn(1, tokens, config.hidden_size, dtype=dtype, requires_grad=True)
        with counted:
            model(inputs_embeds=embeds).last_hidden_state.sum().backward()
    return counted


def summary_rows(results: dict[str, OperatorCensus]) -> list[dict]:
    rows = []
    for variant, counted in results.items():
        row: dict[str, object] = {"variant": variant, "operator calls": sum(counted.calls.values())}
        for name in GROUPS:
            row[f"{name} GB"] = sum(b for op, b in counted.bytes.items() if group(op) == name) / 1e9
        rows.append(row)
    eager = rows[0]
    for row in rows:
        row["other GB / eager's"] = row["other GB"] / eager["other GB"]
        row["calls / eager's"] = row["operator calls"] / eager["operator calls"]
    return rows


def top_rows(results: dict[str, OperatorCensus], count: int) -> list[dict]:
    """Each variant's costliest operators outside matmuls and attention."""
    rows = []
    for variant, counted in results.items():
        others = sorted((op for op in counted.bytes if group(op) == "other"), key=counted.bytes.get, reverse=True)
        rows += [{"variant": variant, "operator": op, "calls": counted.calls[op], "GB": counted.bytes[op] / 1e9}
                 for op in others[:count]]
    return rows


def run(arch: str = "internvl3_2b", tokens: int = 16 * 576, dtype: str = "bf16",
        out_dir: Path | None = None) -> tuple[Path, list[dict]]:
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    results = {variant: census(arch, tokens, torch_dtype, fused) for variant, fused in
               (("eager", False), ("model.fused_ops=true", True))}
    rows = summary_rows(results)
    notes = [f"`python -m benchmarks.lm_traffic --arch {arch} --tokens {tokens} --dtype {dtype}`: {arch}'s language "
             f"model, forward + backward over one row of {tokens} tokens, on fake tensors (nothing computed)",
             "calls: non-view operators dispatched (on a GPU, kernel launches); GB: their inputs' and outputs' bytes, "
             "the traffic of kernels that read and write each once"]
    md = write_results("lm_traffic", rows, title="Language-model operator calls and memory traffic per training call",
                       device="analytic (fake tensors)", notes=notes, out_dir=out_dir,
                       mlflow_metrics={"other_gb_fused_over_eager": rows[1]["other GB / eager's"],
                                       "calls_fused_over_eager": rows[1]["calls / eager's"]})
    md.write_text(f"{md.read_text()}\n## Costliest operators outside matmuls and attention\n\n"
                  f"{markdown_table(top_rows(results, 8))}\n")
    return md, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_traffic", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="internvl3_2b", help="backbone shape: internvl3_2b, tiny, ...")
    parser.add_argument("--tokens", type=int, default=16 * 576, help="positions in the row (default: one micro-step)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    md, _ = run(args.arch, args.tokens, args.dtype, args.out)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
