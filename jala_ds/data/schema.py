"""What an MDS record holds (docs/architecture.md section 2): its columns, and readers for the per-hand arrays.

No column uses ``pkl``: shards never unpickle anything. Per-hand poses and tokens are raw little-endian
``bytes`` rather than ``ndarray`` columns because a hand can be absent and MDS's ``ndarray`` encoding
refuses empty arrays; :func:`hand_poses` and :func:`hand_tokens` give them back as arrays.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SUBSETS = ("lab", "wild")
TASKS = ("generation", "description", "continuation")
HANDS = ("left", "right")
"""Hand order everywhere: index 0 is left, 1 is right (``chunk_hand`` in the batch uses these indices)."""
POSE_DIMS = 99

MDS_COLUMNS = {
    "clip_id": "str",
    "source": "str",
    "subset": "str",
    "task": "str",
    "instruction": "str",
    "fps": "float32",
    "time_scale": "float32",
    "frames": "bytes",
    "frame_offsets": "ndarray:int64",
    "frame_index": "ndarray:int32",
    "left": "bytes",
    "right": "bytes",
    "labeled": "int",
}
TOKEN_COLUMNS = {"left_tokens": "bytes", "right_tokens": "bytes"}
"""Added by ``jala data tokenize``: int32 ``[chunks, tokens_per_chunk]`` codes per hand, empty when absent."""
SHARD_HASHES = ["sha1", "xxh64"]
"""Recorded per shard in index.json; the loader checks xxh64 (fast), sha1 is there for external tools."""


def array_bytes(array: np.ndarray, dtype: str) -> bytes:
    """The bytes a per-hand column stores: ``array`` as little-endian ``dtype`` (``"<f4"`` or ``"<i4"``)."""
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def hand_poses(record: Mapping, hand: str) -> np.ndarray:
    """float32 ``[T, 99]`` poses of ``hand`` (``[0, 99]`` when the clip has none)."""
    return np.frombuffer(record[hand], dtype="<f4").reshape(-1, POSE_DIMS).astype(np.float32)


def hand_tokens(record: Mapping, hand: str) -> np.ndarray | None:
    """int32 ``[chunks, tokens_per_chunk]`` stored codes of ``hand``; None when the shards carry no tokens."""
    data = record.get(f"{hand}_tokens")
    if data is None:
        return None
    chunks = len(record["frame_index"]) - 1
    return np.frombuffer(data, dtype="<i4").reshape(chunks, -1).astype(np.int32)


def labelled_hands(record: Mapping) -> list[int]:
    """Indices into ``HANDS`` of the hands with motion labels: poses, or codes stored without poses (the action-token
    predictor's pseudo labels on a video-only clip, ``jala token-predictor label``)."""
    return [h for h, hand in enumerate(HANDS) if record[hand] or record.get(f"{hand}_tokens")]
