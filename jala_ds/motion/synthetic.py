"""Synthetic hand motion and pose-only MDS corpora: what tokenizer tests and benchmarks train and measure on.

Motion is smooth and low-dimensional like real manipulation: the wrist turns and drifts along a few slow
sinusoids, and the fingers curl together with a shared grasp signal plus small per-joint wobble, all as valid
rotations in the 99-dim frame layout (``jala_ds.motion.mano``).

    poses = synthetic_motion(90, np.random.default_rng(0))              # float32 [90, 99]
    write_pose_corpus("mds", lab=8, wild=4, frames=60, seed=0)          # <mds>/lab and <mds>/wild
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jala_ds.motion.mano import FINGER_JOINTS, axis_angle_to_matrix, join_frames

FPS = 30.0
GRASP_FLEXION = np.array([1.0, 1.2, 0.8] * 4 + [0.4, 0.6, 0.7])
"""Flexion (rad) of each finger joint in a full grasp: MCP, PIP, DIP of the four fingers, then the thumb's."""


def sinusoids(t: np.ndarray, rng: np.random.Generator, dims: int, amplitude: float) -> np.ndarray:
    """``[T, dims]``: per dim, a sum of two sinusoids with random frequencies (0.1-1 Hz) and phases."""
    freq = rng.uniform(0.1, 1.0, size=(2, dims))
    phase = rng.uniform(0, 2 * np.pi, size=(2, dims))
    return amplitude * np.sin(2 * np.pi * freq[:, None] * t[None, :, None] + phase[:, None]).sum(0) / 2


def synthetic_motion(frames: int, rng: np.random.Generator) -> np.ndarray:
    """One hand's MANO frames ``[frames, 99]`` (float32) of smooth synthetic manipulation."""
    t = np.arange(frames) / FPS
    wrist_axis_angle = rng.normal(0, 0.5, size=3) + sinusoids(t, rng, 3, 0.4)
    translation = rng.uniform(-0.3, 0.3, size=3) + sinusoids(t, rng, 3, 0.05)
    grasp = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 2 * np.pi))
    # Fingers flex about the joint's z axis (towards the palm), mostly together (real hands move in a few
    # synergies), with a small independent wobble per joint.
    flexion = grasp[:, None] * GRASP_FLEXION * rng.uniform(0.5, 1.2) + sinusoids(t, rng, FINGER_JOINTS, 0.03)
    wobble = sinusoids(t, rng, FINGER_JOINTS, 0.02)
    finger_axis_angle = np.stack([np.zeros_like(flexion), wobble, flexion], axis=-1)
    poses = join_frames(rotations(wrist_axis_angle), torch.from_numpy(translation).float(),
                        rotations(finger_axis_angle))
    return poses.numpy()


def rotations(axis_angle: np.ndarray) -> torch.Tensor:
    return axis_angle_to_matrix(torch.from_numpy(axis_angle).float())


def write_pose_corpus(out: str | Path, *, lab: int, wild: int, frames: int, seed: int, chunk_frames: int = 15,
                      size_limit: int = 1 << 20) -> Path:
    """A corpus in the converter's format (``jala_ds.data.schema``) with synthetic poses and no video: each
    chunk-boundary frame is listed in ``frame_index`` but stored as zero bytes.

    Lab clips have both hands; wild clips alternate one labelled right hand with video-only clips (no poses,
    ``labeled`` 0). Clip lengths vary from ``frames`` to twice that, so chunk counts and tails differ.
    """
    from streaming import MDSWriter

    from jala_ds.data.schema import MDS_COLUMNS, SHARD_HASHES, array_bytes

    out = Path(out)
    rng = np.random.default_rng(seed)
    for subset, count in (("lab", lab), ("wild", wild)):
        with MDSWriter(out=str(out / subset), columns=MDS_COLUMNS, hashes=SHARD_HASHES, size_limit=size_limit) as w:
            for i in range(count):
                length = int(rng.integers(frames, 2 * frames + 1))
                labeled = subset == "lab" or i % 2 == 0
                left = synthetic_motion(length, rng) if subset == "lab" else np.zeros((0, 99), np.float32)
                right = synthetic_motion(length, rng) if labeled else np.zeros((0, 99), np.float32)
                boundaries = np.minimum(np.arange(length // chunk_frames + 1) * chunk_frames, length - 1)
                w.write({"clip_id": f"{subset}_{i:05d}", "source": f"synthetic-{subset}", "subset": subset,
                         "task": "generation", "instruction": "move the hand", "fps": FPS,
                         "time_scale": 1.0 if subset == "lab" else 2.0, "frames": b"",
                         "frame_offsets": np.zeros(len(boundaries) + 1, np.int64),
                         "frame_index": boundaries.astype(np.int32),
                         "left": array_bytes(left, "<f4"), "right": array_bytes(right, "<f4"),
                         "labeled": int(labeled)})
    return out
