"""The 6D rotation representation of the pose arrays (numpy): from matrices, and back onto valid rotations.

Convention (as pytorch3d's ``matrix_to_rotation_6d``): the 6 numbers are the first two rows of the 3x3
rotation matrix, row 0 then row 1. A pose frame is wrist rot6d (0:6), wrist translation (6:9), then
15 finger joints x rot6d (9:99).
"""
from __future__ import annotations

import numpy as np

ROT6D_SLICES = [slice(0, 6)] + [slice(9 + 6 * j, 15 + 6 * j) for j in range(15)]
"""Where the 16 rot6d blocks (wrist, then 15 finger joints) sit in a 99-dim pose frame."""


def matrix_to_rot6d(matrix: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` rotation matrices -> ``[..., 6]``."""
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)


def orthonormalize_rot6d(rot6d: np.ndarray) -> np.ndarray:
    """Project ``[..., 6]`` (e.g. an interpolation of two rotations) back onto valid rotations (Gram-Schmidt)."""
    a, b = rot6d[..., :3], rot6d[..., 3:]
    a = a / np.linalg.norm(a, axis=-1, keepdims=True).clip(1e-8)
    b = b - (a * b).sum(axis=-1, keepdims=True) * a
    b = b / np.linalg.norm(b, axis=-1, keepdims=True).clip(1e-8)
    return np.concatenate([a, b], axis=-1)


def orthonormalize_poses(poses: np.ndarray) -> np.ndarray:
    """Every rot6d block of ``[T, 99]`` poses made a valid rotation; translations untouched."""
    out = poses.copy()
    for block in ROT6D_SLICES:
        out[:, block] = orthonormalize_rot6d(poses[:, block])
    return out


def rotation_xyz(angles: np.ndarray) -> np.ndarray:
    """``[..., 3]`` angles (rad) about x, then y, then z (R = Rz Ry Rx) -> ``[..., 3, 3]``."""
    cx, cy, cz = np.cos(angles[..., 0]), np.cos(angles[..., 1]), np.cos(angles[..., 2])
    sx, sy, sz = np.sin(angles[..., 0]), np.sin(angles[..., 1]), np.sin(angles[..., 2])
    rows = [
        [cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
        [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
        [-sy, cy * sx, cy * cx],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)
