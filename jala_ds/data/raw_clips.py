"""One raw clip (docs/architecture.md section 1) checked and turned into one MDS record.

Every way a clip can be unusable is a :class:`ClipRejected` with one of :data:`REJECTION_REASONS`;
the converter counts them in its report instead of failing. A wild clip whose pseudo labels are not
trusted (mean confidence under ``min_pseudo_confidence``) is kept, as video-only.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.npyio import NpzFile
from PIL import Image

from jala_ds.data.retime import (
    chunk_boundaries,
    retime_poses,
    slowed_length,
    source_frames,
)
from jala_ds.data.schema import HANDS, POSE_DIMS, SUBSETS, TASKS, array_bytes
from jala_ds.data.video_frames import VideoError, read_frames

REJECTION_REASONS = {
    "bad_manifest": "the manifest line is not JSON, lacks a field or has one of the wrong type or value",
    "duplicate_clip_id": "another clip already uses this clip_id",
    "empty_instruction": "the instruction is empty or blank",
    "lab_without_poses": "a lab clip must come with MANO poses",
    "unreadable_poses": "the .npz cannot be read or holds neither 'left' nor 'right'",
    "bad_pose_dims": "a pose array is not a real-valued [T, 99] (or confidence not [T])",
    "nonfinite_pose": "a pose or confidence value is NaN or infinite",
    "pose_frame_mismatch": "pose, confidence and video frame counts disagree",
    "unreadable_video": "the video file or an image of the frame folder cannot be decoded, or the folder skips a frame",
    "empty_video": "the video holds no frame",
    "too_short": "fewer frames than one motion chunk (after the wild slow-down)",
}
MANIFEST_FIELDS = ("clip_id", "video", "fps", "instruction", "source", "subset", "mano", "task")
JPEG_QUALITY = 90
FPS_MAX = float(np.finfo(np.float32).max)
"""The largest fps the float32 column holds (a Python float: it compares exactly with a JSON integer of any size)."""


class ClipRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECTION_REASONS, reason
        super().__init__(reason, detail)  # both in args, so the exception pickles back from a worker
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class ConvertSettings:
    """The ``data.*`` values that shape a record (picklable for the worker processes)."""

    chunk_frames: int
    wild_slowdown: float
    min_pseudo_confidence: float
    frame_size: int


def check_entry(entry: Any) -> dict:
    """The manifest entry, or ``bad_manifest`` / ``empty_instruction`` / ``lab_without_poses``."""
    if not isinstance(entry, dict):
        raise ClipRejected("bad_manifest", "a manifest line must be a JSON object")
    missing = [f for f in MANIFEST_FIELDS if f not in entry]
    if missing:
        raise ClipRejected("bad_manifest", f"missing field(s) {', '.join(missing)}")
    # str() would store a null or a list as the text "None" or "['a']", and a path of them does not join
    wrong = [f for f in ("clip_id", "video", "source", "instruction")
             if not isinstance(entry[f], str) or f != "instruction" and not entry[f].strip()]
    if entry["mano"] is not None and not (isinstance(entry["mano"], str) and entry["mano"].strip()):
        wrong.append("mano")
    if wrong:
        named = ", ".join(f"{f}={entry[f]!r}" for f in wrong)
        raise ClipRejected("bad_manifest", f"{named}: clip_id, video and source must be non-empty strings, "
                                           "instruction a string, mano a path or null")
    if entry["subset"] not in SUBSETS or entry["task"] not in TASKS:
        raise ClipRejected("bad_manifest", f"subset must be one of {SUBSETS} and task one of {TASKS}, "
                                           f"got {entry['subset']!r} / {entry['task']!r}")
    fps = entry["fps"]   # JSON allows NaN and Infinity; a bool is an int to isinstance
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= FPS_MAX:
        raise ClipRejected("bad_manifest", f"fps must be a positive finite number, got {fps!r}")
    if not entry["instruction"].strip():
        raise ClipRejected("empty_instruction", "instruction is blank")
    if entry["subset"] == "lab" and entry["mano"] is None:
        raise ClipRejected("lab_without_poses", "mano is null")
    return entry


def load_poses(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``({hand: float32 [T, 99]}, confidence [T] or None)``, every check but the video's length done."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, NpzFile):
            with loaded as npz:
                arrays = {key: npz[key] for key in npz.files}
    except Exception as err:   # a damaged file fails in zipfile, zlib or numpy's header parser, each its own way
        raise ClipRejected("unreadable_poses", f"{path}: {err.__class__.__name__}: {err}") from None
    if not isinstance(loaded, NpzFile):
        raise ClipRejected("unreadable_poses", f"{path} holds one .npy array, not an .npz of 'left'/'right'")
    hands = {hand: arrays[hand] for hand in HANDS if hand in arrays}
    if not hands:
        raise ClipRejected("unreadable_poses", f"{path} holds neither 'left' nor 'right' (keys: {sorted(arrays)})")
    for hand, poses in hands.items():
        if poses.ndim != 2 or poses.shape[1] != POSE_DIMS or poses.dtype.kind not in "fiu":
            raise ClipRejected("bad_pose_dims",
                               f"{hand} is {poses.dtype} {poses.shape}, expected numbers [T, {POSE_DIMS}]")
        if not np.isfinite(poses).all():
            raise ClipRejected("nonfinite_pose", f"{hand} has {int((~np.isfinite(poses)).sum())} NaN/Inf values")
    lengths = {len(p) for p in hands.values()}
    if len(lengths) > 1:
        raise ClipRejected("pose_frame_mismatch", f"left and right have different lengths {sorted(lengths)}")
    confidence = arrays.get("confidence")
    if confidence is not None:
        if confidence.ndim != 1 or confidence.dtype.kind not in "fiu":
            raise ClipRejected("bad_pose_dims", f"confidence is {confidence.dtype} {confidence.shape}, expected [T]")
        if len(confidence) not in lengths:
            raise ClipRejected("pose_frame_mismatch", f"confidence has {len(confidence)} values for {lengths.pop()} poses")
        if not np.isfinite(confidence).all():
            raise ClipRejected("nonfinite_pose", "confidence has NaN/Inf values")
    return {hand: p.astype(np.float32) for hand, p in hands.items()}, confidence


def clip_to_record(root: Path, entry: Any, settings: ConvertSettings) -> tuple[dict, bool]:
    """``(MDS record, pseudo labels dropped)`` for one manifest entry, or :class:`ClipRejected`."""
    entry = check_entry(entry)
    hands, confidence = load_poses(root / entry["mano"]) if entry["mano"] else ({}, None)
    scale = settings.wild_slowdown if entry["subset"] == "wild" else 1.0

    def wanted(count: int) -> np.ndarray:
        length = slowed_length(count, scale)
        return source_frames(chunk_boundaries(length, settings.chunk_frames), scale, count)

    try:
        count, frames = read_frames(root / entry["video"], wanted, settings.frame_size)
    except VideoError as err:
        raise ClipRejected(f"{err.kind}_video", str(err)) from None
    if hands and len(next(iter(hands.values()))) != count:
        raise ClipRejected("pose_frame_mismatch", f"{len(next(iter(hands.values())))} pose frames, {count} video frames")
    length = slowed_length(count, scale)
    if length < settings.chunk_frames:
        raise ClipRejected("too_short", f"{length} frames on the slowed timeline, a chunk needs {settings.chunk_frames}")

    pseudo_dropped = bool(hands) and confidence is not None and confidence.mean() < settings.min_pseudo_confidence
    if pseudo_dropped:
        hands = {}
    frame_index = chunk_boundaries(length, settings.chunk_frames)
    jpegs = [encode_jpeg(frames[i]) for i in source_frames(frame_index, scale, count)]
    record = {
        "clip_id": entry["clip_id"],
        "source": entry["source"],
        "subset": entry["subset"],
        "task": entry["task"],
        "instruction": entry["instruction"].strip(),
        "fps": np.float32(entry["fps"]),
        "time_scale": np.float32(scale),
        "frames": b"".join(jpegs),
        "frame_offsets": np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64),
        "frame_index": frame_index,
        **{hand: array_bytes(retime_poses(hands[hand], scale), "<f4") if hand in hands else b"" for hand in HANDS},
        "labeled": int(bool(hands)),
    }
    return record, pseudo_dropped


def convert_one(task: tuple[Path, Any, ConvertSettings]) -> tuple[dict, bool] | ClipRejected:
    """:func:`clip_to_record` for a worker process: the rejection is returned, not raised."""
    root, entry, settings = task
    try:
        return clip_to_record(root, entry, settings)
    except ClipRejected as rejection:
        return rejection


def encode_jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
