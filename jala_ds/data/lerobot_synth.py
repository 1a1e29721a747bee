"""A small synthetic robot dataset written in the LeRobot v2.1 on-disk layout: the input of
``jala data convert --format lerobot`` in the tests and the demo.

    jala data synth --format lerobot --out demo_out/lerobot --episodes 6 --cameras 2

The ``lerobot`` package is not used: its releases (0.4) write the newer v3.0 layout and pull in heavy dependencies
(datasets, wandb, an older PyAV). This writer follows the published v2.1 layout instead, the one LIBERO and
RoboCasa ports are distributed in:

    meta/info.json        codebase_version, robot_type, fps, chunks_size, data_path / video_path templates, features
    meta/episodes.jsonl   {"episode_index", "tasks": [...], "length"} per episode
    meta/tasks.jsonl      {"task_index", "task"} per task
    data/chunk-000/episode_000000.parquet        observation.state, action, timestamp, frame_index, episode_index,
                                                 index, task_index (+ camera columns stored as images)
    videos/chunk-000/<camera key>/episode_000000.mp4

The toy arm: an end effector (x, y, z, three rotation angles, a two-finger gripper: state 8) moves towards the object
its instruction names, closes the gripper on it and lifts it; actions are position and rotation deltas plus a
gripper command (7, LIBERO's convention). The cameras show the scene from above (``observation.images.image``) and
from the wrist (``observation.images.wrist_image``): coloured discs for the objects, a grey one for the gripper.
The same seed writes the same dataset.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from jala_ds.data.synth import write_mp4

CODEBASE_VERSION = "v2.1"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CAMERA_KEYS = ("observation.images.image", "observation.images.wrist_image")
STATE_DIM, ACTION_DIM = 8, 7
FPS = 10
OBJECTS = {"red cup": (220, 50, 50), "green block": (50, 190, 70), "blue bowl": (60, 80, 230)}
OBJECT_PLACES = {"red cup": (-0.5, 0.4), "green block": (0.0, -0.5), "blue bowl": (0.5, 0.3)}
"""Where each object stands on the table (x, y in [-1, 1]): the instruction decides where the arm goes."""


def synthesize_lerobot(out: str | Path, *, episodes: int, cameras: int = 2, seed: int = 0, frame_size: int = 64,
                       chunks_size: int = 1000, camera_storage: Literal["video", "image"] = "video") -> Path:
    """Write ``episodes`` episodes seen by ``cameras`` (1 or 2) cameras under ``out``; return ``out``.
    ``camera_storage="image"`` keeps the frames as PNG bytes inside the parquet files (as some ports do)."""
    if episodes < 1:
        raise ValueError(f"--episodes {episodes}: ask for at least one episode")
    if cameras not in (1, 2):
        raise ValueError(f"--cameras {cameras}: the toy arm has 1 or 2 cameras")
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f"--frame-size {frame_size}: use an even size of at least 16 pixels (the video codec needs it)")
    out = Path(out)
    if (out / "meta" / "info.json").exists():
        raise FileExistsError(f"{out} already holds a LeRobot dataset: choose another --out")
    rng = np.random.default_rng(seed)
    camera_keys = CAMERA_KEYS[:cameras]
    tasks = [f"pick up the {name}" for name in OBJECTS]
    episode_lines, index = [], 0
    for episode in range(episodes):
        task_index = int(rng.integers(len(tasks)))
        states, actions, views = rollout(rng, list(OBJECTS)[task_index], frame_size)
        length = len(states)
        chunk = episode // chunks_size
        columns = {
            "observation.state": pa.array(list(states), pa.list_(pa.float32(), STATE_DIM)),
            "action": pa.array(list(actions), pa.list_(pa.float32(), ACTION_DIM)),
            "timestamp": pa.array(np.arange(length, dtype=np.float32) / FPS),
            "frame_index": pa.array(np.arange(length, dtype=np.int64)),
            "episode_index": pa.array(np.full(length, episode, np.int64)),
            "index": pa.array(np.arange(index, index + length, dtype=np.int64)),
            "task_index": pa.array(np.full(length, task_index, np.int64)),
        }
        for c, key in enumerate(camera_keys):
            if camera_storage == "image":
                columns[key] = pa.array([{"bytes": png_bytes(frame), "path": None} for frame in views[c]])
            else:
                write_mp4(out / VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=episode),
                          views[c], FPS)
        path = out / DATA_PATH.format(episode_chunk=chunk, episode_index=episode)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        episode_lines.append({"episode_index": episode, "tasks": [tasks[task_index]], "length": length})
        index += length

    meta = out / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    write_jsonl(meta / "episodes.jsonl", episode_lines)
    write_jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": task} for i, task in enumerate(tasks)])
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": "toy_arm", "total_episodes": episodes,
        "total_frames": index, "total_tasks": len(tasks),
        "total_videos": episodes * cameras if camera_storage == "video" else 0,
        "total_chunks": (episodes - 1) // chunks_size + 1, "chunks_size": chunks_size, "fps": FPS,
        "splits": {"train": f"0:{episodes}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if camera_storage == "video" else None,
        "features": features(camera_keys, frame_size, camera_storage),
    }
    (meta / "info.json").write_text(json.dumps(info, indent=4) + "\n")
    return out


def features(camera_keys: tuple[str, ...], frame_size: int, storage: str) -> dict:
    """The ``features`` block of info.json, with LeRobot's dtype / shape / names per column."""
    cams = {key: {"dtype": storage, "shape": [frame_size, frame_size, 3], "names": ["height", "width", "channel"],
                  **({"info": {"video.fps": FPS, "video.height": frame_size, "video.width": frame_size,
                               "video.channels": 3, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                               "video.is_depth_map": False, "has_audio": False}} if storage == "video" else {})}
            for key in camera_keys}
    scalar = {"shape": [1], "names": None}
    return {
        **cams,
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM],
                              "names": ["x", "y", "z", "roll", "pitch", "yaw", "finger_left", "finger_right"]},
        "action": {"dtype": "float32", "shape": [ACTION_DIM],
                   "names": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]},
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
    }


