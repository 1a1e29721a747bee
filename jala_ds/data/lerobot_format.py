"""Reader of the LeRobot v2.x on-disk layout (v2.0 and v2.1: LIBERO, RoboCasa and many real-robot datasets).

    meta/info.json       codebase_version, fps, chunks_size, data_path / video_path templates, features
                         {key: {dtype, shape, names}}
    meta/episodes.jsonl  {"episode_index", "tasks": [...], "length"} per episode
    meta/tasks.jsonl     {"task_index", "task"} per task
    meta/stats.json      optional (v2.0) dataset statistics; not read: the converter computes its own
    data/chunk-XXX/episode_XXXXXX.parquet        observation.state, action, timestamp, frame_index, episode_index,
                                                 index, task_index, and cameras of dtype ``image``
    videos/chunk-XXX/<camera key>/episode_XXXXXX.mp4   cameras of dtype ``video``

Episode ``e`` lives in chunk ``e // chunks_size``. A camera is a feature of dtype ``video`` (one mp4 per episode,
one video frame per table row) or ``image`` (encoded image bytes in the parquet column). Nothing here checks
values: the converter rejects bad episodes with their reasons.

    dataset = LeRobotDataset(src)
    for episode in dataset.episodes:
        table = dataset.episode_table(episode["episode_index"])      # {"observation.state": [T, S], ...}
        frames = dataset.camera_frames(episode["episode_index"], camera, table, size=224)   # uint8 [T, 224, 224, 3]
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from jala_ds.data.video_frames import read_frames

STATE_KEY = "observation.state"
ACTION_KEY = "action"
CAMERA_DTYPES = ("video", "image")
SUPPORTED_VERSIONS = ("v2.0", "v2.1")


class LeRobotFormatError(ValueError):
    """The folder is not a LeRobot v2.x dataset, or its metadata is incomplete."""


class LeRobotDataset:
    """The metadata of a LeRobot v2.x dataset folder, and readers for one episode's table and frames."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info = read_json(self.root / "meta" / "info.json")
        if not isinstance(self.info, dict) or not isinstance(self.info.get("features"), dict):
            raise LeRobotFormatError(f"{self.root}/meta/info.json is not an object with a 'features' object: not a "
                                     "LeRobot v2.x info.json")
        version = self.info.get("codebase_version")
        if version not in SUPPORTED_VERSIONS:
            raise LeRobotFormatError(f"{self.root}/meta/info.json has codebase_version {version!r}; this reader takes "
                                     f"{' and '.join(SUPPORTED_VERSIONS)} (for v3.0, convert back with LeRobot's tools "
                                     "or use a v2.1 release of the dataset)")
        missing = [key for key in ("fps", "chunks_size", "data_path", "features") if key not in self.info]
        if missing:
            raise LeRobotFormatError(f"{self.root}/meta/info.json lacks {', '.join(missing)}: not a LeRobot v2.x "
                                     "info.json")
        self.features: dict[str, dict] = self.info["features"]
        for key in (STATE_KEY, ACTION_KEY):
            if key not in self.features:
                raise LeRobotFormatError(f"{self.root}/meta/info.json declares no {key!r} feature: the converter needs "
                                         f"{STATE_KEY!r} and {ACTION_KEY!r}")
            shape = self.features[key].get("shape")
            if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
                raise LeRobotFormatError(f"{self.root}/meta/info.json: feature {key!r} has shape {shape!r}; it needs a "
                                         "list of positive sizes, e.g. [7]")
        try:
            self.fps = float(self.info["fps"])
            self.chunks_size = int(self.info["chunks_size"])
        except (TypeError, ValueError):
            raise LeRobotFormatError(f"{self.root}/meta/info.json: fps {self.info['fps']!r} and chunks_size "
                                     f"{self.info['chunks_size']!r} must be numbers") from None
        episodes = read_jsonl(self.root / "meta" / "episodes.jsonl")
        if not all(isinstance(e, dict) and isinstance(e.get("episode_index"), int) for e in episodes):
            raise LeRobotFormatError(f"{self.root}/meta/episodes.jsonl has a line without an integer episode_index: "
                                     "fix or re-download it")
        self.episodes = sorted(episodes, key=lambda e: e["episode_index"])
        self.tasks = {int(t["task_index"]): str(t["task"]) for t in read_jsonl(self.root / "meta" / "tasks.jsonl")}

    @property
    def cameras(self) -> list[str]:
        """Camera keys in info.json order."""
        return [key for key, feature in self.features.items() if feature.get("dtype") in CAMERA_DTYPES]

    def dim(self, key: str) -> int:
        """Declared width of a vector feature (``observation.state`` or ``action``)."""
        return int(np.prod(self.features[key]["shape"]))

    def episode_path(self, episode_index: int) -> Path:
        return self.root / self.info["data_path"].format(episode_chunk=episode_index // self.chunks_size,
                                                         episode_index=episode_index)

    def video_path(self, episode_index: int, camera: str) -> Path:
        if not self.info.get("video_path"):
            raise LeRobotFormatError(f"{self.root}/meta/info.json has no video_path template but {camera!r} is a "
                                     "video feature")
        return self.root / self.info["video_path"].format(episode_chunk=episode_index // self.chunks_size,
                                                          video_key=camera, episode_index=episode_index)

    def episode_table(self, episode_index: int) -> dict[str, Any]:
        """The episode's columns: vector features as float32 ``[T, D]`` (NaN kept: the caller checks), integer
        columns as int64 ``[T]``, image columns as lists of encoded bytes. Raises OSError if unreadable."""
        table = pq.read_table(self.episode_path(episode_index))
        columns: dict[str, Any] = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if self.features.get(name, {}).get("dtype") == "image":
                columns[name] = [cell["bytes"] for cell in column.to_pylist()]
            elif name in (STATE_KEY, ACTION_KEY):
                columns[name] = vector_column(column, len(table))
            else:
                columns[name] = column.to_numpy(zero_copy_only=False)
        return columns

    def camera_frames(self, episode_index: int, camera: str, table: dict[str, Any], size: int) -> np.ndarray:
        """uint8 ``[T, size, size, 3]``: the camera's frames for the table's rows (``frame_index`` order).
        Raises :class:`~jala_ds.data.video_frames.VideoError` or OSError when they cannot be read."""
        frame_index = np.asarray(table["frame_index"], np.int64)
        if self.features[camera]["dtype"] == "image":
            return np.stack([decode_image(data, size) for data in table[camera]])
        count, frames = read_frames(self.video_path(episode_index, camera), lambda n: np.arange(n), size)
        if count <= frame_index.max():
            raise OSError(f"{self.video_path(episode_index, camera)} holds {count} frames, the episode "
                          f"{int(frame_index.max()) + 1}")
        return np.stack([frames[int(i)] for i in frame_index])

    def instruction(self, episode: dict, table: dict[str, Any], row: int) -> str:
        """The row's task text (``task_index`` through tasks.jsonl), else the episode's first task."""
        if "task_index" in table and int(table["task_index"][row]) in self.tasks:
            return self.tasks[int(table["task_index"][row])]
        return str(episode["tasks"][0]) if episode.get("tasks") else ""


def vector_column(column: Any, rows: int) -> np.ndarray:
    """float32 ``[rows, D]`` from a list / fixed-size-list column; a ragged or null column raises ValueError."""
    if column.null_count:
        raise ValueError(f"{column.null_count} rows are null")
    values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32)
    if rows == 0 or len(values) % rows:
        raise ValueError(f"{len(values)} values do not split into {rows} equal rows")
    return values.reshape(rows, -1)


def decode_image(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise LeRobotFormatError(f"{path} not found: --src must be a LeRobot v2.x dataset folder (meta/info.json, "
                                 "meta/episodes.jsonl, meta/tasks.jsonl, data/); `jala data synth --format lerobot` "
                                 "writes one")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LeRobotFormatError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): fix or re-download it")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path} not found: a LeRobot v2.x dataset lists its episodes and tasks in "
                                 "meta/episodes.jsonl and meta/tasks.jsonl")
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise LeRobotFormatError(f"{path} line {number} is not JSON ({err.msg}): fix or re-download it")
    return lines
