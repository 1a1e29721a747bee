"""A LeRobot v2.x dataset -> one robot MDS dataset, with ``robot_meta.json``, ``norm_stats.json`` and ``report.json``.

    jala data convert --format lerobot --src demo_out/lerobot --out demo_out/robot_mds --horizon 16

Episodes are read in order; each valid episode of T frames becomes T records (one per timestep t, with actions
t .. t+H-1, the last action repeated past the end and marked invalid). An episode is rejected whole, with its
reason, when its table cannot be read (``unreadable_data``), its state or action width differs from info.json
(``wrong_dims``), a value is NaN or infinite (``nan``), its ``frame_index`` is not 0 .. T-1 (``bad_frame_index``), its
row count differs from episodes.jsonl's ``length`` (``wrong_length``), or a camera's frames cannot be read
(``unreadable_video``).
The report balances: ``episodes_in == episodes_written + episodes_rejected`` and the same for frames.
Normalisation statistics are computed once, over every written frame's state and action.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter

from jala_ds.data.convert import DEFAULT_SHARD_BYTES
from jala_ds.data.lerobot_format import ACTION_KEY, STATE_KEY, LeRobotDataset
from jala_ds.data.raw_clips import encode_jpeg
from jala_ds.data.robot_norm import NORM_MODES, NORM_STATS_FILE, compute_norm_stats
from jala_ds.data.robot_schema import ROBOT_COLUMNS, RobotMeta, float_bytes
from jala_ds.data.schema import SHARD_HASHES
from jala_ds.data.video_frames import VideoError
from jala_ds.motion.checkpoint_folder import written_whole


class EpisodeRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def convert_lerobot(src: str | Path, out: str | Path, *, action_horizon: int, cameras: list[str] | None = None,
                    frame_size: int, norm_mode: str = "quantile", shard_bytes: int = DEFAULT_SHARD_BYTES,
                    overwrite: bool = False) -> dict[str, Any]:
    """Convert the LeRobot dataset at ``src`` into a robot MDS dataset at ``out``; return (and write) the report."""
    src, out = Path(src), Path(out)
    if action_horizon < 1:
        raise ValueError(f"--horizon {action_horizon}: the action chunk needs at least one step")
    if frame_size < 16:
        raise ValueError(f"frame size {frame_size}: use at least 16 pixels")
    if norm_mode not in NORM_MODES:
        raise ValueError(f"normalisation mode {norm_mode!r}: use one of {', '.join(NORM_MODES)}")
    dataset = LeRobotDataset(src)
    stored = dataset.cameras if cameras is None else cameras
    unknown = [camera for camera in stored if camera not in dataset.cameras]
    if unknown or not stored:
        raise ValueError(f"--cameras {','.join(stored) or '(none)'}: {src} has cameras "
                         f"{', '.join(dataset.cameras) or '(none)'}; name some of those, or leave --cameras out for all")
    if out.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--out {out} overlaps --src {src}: --overwrite would delete the LeRobot dataset; choose an "
                         "--out outside --src")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder: choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds data: pass --overwrite or choose another --out")
    state_dim, action_dim = dataset.dim(STATE_KEY), dataset.dim(ACTION_KEY)
    report: dict[str, Any] = {
        "episodes_in": len(dataset.episodes), "frames_in": 0, "episodes_written": 0, "frames_written": 0,
        "episodes_rejected": 0, "frames_rejected": 0, "rejected_by_reason": Counter(), "rejections": [],
        "src": str(src), "cameras": stored, "action_horizon": action_horizon, "frame_size": frame_size,
    }
    # Written aside and put in --out's place only once whole: a conversion that fails (every episode rejected,
    # an interrupt) leaves the dataset --overwrite would have replaced, and never half of a new one.
    with written_whole(out) as staging:
        all_states, all_actions = [], []
        writer = MDSWriter(out=str(staging), columns=ROBOT_COLUMNS, compression=None, hashes=SHARD_HASHES,
                           size_limit=shard_bytes)
        for episode in dataset.episodes:
            index = int(episode["episode_index"])
            frames_claimed = int(episode.get("length", 0))
            try:
                records, states, actions = episode_records(dataset, episode, stored, action_horizon, frame_size,
                                                           state_dim, action_dim)
            except EpisodeRejected as rejection:
                report["frames_in"] += frames_claimed
                report["episodes_rejected"] += 1
                report["frames_rejected"] += frames_claimed
                report["rejected_by_reason"][rejection.reason] += 1
                report["rejections"].append({"episode_index": index, "reason": rejection.reason,
                                             "detail": rejection.detail})
                continue
            for record in records:
                writer.write(record)
            report["frames_in"] += len(records)
            report["episodes_written"] += 1
            report["frames_written"] += len(records)
            all_states.append(states)
            all_actions.append(actions)
        if not all_states:
            first = report["rejections"][0]["detail"] if report["rejections"] else "-"
            raise ValueError(f"every episode of {src} was rejected ({dict(report['rejected_by_reason'])}): nothing to "
                             f"write; first rejection: {first}")
        writer.finish()
        stats = compute_norm_stats(np.concatenate(all_states), np.concatenate(all_actions), norm_mode)
        stats.save(staging / NORM_STATS_FILE)
        RobotMeta(state_dim=state_dim, action_dim=action_dim, action_horizon=action_horizon, cameras=stored,
                  fps=dataset.fps, source=str(src)).save(staging)
        for kind in ("episodes", "frames"):
            if report[f"{kind}_in"] != report[f"{kind}_written"] + report[f"{kind}_rejected"]:
                raise RuntimeError(f"conversion lost {kind}: {report[f'{kind}_in']} in, {report[f'{kind}_written']} "
                                   f"written, {report[f'{kind}_rejected']} rejected")
        (staging / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return json.loads((out / "report.json").read_text())


def episode_records(dataset: LeRobotDataset, episode: dict, cameras: list[str], horizon: int, frame_size: int,
                    state_dim: int, action_dim: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """One record per timestep of the episode, plus its states ``[T, S]`` and actions ``[T, A]``."""
    index = int(episode["episode_index"])
    try:
        table = dataset.episode_table(index)
    except (OSError, ValueError) as err:
        raise EpisodeRejected("unreadable_data", f"episode {index}: {dataset.episode_path(index)}: {err}") from None
    for key in (STATE_KEY, ACTION_KEY, "frame_index"):
        if key not in table:
            raise EpisodeRejected("unreadable_data", f"episode {index}: {dataset.episode_path(index)} has no {key!r}")
    states, actions = table[STATE_KEY], table[ACTION_KEY]
    for key, values, dim in ((STATE_KEY, states, state_dim), (ACTION_KEY, actions, action_dim)):
        if values.shape[1] != dim:
            raise EpisodeRejected("wrong_dims", f"episode {index}: {key} has {values.shape[1]} dimensions, "
                                  f"info.json declares {dim}")
        if not np.isfinite(values).all():
            rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
            raise EpisodeRejected("nan", f"episode {index}: {key} is NaN or infinite in {len(rows)} rows "
                                  f"(first frame {int(rows[0])})")
    order = np.argsort(table["frame_index"], kind="stable")
    table = {key: (value[order] if isinstance(value, np.ndarray) else [value[i] for i in order])
             for key, value in table.items()}
    states, actions = table[STATE_KEY], table[ACTION_KEY]
    frame_index = table["frame_index"]
    if not np.array_equal(frame_index, np.arange(len(frame_index))):
        # The action chunk is the next H rows and the video frame is looked up by frame_index: both need 0 .. T-1.
        step = np.flatnonzero(np.diff(frame_index) != 1)
        where = f"at frame {int(frame_index[step[0]])}" if len(step) else f"starting at {int(frame_index[0])}"
        raise EpisodeRejected("bad_frame_index", f"episode {index}: frame_index is not 0 .. {len(frame_index) - 1} "
                              f"(a gap or a repeat {where})")
    if "length" in episode and int(episode["length"]) != len(frame_index):
        raise EpisodeRejected("wrong_length", f"episode {index}: {dataset.episode_path(index)} holds "
                              f"{len(frame_index)} frames, meta/episodes.jsonl says {episode['length']}")
    try:
        views = [dataset.camera_frames(index, camera, table, frame_size) for camera in cameras]
    except (VideoError, OSError, ValueError) as err:
        raise EpisodeRejected("unreadable_video", f"episode {index}: {err}") from None
    length = len(states)
    camera_list = json.dumps(cameras)
    records = []
    for t in range(length):
        window = np.minimum(np.arange(t, t + horizon), length - 1)
        jpegs = [encode_jpeg(view[t]) for view in views]
        records.append({
            "episode_index": index,
            "frame_index": int(table["frame_index"][t]),
            "instruction": dataset.instruction(episode, table, t),
            "cameras": camera_list,
            "images": b"".join(jpegs),
            "image_offsets": np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64),
            "state": float_bytes(states[t]),
            "actions": float_bytes(actions[window]),
            "action_valid": (np.arange(t, t + horizon) < length).astype(np.uint8).tobytes(),
        })
    return records, states, actions
