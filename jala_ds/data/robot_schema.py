"""What a robot MDS record holds (docs/architecture.md, "Robot data"): its columns, the dataset's side files, and the
reader that turns a record back into arrays.

One record per (episode, timestep t). Values are raw, un-normalised: ``norm_stats.json`` next to the shards holds the
statistics the loader and the policy apply. Like the pretraining shards, no column is pickled; fixed-dtype arrays
are raw little-endian ``bytes`` whose shapes come from ``robot_meta.json``.

    <out>/index.json, shard.*.mds      MDS dataset
    <out>/robot_meta.json              {state_dim, action_dim, action_horizon, cameras, fps, source}
    <out>/norm_stats.json              per-dimension statistics of every frame's state and action
    <out>/report.json                  what the conversion read, wrote and rejected
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

ROBOT_COLUMNS = {
    "episode_index": "int",
    "frame_index": "int",
    "instruction": "str",
    "cameras": "str",
    "images": "bytes",
    "image_offsets": "ndarray:int64",
    "state": "bytes",
    "actions": "bytes",
    "action_valid": "bytes",
}
"""``cameras``: JSON list of camera keys; ``images``: one JPEG per camera, concatenated, ``image_offsets`` the
``n_cam + 1`` byte offsets; ``state`` float32 ``[S]``; ``actions`` float32 ``[H, A]`` (actions t .. t+H-1, the last
one repeated past the episode's end); ``action_valid`` uint8 ``[H]`` (0 on those repeats)."""
ROBOT_META_FILE = "robot_meta.json"


@dataclass(frozen=True)
class RobotMeta:
    """The shape of a converted robot dataset (``robot_meta.json``)."""

    state_dim: int
    action_dim: int
    action_horizon: int
    cameras: list[str]
    """Camera keys in stored order (LeRobot feature names such as ``observation.images.image``)."""
    fps: float
    source: str
    """The LeRobot folder it was converted from."""

    def save(self, folder: str | Path) -> None:
        (Path(folder) / ROBOT_META_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> RobotMeta:
        path = Path(folder) / ROBOT_META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not a converted robot dataset; run "
                                    f"`jala data convert --format lerobot --src <lerobot folder> --out {folder}`")
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path} is unreadable ({err}): re-run `jala data convert --format lerobot`") from None

    def select_cameras(self, wanted: list[str] | None) -> list[int]:
        """Stored positions of the cameras ``wanted`` (all of them, in stored order, when None)."""
        if wanted is None:
            return list(range(len(self.cameras)))
        missing = [camera for camera in wanted if camera not in self.cameras]
        if missing:
            raise ValueError(f"robot.cameras asks for {', '.join(missing)}, which the dataset does not store: pick "
                             f"from {', '.join(self.cameras)} (or null for all)")
        return [self.cameras.index(camera) for camera in wanted]


@dataclass(frozen=True)
class RobotSample:
    """One observation (and, in training, the action chunk that follows it), un-normalised."""

    images: np.ndarray
    """uint8 ``[n_cam, h, w, 3]``, in the order of the dataset's (or the recipe's) cameras."""
    state: np.ndarray
    """float32 ``[S]`` proprioceptive state."""
    actions: np.ndarray | None
    """float32 ``[H, A]``: actions t .. t+H-1; None for a live observation."""
    action_valid: np.ndarray | None
    """bool ``[H]``: False where the episode had ended and the last action was repeated; None with ``actions``."""
    instruction: str
    sample_id: str = ""
    """``ep<episode>@<frame>`` for samples read from shards (exact-once checks); free-form otherwise."""


def float_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def robot_sample(record: Mapping, horizon: int | None = None) -> RobotSample:
    """The record's arrays; ``horizon`` (default: all stored) keeps the first actions of the chunk."""
    offsets = record["image_offsets"]
    data = record["images"]
    images = np.stack([decode_jpeg(torch.frombuffer(bytearray(data[offsets[i]:offsets[i + 1]]), dtype=torch.uint8),
                                   mode=ImageReadMode.RGB).permute(1, 2, 0).numpy() for i in range(len(offsets) - 1)])
    valid = np.frombuffer(record["action_valid"], dtype=np.uint8).astype(bool)
    actions = np.frombuffer(record["actions"], dtype="<f4").reshape(len(valid), -1).astype(np.float32)
    return RobotSample(images=images, state=np.frombuffer(record["state"], dtype="<f4").astype(np.float32),
                       actions=actions[:horizon], action_valid=valid[:horizon], instruction=record["instruction"],
                       sample_id=f"ep{record['episode_index']}@{record['frame_index']}")
