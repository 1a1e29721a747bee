"""Operator calls and memory traffic of a micro-step's two image encoders: the trained vision tower and the frozen
frame encoder, next to the language model's.

    python -m benchmarks.vision_traffic                          # the full recipe's micro-step, bf16 (~1 min)
    python -m benchmarks.vision_traffic --arch tiny --images 2 --frames 4 --tokens 48   # what the tests call

Half of the H200's kernel time in a step (171.7 ms of 340) was outside matrix multiplies and attention, bound
by memory bandwidth (docs/performance.md, section 2), and ``benchmarks/lm_traffic.py`` accounts for the language
model's share of it. This counts the rest of the backbone the same way (``lm_traffic.OperatorCensus``, fake
tensors at real sizes, nothing computed): the InternViT vision tower forward and backward over the micro-step's
images, and the frame encoder (DINOv2-B/14's shape) forward only, without gradients, over the micro-step's
distinct boundary frames (each sample's (o_t, o_t+k), shared by both hands' chunks). Each part's non-matmul bytes are priced at the H200's and the
A800's HBM bandwidth: the time its elementwise kernels would take if each ran at full bandwidth, a lower bound.
Results: a dated markdown table in benchmarks/results/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks import lm_traffic
from benchmarks.report import write_results
from jala_ds.bench.cards import CARDS
from jala_ds.bench.dims import published_encoder_config
from jala_ds.bench.tables import markdown_table
from jala_ds.model.backbone import INTERNVL3_2B_TEXT_VOCAB, backbone_config
from jala_ds.model.visual_encoder import tiny_encoder_config

RECIPE_IMAGES = 16
"""Images in a full-recipe micro-step: one 448-px frame per sample, 16 samples."""
RECIPE_FRAMES = 16 * 2
"""Frame-encoder inputs in that micro-step: each sample's (o_t, o_t+k), which both hands' chunks share."""
PRICED_CARDS = ("h200", "a800")


def vision_tower_census(arch: str, images: int, image_size: int, dtype: torch.dtype) -> lm_traffic.OperatorCensus:
    """Forward + backward of ``arch``'s InternViT over ``images`` images, counted (the tower trains)."""
    config = backbone_config(arch, image_size, INTERNVL3_2B_TEXT_VOCAB, image_token_id=0).vision_config
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        tower = transformers.InternVLVisionModel(config).to(dtype)
    return _count(tower, torch.Size((images, 3, image_size, image_size)), dtype, backward=True)


def frame_encoder_census(arch: str, frames: int, image_size: int, dtype: torch.dtype) -> lm_traffic.OperatorCensus:
    """Forward of the DINOv2 frame encoder over ``frames`` frames without gradients (it is frozen), counted: the
    published base shape, or the tiny random one for ``arch=tiny``."""
    config = (tiny_encoder_config("dinov2", image_size) if arch == "tiny"
              else published_encoder_config("dinov2", image_size))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        encoder = transformers.Dinov2Model(config).to(dtype)
    return _count(encoder, torch.Size((frames, 3, image_size, image_size)), dtype, backward=False)


def _count(model: torch.nn.Module, pixels: torch.Size, dtype: torch.dtype, backward: bool) -> lm_traffic.OperatorCensus:
    counted = lm_traffic.OperatorCensus()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        pixel_values = torch.randn(pixels, dtype=dtype)
        with counted, torch.set_grad_enabled(backward):
            hidden = model(pixel_values=pixel_values).last_hidden_state
            if backward:
                hidden.sum().backward()
    return counted


def part_rows(results: dict[str, lm_traffic.OperatorCensus]) -> list[dict]:
    """Per part: calls, bytes by group, and the non-matmul bytes in ms at each priced card's HBM bandwidth."""
    rows = []
    for part, counted in results.items():
        row: dict[str, object] = {"part": part, "operator calls": sum(counted.calls.values())}
        for name in lm_traffic.GROUPS:
            row[f"{name} GB"] = sum(b for op, b in counted.bytes.items() if lm_traffic.group(op) == name) / 1e9
        for card in PRICED_CARDS:
            row[f"other ms at {card} bandwidth"] = row["other GB"] / CARDS[card].hbm_tb_s
        rows.append(row)
    return rows


def run(arch: str = "internvl3_2b", images: int = RECIPE_IMAGES, frames: int = RECIPE_FRAMES,
        tokens: int = 16 * 576, dtype: str = "bf16", out_dir: Path | None = None) -> tuple[Path, list[dict]]:
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    image_size, frame_size = (448, 224) if arch != "tiny" else (56, 28)
    results = {"language model (eager)": lm_traffic.census(arch, tokens, torch_dtype, fused=False),
               "language model (model.fused_ops=true)": lm_traffic.census(arch, tokens, torch_dtype, fused=True),
               f"vision tower ({images} images, forward + backward)":
                   vision_tower_census(arch, images, image_size, torch_dtype),
               f"frame encoder ({frames} frames, forward only)":
                   frame_encoder_census(arch, frames, frame_size, torch_dtype)}
    rows = part_rows(results)
    notes = [f"`python -m benchmarks.vision_traffic --arch {arch} --images {images} --frames {frames} --tokens {tokens} "
             f"--dtype {dtype}`: each part of one micro-step on fake tensors (nothing computed); images at "
             f"{image_size} px, frames at {frame_size} px, the language model over one row of {tokens} tokens",
             "calls: non-view operators dispatched (on a GPU, kernel launches); GB: their inputs' and outputs' bytes, "
             "the traffic of kernels that read and write each once",
             "other ms: the non-matmul, non-attention bytes at the card's HBM bandwidth (a lower bound on those "
             "kernels' time); the perceivers, projector, heads and optimiser are not counted"]
    md = write_results("vision_traffic", rows, title="Operator calls and memory traffic per micro-step, by part",
                       device="analytic (fake tensors)", notes=notes, out_dir=out_dir)
    top = [{"part": part, "operator": op, "calls": counted.calls[op], "GB": counted.bytes[op] / 1e9}
           for part, counted in list(results.items())[2:]
           for op in sorted((op for op in counted.bytes if lm_traffic.group(op) == "other"),
                            key=counted.bytes.get, reverse=True)[:8]]
    md.write_text(f"{md.read_text()}\n## The encoders' costliest operators outside matmuls and attention\n\n"
                  f"{markdown_table(top)}\n")
    return md, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vision_traffic", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="internvl3_2b", help="backbone shape: internvl3_2b, tiny")
    parser.add_argument("--images", type=int, default=RECIPE_IMAGES, help="vision-tower images per micro-step")
    parser.add_argument("--frames", type=int, default=RECIPE_FRAMES, help="frame-encoder frames per micro-step")
    parser.add_argument("--tokens", type=int, default=16 * 576, help="language-model positions per micro-step")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    md, _ = run(args.arch, args.images, args.frames, args.tokens, args.dtype, args.out)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
