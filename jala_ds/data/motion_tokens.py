"""The motion-tokenizer contract, a deterministic binning stand-in, and the factory that picks one.

A motion tokenizer turns one hand's MANO poses, cut into 15-frame chunks, into discrete codes and back:

    tok = build_motion_tokenizer(cfg.motion_tokenizer)
    codes = tok.encode(poses)        # float32 [chunks * 15, 99] -> int32 [chunks, tokens_per_chunk]
    poses_hat = tok.decode(codes)    # int32 [chunks, tokens_per_chunk] -> float32 [chunks * 15, 99]

Each chunk's codes are the wrist part's ``tokens_per_part`` codes (pose dims 0:9), then the finger part's
(dims 9:99), every code in ``[0, vocab_per_part)``; ``jala_ds.vocab.MotionVocab`` maps them to token ids.
The learned GRVQ tokenizer (``jala_ds.motion.tokenizer``) and :class:`BinningTokenizer` both satisfy it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from jala_ds.data.schema import POSE_DIMS
from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.mano import PART_SLICES

CHUNK_FRAMES = 15
"""Frames per motion chunk that every tokenizer is built for (padded to 16 inside the tokenizer)."""


def code_array(codes: np.ndarray, tokens_per_chunk: int) -> np.ndarray:
    """``codes`` as a ``[chunks, tokens_per_chunk]`` array of integers, or one error naming what is wrong.

    Codes are indices: a float array (a model's expected codes, say) would be truncated towards zero, 12.9
    decoding as 12, so anything but an integer dtype is refused rather than read.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != tokens_per_chunk:
        raise ValueError(f"codes must be [chunks, {tokens_per_chunk}], got shape {codes.shape}")
    if codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}: pass the codes encode() returned "
                         f"(int32), or round and cast them with .astype(np.int32) first")
    return codes


