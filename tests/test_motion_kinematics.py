"""MANO frame helpers and forward kinematics: rot6d round trips, the template at rest, rigid wrist motion."""
import numpy as np
import pytest
import torch

from jala_ds.motion.kinematics import PARENTS, HandKinematics, forward_kinematics, template_rest_joints
from jala_ds.motion.mano import (
    IDENTITY_ROT6D,
    axis_angle_to_matrix,
    join_frames,
    matrix_to_rot6d,
    rot6d_to_matrix,
    split_frames,
)
from jala_ds.motion.synthetic import synthetic_motion


def random_rotations(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return axis_angle_to_matrix(torch.randn(n, 3, generator=gen, dtype=torch.float64) * 1.5)


def rest_frame(translation=(0.0, 0.0, 0.0)) -> torch.Tensor:
    return torch.tensor(IDENTITY_ROT6D + tuple(translation) + IDENTITY_ROT6D * 15, dtype=torch.float64)


def test_rot6d_round_trips_through_rotation_matrices():
    rot = random_rotations(64, 0)
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(rot)), rot)
    raw = torch.randn(64, 6, dtype=torch.float64)   # any non-degenerate 6 numbers map onto a rotation
    fixed = rot6d_to_matrix(raw)
    torch.testing.assert_close(fixed @ fixed.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3))
    torch.testing.assert_close(torch.linalg.det(fixed), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(fixed)), fixed)


def test_axis_angle_matches_a_quarter_turn_about_z():
    quarter = axis_angle_to_matrix(torch.tensor([0.0, 0.0, np.pi / 2], dtype=torch.float64))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(quarter, expected)


def test_frames_split_and_join_losslessly():
    poses = torch.from_numpy(synthetic_motion(20, np.random.default_rng(0))).double()
    torch.testing.assert_close(join_frames(*split_frames(poses)), poses)
    with pytest.raises(ValueError, match="99 values"):
        split_frames(poses[:, :98])


@pytest.mark.parametrize("hand", ["left", "right"])
def test_identity_pose_gives_the_template_shifted_by_the_translation(hand):
    rest = template_rest_joints(hand).double()
    joints = HandKinematics(hand)(rest_frame()[None].float()).double()
    torch.testing.assert_close(joints[0], rest, atol=1e-6, rtol=0)
    moved = forward_kinematics(rest_frame((0.1, -0.2, 0.3)), rest)
    torch.testing.assert_close(moved, rest + torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))


def test_template_is_a_hand_in_metres_and_the_left_mirrors_the_right():
    right, left = template_rest_joints("right"), template_rest_joints("left")
    bones = (right[1:] - right[list(PARENTS[1:])]).norm(dim=-1)
    assert right.shape == (21, 3) and torch.all(bones > 0.01) and torch.all(bones < 0.1)
    torch.testing.assert_close(left[:, :2], right[:, :2])
    torch.testing.assert_close(left[:, 2], -right[:, 2])


def test_rotating_the_wrist_rotates_every_joint_rigidly_about_the_wrist():
    poses = torch.from_numpy(synthetic_motion(8, np.random.default_rng(1))).double()
    rest = template_rest_joints("right").double()
    joints = forward_kinematics(poses, rest)
    turn = random_rotations(1, 2)[0]
    wrist, translation, fingers = split_frames(poses)
    turned = forward_kinematics(join_frames(turn @ wrist, translation, fingers), rest)
    torch.testing.assert_close(turned[:, 0], joints[:, 0])
    offsets = joints - joints[:, :1]
    torch.testing.assert_close(turned - turned[:, :1], offsets @ turn.T)


def test_bending_a_finger_moves_only_that_finger():
    poses = rest_frame()[None].clone()
    bent = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    poses[0, 9 + 6 * 3:9 + 6 * 4] = matrix_to_rot6d(bent)[0]     # finger joint 4: middle MCP
    rest = template_rest_joints("right").double()
    moved = (forward_kinematics(poses, rest)[0] - rest).norm(dim=-1) > 1e-9
    assert moved.nonzero().flatten().tolist() == [5, 6, 17]          # middle PIP, DIP and tip