def rollout(rng: np.random.Generator, target: str, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """States ``[T, 8]``, actions ``[T, 7]`` and each camera's frames ``[T, size, size, 3]`` of one episode:
    reach the target, close the gripper, lift."""
    length = int(rng.integers(18, 36))
    position = np.array([*rng.uniform(-0.3, 0.3, 2), 0.6])
    rotation = rng.uniform(-0.2, 0.2, 3)
    goal = np.array([*OBJECT_PLACES[target], 0.1]) + np.array([*rng.normal(0, 0.05, 2), 0.0])
    fingers, states, actions = 0.04, [], []
    for t in range(length):
        phase = t / length
        aim = goal if phase < 0.6 else goal + np.array([0.0, 0.0, 0.5])
        delta = np.clip(0.25 * (aim - position), -0.1, 0.1) + rng.normal(0, 0.005, 3)
        turn = -0.2 * rotation + rng.normal(0, 0.01, 3)
        grip = 1.0 if phase >= 0.5 else -1.0  # LIBERO: -1 opens, +1 closes
        states.append(np.concatenate([position, rotation, [fingers, -fingers]]))
        actions.append(np.concatenate([delta, turn, [grip]]))
        position, rotation = position + delta, rotation + turn
        fingers = float(np.clip(fingers - 0.01 * grip, 0.0, 0.04))
    states_arr, actions_arr = np.asarray(states, np.float32), np.asarray(actions, np.float32)
    return states_arr, actions_arr, [render(states_arr, size, view, rng) for view in ("top", "wrist")]


def render(states: np.ndarray, size: int, view: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[T, size, size, 3]``: the table from above, or centred on the gripper (the wrist camera)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    table = np.asarray(rng.integers(120, 200, 3), np.float32)
    video = np.empty((len(states), size, size, 3), np.uint8)
    for t, state in enumerate(states):
        centre = np.zeros(2) if view == "top" else state[:2]
        zoom = 1.0 if view == "top" else 2.0
        frame = np.broadcast_to(table, (size, size, 3)).copy()

        def disc(xy: np.ndarray, radius: float, colour: tuple[int, int, int]) -> None:
            u, v = (size / 2) * (1 + zoom * (xy - centre) / 1.2)
            frame[(xx - u) ** 2 + (yy - v) ** 2 <= (radius * zoom) ** 2] = colour

        for name, place in OBJECT_PLACES.items():
            disc(np.asarray(place), size / 12, OBJECTS[name])
        grey = int(90 + 100 * state[6] / 0.04)  # open gripper lighter
        disc(state[:2], size / 16 * (1.5 - state[2] / 2), (grey, grey, grey))
        video[t] = frame
    return video


def png_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
