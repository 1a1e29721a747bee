"""Forward kinematics of one hand: 99-dim MANO frames -> 21 joint positions in metres.

Joints, in order: the wrist (0), MANO's 15 finger joints in kinematic order (index 1-3, middle 1-3, pinky 1-3,
ring 1-3, thumb 1-3), then the five fingertips in the same finger order (index, middle, pinky, ring, thumb), each
a leaf under its finger's last joint. The wrist rotates about its own rest position; the translation then moves
the whole hand, as in MANO.

Two skeletons:
- the built-in template (our own rest pose of an adult right hand, in metres; the left hand is its mirror image
  across the palm's midplane), enough for reconstruction metrics with no licensed files;
- the real MANO model when ``mano_model_dir`` points at a folder with ``MANO_RIGHT.pkl``/``MANO_LEFT.pkl``,
  through the optional ``smplx`` package: its mean shape, linear blend skinning, fingertips taken from mesh
  vertices. Finger rotations are absolute (the ``flat_hand_mean`` convention).
"""
from __future__ import annotations

from typing import Literal

import torch

from jala_ds.motion.mano import split_frames

Hand = Literal["left", "right"]
JOINT_COUNT = 21
MANO_JOINTS = 16
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14, 3, 6, 9, 12, 15)
"""Parent of each of the 21 joints; the tips (16-20) hang under the last joint of each finger."""

# Rest pose of a right hand, metres: x from the wrist towards the fingers, y out of the back of the hand,
# z towards the thumb. Bone lengths follow adult hand anthropometry (metacarpals 7-9 cm, phalanges 2-4.5 cm).
TEMPLATE_RIGHT = (
    (0.000, 0.000, 0.000),                                              # wrist
    (0.088, 0.004, 0.024), (0.124, 0.002, 0.027), (0.147, 0.000, 0.028),     # index MCP, PIP, DIP
    (0.092, 0.005, 0.003), (0.133, 0.003, 0.003), (0.160, 0.001, 0.003),     # middle
    (0.076, 0.001, -0.038), (0.104, 0.000, -0.041), (0.122, -0.001, -0.043),  # pinky
    (0.086, 0.003, -0.018), (0.124, 0.001, -0.020), (0.149, -0.001, -0.021),  # ring
    (0.022, -0.012, 0.028), (0.047, -0.017, 0.050), (0.070, -0.020, 0.064),  # thumb CMC, MCP, IP
    (0.169, -0.002, 0.029), (0.184, -0.001, 0.003), (0.140, -0.002, -0.044),  # tips: index, middle, pinky
    (0.171, -0.002, -0.022), (0.093, -0.022, 0.076),                         # tips: ring, thumb
)

# Fingertip vertices of the MANO mesh (index, middle, pinky, ring, thumb); the left mesh's middle tip is 445.
MANO_TIP_VERTICES = {"right": (317, 444, 673, 556, 745), "left": (317, 445, 673, 556, 745)}


def template_rest_joints(hand: Hand) -> torch.Tensor:
    """The built-in rest skeleton ``[21, 3]`` of ``hand`` in metres."""
    joints = torch.tensor(TEMPLATE_RIGHT, dtype=torch.float32)
    if hand == "left":
        joints[:, 2] = -joints[:, 2]
    return joints


def forward_kinematics(poses: torch.Tensor, rest_joints: torch.Tensor) -> torch.Tensor:
    """Pose a rest skeleton: frames ``[..., 99]`` and rest joints ``[21, 3]`` -> joints ``[..., 21, 3]``."""
    wrist, translation, fingers = split_frames(poses)
    rest = rest_joints.to(poses)
    rotations = [wrist]
    positions = [rest[0] + translation]
    for joint in range(1, JOINT_COUNT):
        parent = PARENTS[joint]
        bone = rest[joint] - rest[parent]
        positions.append(positions[parent] + (rotations[parent] @ bone[:, None])[..., 0])
        if joint < MANO_JOINTS:
            rotations.append(rotations[parent] @ fingers[..., joint - 1, :, :])
    return torch.stack(positions, dim=-2)


class HandKinematics:
    """Joints of one hand from its MANO frames: ``HandKinematics("left")(poses [..., 99]) -> [..., 21, 3]``."""

    def __init__(self, hand: Hand, mano_model_dir: str | None = None):
        if hand not in ("left", "right"):
            raise ValueError(f"hand must be 'left' or 'right', got {hand!r}")
        self.hand = hand
        self.rest_joints = template_rest_joints(hand)
        self.mano = load_mano_layer(mano_model_dir, hand) if mano_model_dir else None

    def __call__(self, poses: torch.Tensor) -> torch.Tensor:
        if self.mano is None:
            return forward_kinematics(poses, self.rest_joints)
        return self.mano_joints(poses)

    def mano_joints(self, poses: torch.Tensor) -> torch.Tensor:
        from smplx.lbs import lbs

        wrist, translation, fingers = split_frames(poses.reshape(-1, poses.shape[-1]).float())
        rotations = torch.cat([wrist[:, None], fingers], dim=1)
        model = self.mano
        betas = torch.zeros(rotations.shape[0], model.num_betas, dtype=rotations.dtype)
        vertices, joints = lbs(betas, rotations, model.v_template, model.shapedirs, model.posedirs,
                               model.J_regressor, model.parents, model.lbs_weights, pose2rot=False)
        tips = vertices[:, list(MANO_TIP_VERTICES[self.hand])]
        posed = torch.cat([joints, tips], dim=1) + translation[:, None, :]
        return posed.reshape(*poses.shape[:-1], JOINT_COUNT, 3).to(poses.dtype)


def load_mano_layer(mano_model_dir: str, hand: Hand):
    """smplx's MANO layer for ``hand`` from ``mano_model_dir`` (MANO_RIGHT.pkl / MANO_LEFT.pkl)."""
    try:
        import smplx
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"motion_tokenizer.mano_model_dir={mano_model_dir} needs the smplx package: "
                                  "pip install smplx, or set mano_model_dir to null for the template skeleton")
    return smplx.MANO(mano_model_dir, is_rhand=hand == "right", use_pca=False, flat_hand_mean=True)