@runtime_checkable
class MotionTokenizer(Protocol):
    """What the sequence builder, ``jala data tokenize`` and evaluation need from a motion tokenizer."""

    chunk_frames: int
    tokens_per_chunk: int
    vocab_per_part: int

    def encode(self, poses: np.ndarray) -> np.ndarray:
        """float32 ``[chunks * chunk_frames, 99]`` -> int32 ``[chunks, tokens_per_chunk]``, wrist part first."""
        ...

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int32 ``[chunks, tokens_per_chunk]`` -> float32 ``[chunks * chunk_frames, 99]``."""
        ...


class BinningTokenizer:
    """STAND-IN for the learned GRVQ tokenizer: needs no training, keeps the GRVQ token layout.

    Per part, the 15-frame chunk (padded to 16 by repeating its last frame) is averaged over
    ``steps`` equal time steps, and the part's dims are split into ``groups`` contiguous feature groups,
    each reduced to its mean: one scalar per (step, group). That scalar, clipped to [-1, 1] (rot6d lies
    there; wrist translations beyond 1 m clip), is quantized uniformly to ``codes_per_stage ** stages``
    levels written as ``stages`` base-``codes_per_stage`` digits, coarse first. Stage ``r``'s digit ``d``
    becomes code ``r * codes_per_stage + d``, so codes fill ``[0, vocab_per_part)`` the way GRVQ's
    stage-offset codes do. Token order within a part: step, then group, then stage.

    ``decode`` returns each group's quantized mean on every dim of the group and every frame of the step:
    a coarse, piecewise-constant reconstruction, enough for pipelines and tests, not for evaluation.
    """

    chunk_frames = CHUNK_FRAMES

    def __init__(self, cfg: TokenizerConfig) -> None:
        self.steps, self.groups, self.stages = cfg.steps, cfg.groups, cfg.stages
        self.codes_per_stage = cfg.codes_per_stage
        self.tokens_per_part = cfg.tokens_per_part
        self.tokens_per_chunk = cfg.tokens_per_chunk
        self.vocab_per_part = cfg.vocab_per_part
        self.frames_per_step = (CHUNK_FRAMES + 1) // self.steps
        # Feature groups are fixed slices of each part's dims (np.array_split keeps them contiguous).
        self.group_dims = [np.array_split(np.arange(part.stop - part.start), self.groups) for part in PART_SLICES.values()]
        if any(len(dims) == 0 for part in self.group_dims for dims in part):
            raise ValueError(f"motion_tokenizer.groups={self.groups} exceeds the 9 wrist dims: use at most 9 groups")

    def encode(self, poses: np.ndarray) -> np.ndarray:
        chunks = self._check_poses(poses)
        x = poses.reshape(chunks, CHUNK_FRAMES, POSE_DIMS).astype(np.float64)
        x = np.concatenate([x, x[:, -1:]], axis=1)  # 15 -> 16 frames, as GRVQ pads
        steps = x.reshape(chunks, self.steps, self.frames_per_step, POSE_DIMS).mean(axis=2)
        parts = [self._encode_part(steps[..., part], dims) for part, dims in zip(PART_SLICES.values(), self.group_dims)]
        return np.concatenate(parts, axis=1).astype(np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = code_array(codes, self.tokens_per_chunk)
        if codes.min(initial=0) < 0 or codes.max(initial=0) >= self.vocab_per_part:
            raise ValueError(f"codes must lie in [0, {self.vocab_per_part}) (they are per-part codes, not token ids)")
        chunks = codes.shape[0]
        steps = np.zeros((chunks, self.steps, POSE_DIMS))
        for p, (part, dims) in enumerate(zip(PART_SLICES.values(), self.group_dims)):
            part_codes = codes[:, p * self.tokens_per_part:(p + 1) * self.tokens_per_part]
            values = self._dequantize(part_codes.reshape(chunks, self.steps, self.groups, self.stages))
            for g, group in enumerate(dims):
                steps[:, :, part.start + group] = values[:, :, g, None]
        frames = np.repeat(steps, self.frames_per_step, axis=1)[:, :CHUNK_FRAMES]
        return frames.reshape(chunks * CHUNK_FRAMES, POSE_DIMS).astype(np.float32)

    def _check_poses(self, poses: np.ndarray) -> int:
        if poses.ndim != 2 or poses.shape[1] != POSE_DIMS or poses.shape[0] % CHUNK_FRAMES:
            raise ValueError(f"poses must be [chunks * {CHUNK_FRAMES}, {POSE_DIMS}], got shape {poses.shape}")
        return poses.shape[0] // CHUNK_FRAMES

    def _encode_part(self, steps: np.ndarray, dims: list[np.ndarray]) -> np.ndarray:
        """``[chunks, steps, part dims]`` -> ``[chunks, tokens_per_part]`` stage-offset codes."""
        means = np.stack([steps[..., group].mean(axis=-1) for group in dims], axis=-1)
        level = (np.clip(means, -1.0, 1.0) + 1.0) / 2.0  # in [0, 1]
        digits = np.empty(means.shape + (self.stages,), np.int64)
        for stage in range(self.stages):
            level = level * self.codes_per_stage
            digit = np.minimum(np.floor(level), self.codes_per_stage - 1)
            digits[..., stage] = digit
            level = level - digit
        codes = digits + np.arange(self.stages) * self.codes_per_stage
        return codes.reshape(means.shape[0], self.tokens_per_part)

    def _dequantize(self, codes: np.ndarray) -> np.ndarray:
        """``[..., stages]`` stage-offset codes -> the centre of the quantization cell, in [-1, 1]."""
        digits = codes - np.arange(self.stages) * self.codes_per_stage
        if digits.min(initial=0) < 0 or digits.max(initial=0) >= self.codes_per_stage:
            raise ValueError("a code does not belong to its stage's range: codes are not from this tokenizer")
        scales = float(self.codes_per_stage) ** -np.arange(1, self.stages + 1)
        level = (digits * scales).sum(axis=-1) + 0.5 * scales[-1]
        return level * 2.0 - 1.0


def build_motion_tokenizer(cfg: TokenizerConfig) -> MotionTokenizer:
    """The tokenizer a recipe names: the binning stand-in, or the GRVQ checkpoint at ``cfg.checkpoint``."""
    if cfg.kind == "binning":
        return BinningTokenizer(cfg)
    # Imported here: the GRVQ model pulls in torch modules that the binning path never needs.
    from jala_ds.motion.tokenizer import load_grvq_tokenizer

    return load_grvq_tokenizer(cfg.checkpoint, expect=cfg)
