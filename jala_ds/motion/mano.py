"""The 99-dim MANO frame of one hand, and the rotation conversions it needs.

Frame layout (docs/architecture.md): ``[0:6]`` wrist (global) rotation as rot6d, ``[6:9]`` wrist translation in
metres, ``[9:99]`` the 15 finger joints' rotations relative to their parents, rot6d each, in MANO's kinematic
order (index 1-3, middle 1-3, pinky 1-3, ring 1-3, thumb 1-3). Hand shape is not part of the frame. The two
tokenizer parts are the wrist (``[0:9]``) and the fingers (``[9:99]``).

rot6d is the first two rows of the rotation matrix, ``(R[0, :], R[1, :])``, the convention of PyTorch3D's
``matrix_to_rotation_6d`` that MANO pipelines (HaWoR, Being-H0) use; the identity is ``(1, 0, 0, 0, 1, 0)``.
"""
from __future__ import annotations

import torch

FRAME_DIM = 99
FINGER_JOINTS = 15
WRIST_ROT6D = slice(0, 6)
WRIST_TRANSLATION = slice(6, 9)
FINGERS = slice(9, FRAME_DIM)
PART_SLICES = {"wrist": slice(0, 9), "finger": FINGERS}
"""Dimensions of each tokenizer part, in token order: the wrist part's tokens come first."""
IDENTITY_ROT6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def rot6d_to_matrix(rot6d: torch.Tensor) -> torch.Tensor:
    """``[..., 6]`` -> rotation matrices ``[..., 3, 3]`` by Gram-Schmidt on the two rows (any 6 numbers whose
    halves are not parallel give a rotation, which is why networks may output rot6d freely)."""
    first = torch.nn.functional.normalize(rot6d[..., 0:3], dim=-1)
    second = rot6d[..., 3:6] - (first * rot6d[..., 3:6]).sum(-1, keepdim=True) * first
    second = torch.nn.functional.normalize(second, dim=-1)
    third = torch.linalg.cross(first, second, dim=-1)
    return torch.stack([first, second, third], dim=-2)


def matrix_to_rot6d(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> ``[..., 6]`` (the first two rows)."""
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: ``[..., 3]`` rotation vectors (axis times angle in radians) -> ``[..., 3, 3]``."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    axis = axis_angle / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(*axis.shape[:-1], 3, 3)
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin * cross + (1 - cos) * cross @ cross


def split_frames(poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[..., 99]`` -> (wrist rotation ``[..., 3, 3]``, translation ``[..., 3]``, finger rotations
    ``[..., 15, 3, 3]``)."""
    if poses.shape[-1] != FRAME_DIM:
        raise ValueError(f"MANO frames must have {FRAME_DIM} values (wrist rot6d 6 + translation 3 + 15 joints x "
                         f"rot6d), got {poses.shape[-1]}: check the pose array's last dimension")
    fingers = poses[..., FINGERS].reshape(*poses.shape[:-1], FINGER_JOINTS, 6)
    return rot6d_to_matrix(poses[..., WRIST_ROT6D]), poses[..., WRIST_TRANSLATION], rot6d_to_matrix(fingers)


def join_frames(wrist: torch.Tensor, translation: torch.Tensor, fingers: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_frames`: rotation matrices and translation -> ``[..., 99]`` frames."""
    finger_6d = matrix_to_rot6d(fingers).reshape(*fingers.shape[:-3], FINGER_JOINTS * 6)
    return torch.cat([matrix_to_rot6d(wrist), translation, finger_6d], dim=-1)
