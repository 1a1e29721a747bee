"""The binning stand-in against an independent reference of what it quantizes, and the tokenizer contract."""
import numpy as np
import pytest

from jala_ds.config import load_config
from jala_ds.data.motion_tokens import (
    BinningTokenizer,
    MotionTokenizer,
    build_motion_tokenizer,
)
from jala_ds.motion.config import TokenizerConfig


def smooth_poses(chunks, seed=0):
    t = np.arange(chunks * 15)[:, None] / 30.0
    phase = np.random.default_rng(seed).uniform(0, 6, 99)
    return (0.8 * np.sin(2 * t + phase)).astype(np.float32)


def step_group_means(poses, cfg):
    """Reference: per chunk, step and feature group, the mean the tokenizer quantizes (padding by repetition)."""
    chunks = len(poses) // 15
    x = poses.reshape(chunks, 15, 99)
    x = np.concatenate([x, x[:, -1:]], axis=1).reshape(chunks, cfg.steps, 16 // cfg.steps, 99).mean(axis=2)
    parts = []
    for dims in (range(9), range(9, 99)):
        groups = np.array_split(np.array(dims), cfg.groups)
        parts.append(np.stack([x[..., g].mean(-1) for g in groups], axis=-1))
    return parts


@pytest.mark.parametrize("cfg", [load_config("tiny_cpu").motion_tokenizer,
                                 TokenizerConfig(groups=2, stages=2, codes_per_stage=16, downsample=4)])
def test_codes_follow_the_grvq_layout_and_decode_to_the_quantized_means(cfg):
    tok = BinningTokenizer(cfg)
    assert isinstance(tok, MotionTokenizer)
    poses = smooth_poses(3)
    codes = tok.encode(poses)
    assert codes.shape == (3, cfg.tokens_per_chunk) and codes.dtype == np.int32
    stage = np.tile(np.arange(cfg.stages), codes.shape[1] // cfg.stages)
    assert ((codes >= stage * cfg.codes_per_stage) & (codes < (stage + 1) * cfg.codes_per_stage)).all()

    decoded = tok.decode(codes)
    assert decoded.shape == poses.shape and decoded.dtype == np.float32
    cell = 2.0 / cfg.codes_per_stage ** cfg.stages
    wrist, finger = step_group_means(poses, cfg)
    frame_of_step = np.arange(15) // (16 // cfg.steps)
    for part, dims in ((wrist, range(9)), (finger, range(9, 99))):
        for g, group in enumerate(np.array_split(np.array(dims), cfg.groups)):
            expected = part[:, frame_of_step, g].reshape(-1)
            for dim in group:
                np.testing.assert_allclose(decoded[:, dim], expected, atol=cell / 2 + 1e-6)
    np.testing.assert_array_equal(tok.encode(decoded), codes)


def test_wrist_codes_come_first_and_depend_only_on_the_wrist():
    cfg = load_config("tiny_cpu").motion_tokenizer
    tok = BinningTokenizer(cfg)
    poses = smooth_poses(2)
    moved_fingers, moved_wrist = poses.copy(), poses.copy()
    moved_fingers[:, 9:] *= -0.5
    moved_wrist[:, :9] *= -0.5
    base, half = tok.encode(poses), cfg.tokens_per_part
    np.testing.assert_array_equal(tok.encode(moved_fingers)[:, :half], base[:, :half])
    np.testing.assert_array_equal(tok.encode(moved_wrist)[:, half:], base[:, half:])
    assert (tok.encode(moved_fingers)[:, half:] != base[:, half:]).any()


def test_bad_inputs_name_the_expected_shape():
    tok = BinningTokenizer(load_config("tiny_cpu").motion_tokenizer)
    with pytest.raises(ValueError, match=r"\[chunks \* 15, 99\]"):
        tok.encode(np.zeros((20, 99), np.float32))
    with pytest.raises(ValueError, match="per-part codes"):
        tok.decode(np.full((1, tok.tokens_per_chunk), tok.vocab_per_part))
    codes = tok.encode(smooth_poses(1))
    with pytest.raises(ValueError, match="codes must be integers, got dtype float64"):
        tok.decode(codes + 0.9)  # read as codes, 0.9 would have been dropped


def test_factory_returns_the_stand_in_for_binning():
    cfg = load_config("tiny_cpu").motion_tokenizer
    tok = build_motion_tokenizer(cfg)
    assert isinstance(tok, BinningTokenizer)
    assert (tok.chunk_frames, tok.tokens_per_chunk, tok.vocab_per_part) == (15, cfg.tokens_per_chunk, cfg.vocab_per_part)
