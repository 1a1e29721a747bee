"""The slowed timeline of a clip: its length, which source frame each slowed frame shows, interpolated poses.

In-the-wild hands move faster than lab hands, so the converter slows wild clips by ``data.wild_slowdown``
(the paper's factor): slowed frame ``j`` shows time ``j / scale`` of the original. Frames are picked
(nearest original frame); poses are interpolated linearly and each rot6d block is put back onto a valid
rotation, which for the small steps between neighbouring frames is close to spherical interpolation.
"""
from __future__ import annotations

import numpy as np

from jala_ds.data.rot6d import orthonormalize_poses


def slowed_length(frames: int, scale: float) -> int:
    """Frames of the slowed timeline: its last frame shows the original's last frame."""
    return int(np.floor((frames - 1) * scale + 1e-9)) + 1


def source_frames(slowed_indices: np.ndarray, scale: float, frames: int) -> np.ndarray:
    """The original frame shown at each slowed index (nearest neighbour in time)."""
    return np.minimum(np.floor(np.asarray(slowed_indices) / scale + 0.5).astype(np.int64), frames - 1)


def retime_poses(poses: np.ndarray, scale: float) -> np.ndarray:
    """``[T, 99]`` poses sampled on the slowed timeline."""
    if scale == 1.0:
        return poses.copy()
    length = slowed_length(len(poses), scale)
    position = np.arange(length) / scale
    low = np.minimum(np.floor(position).astype(np.int64), len(poses) - 1)
    high = np.minimum(low + 1, len(poses) - 1)
    weight = (position - low)[:, None]
    mixed = (1.0 - weight) * poses[low] + weight * poses[high]
    return orthonormalize_poses(mixed).astype(poses.dtype)


def chunk_boundaries(length: int, chunk_frames: int) -> np.ndarray:
    """Indices of the stored frames: 0, k, 2k, ... one per chunk boundary, the last clamped to the final frame.

    A clip of ``length`` frames holds ``length // chunk_frames`` chunks; chunk ``c`` spans poses
    ``[c k, (c + 1) k)`` and its boundary frames are stored frames ``c`` and ``c + 1``.
    """
    chunks = length // chunk_frames
    return np.minimum(np.arange(chunks + 1) * chunk_frames, length - 1).astype(np.int32)
