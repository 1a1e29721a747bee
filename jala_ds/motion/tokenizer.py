"""The trained GRVQ motion tokenizer behind the data pipeline's ``MotionTokenizer`` protocol, and its checkpoint.

    tok = load_grvq_tokenizer("runs/grvq_tokenizer")
    codes = tok.encode(poses)            # float32 [chunks * 15, 99] -> int32 [chunks, 128]
    poses_hat = tok.decode(codes)        # -> float32 [chunks * 15, 99]

A checkpoint is a folder (no pickle anywhere):
- ``config.json``: format and version, the tokenizer section (architecture and training fields), chunk_frames,
  and how it was trained (steps, chunks behind the statistics);
- ``model.safetensors``: encoder/decoder weights, codebooks and their EMA statistics;
- ``normalization.json``: the per-dimension mean and std of the 99 pose dims, from the training data.

Token layout: ``jala_ds.motion.tokenizer_model`` (per part: step, group, stage; wrist part first).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from jala_ds.data.motion_tokens import code_array
from jala_ds.motion.checkpoint_folder import folder_config, written_whole
from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.mano import FRAME_DIM
from jala_ds.motion.tokenizer_model import MotionTokenizerModel

CHECKPOINT_FORMAT = "jala-grvq-motion-tokenizer"
FORMAT_VERSION = 1
LAYOUT_FIELDS = ("downsample", "groups", "stages", "codes_per_stage")
"""Fields that fix the token layout: a recipe that uses the checkpoint must agree on them."""
CHUNKS_PER_FORWARD = 4096
"""Chunks encoded or decoded per forward pass, which bounds memory on long clips."""


class GrvqMotionTokenizer:
    """Numpy in, numpy out: the ``MotionTokenizer`` protocol over a :class:`MotionTokenizerModel`."""

    def __init__(self, model: MotionTokenizerModel, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.chunk_frames = model.chunk_frames
        self.tokens_per_chunk = self.cfg.tokens_per_chunk
        self.vocab_per_part = self.cfg.vocab_per_part

    def encode(self, poses: np.ndarray) -> np.ndarray:
        """float32 ``[chunks * chunk_frames, 99]`` -> int32 ``[chunks, tokens_per_chunk]``."""
        poses = np.asarray(poses)
        if poses.ndim != 2 or poses.shape[1] != FRAME_DIM or poses.shape[0] % self.chunk_frames:
            raise ValueError(f"poses must be [chunks * {self.chunk_frames}, {FRAME_DIM}], got shape {poses.shape}: "
                             f"cut the sequence to a multiple of {self.chunk_frames} frames")
        if not np.isfinite(poses).all():
            raise ValueError("poses contain NaN or inf: clean or drop the clip before tokenizing")
        if len(poses) == 0:
            return np.zeros((0, self.tokens_per_chunk), np.int32)
        chunks = torch.from_numpy(poses.astype(np.float32)).view(-1, self.chunk_frames, FRAME_DIM)
        out = [self.model.encode(batch.to(self.device)).cpu() for batch in chunks.split(CHUNKS_PER_FORWARD)]
        return torch.cat(out).numpy().astype(np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int ``[chunks, tokens_per_chunk]`` -> float32 ``[chunks * chunk_frames, 99]``."""
        codes = code_array(codes, self.tokens_per_chunk)
        tokens = torch.from_numpy(codes.astype(np.int64))
        stage_of_slot = torch.arange(self.tokens_per_chunk) % self.cfg.stages
        if not torch.equal(tokens // self.cfg.codes_per_stage, stage_of_slot.expand_as(tokens)):
            raise ValueError(f"codes are not from this tokenizer: each must lie in its stage's range "
                             f"[r * {self.cfg.codes_per_stage}, (r + 1) * {self.cfg.codes_per_stage}) of "
                             f"[0, {self.vocab_per_part}) (per-part codes, not vocabulary ids)")
        if len(codes) == 0:
            return np.zeros((0, FRAME_DIM), np.float32)
        out = [self.model.decode(batch.to(self.device)).cpu() for batch in tokens.split(CHUNKS_PER_FORWARD)]
        return torch.cat(out).reshape(-1, FRAME_DIM).numpy().astype(np.float32)


def save_tokenizer(model: MotionTokenizerModel, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write the checkpoint folder; an existing one is replaced only once the new one is complete."""
    config = {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "chunk_frames": model.chunk_frames,
              "tokenizer": dataclasses.asdict(model.cfg), "training": info}
    with written_whole(out_dir) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(staging / "model.safetensors"))
        (staging / "normalization.json").write_text(json.dumps(
            {"mean": model.mean.tolist(), "std": model.std.tolist()}, indent=1))
        (staging / "config.json").write_text(json.dumps(config, indent=2))
    return Path(out_dir)


def load_grvq_tokenizer(path: str | Path, device: str | torch.device = "cpu",
                        expect: TokenizerConfig | None = None) -> GrvqMotionTokenizer:
    """Load a checkpoint folder written by ``jala tokenizer train``.

    ``expect``: the recipe's tokenizer section; a checkpoint whose token layout differs from it is refused
    (the model's vocabulary is sized from the recipe).
    """
    path = Path(path)
    how_to_make = "train one with `jala tokenizer train --recipe R --out DIR` and set motion_tokenizer.checkpoint=DIR"
    config = folder_config(path, CHECKPOINT_FORMAT, FORMAT_VERSION, "a GRVQ tokenizer checkpoint", how_to_make)
    for name in ("model.safetensors", "normalization.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a whole GRVQ tokenizer checkpoint (no {name}): {how_to_make}")
    known = {f.name for f in dataclasses.fields(TokenizerConfig)}
    cfg = TokenizerConfig(**{k: v for k, v in config["tokenizer"].items() if k in known})
    cfg = dataclasses.replace(cfg, kind="grvq", checkpoint=str(path))
    if expect is not None:
        for field in LAYOUT_FIELDS:
            if getattr(expect, field) != getattr(cfg, field):
                raise ValueError(f"motion_tokenizer.{field}={getattr(expect, field)} but the checkpoint {path} was "
                                 f"trained with {getattr(cfg, field)}: set motion_tokenizer.{field}="
                                 f"{getattr(cfg, field)} or train a tokenizer for this recipe")
    stats = json.loads((path / "normalization.json").read_text())
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    model = MotionTokenizerModel(cfg, config["chunk_frames"], mean, std)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return GrvqMotionTokenizer(model, device)
