"""Read the few frames a clip needs from its video (``.mp4`` or a folder of images), resized to a square.

The converter stores only chunk-boundary frames, but which ones depends on the clip's length. So the
length is taken from the container first (no decoding), the video decoded once keeping just the wanted
frames; only when the decoded count disagrees with the container's (a rare, broken header) is it
decoded a second time. Frames are squashed to ``size x size`` (not cropped: hands near the border stay).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class VideoError(Exception):
    """The video cannot be read (``unreadable``) or holds no frame (``empty``)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def read_frames(path: Path, wanted: Callable[[int], np.ndarray], size: int) -> tuple[int, dict[int, np.ndarray]]:
    """``(frame count, {index: uint8 [size, size, 3]})`` for the indices ``wanted(frame count)`` returns."""
    if path.is_dir():
        return read_image_folder(path, wanted, size)
    if not path.is_file():
        raise VideoError("unreadable", f"{path} does not exist")
    try:
        expected = container_frame_count(path)
        if expected == 0:
            raise VideoError("empty", f"{path} has no video frame")
        count, frames = decode_mp4(path, set(wanted(expected).tolist()), size)
        if count != expected and count > 0:
            count, frames = decode_mp4(path, set(wanted(count).tolist()), size)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError("unreadable", f"{path}: {err.__class__.__name__}: {err}") from None
    if count == 0:
        raise VideoError("empty", f"{path} decodes to no frame")
    return count, frames


def container_frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        if not container.streams.video:
            return 0
        stream = container.streams.video[0]
        if stream.frames:
            return stream.frames
        return sum(1 for packet in container.demux(stream) if packet.size)


def decode_mp4(path: Path, keep: set[int], size: int) -> tuple[int, dict[int, np.ndarray]]:
    frames, count = {}, 0
    with av.open(str(path)) as container:
        for count, frame in enumerate(container.decode(video=0), start=1):
            if count - 1 in keep:
                frames[count - 1] = frame.to_ndarray(format="rgb24", width=size, height=size, interpolation="AREA")
    return count, frames


def read_image_folder(folder: Path, wanted: Callable[[int], np.ndarray], size: int) -> tuple[int, dict[int, np.ndarray]]:
    files = frame_files(folder)
    if not files:
        raise VideoError("empty", f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} image")
    frames = {}
    for index in sorted(set(wanted(len(files)).tolist())):
        try:
            with Image.open(files[index]) as image:
                frames[index] = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except OSError as err:
            raise VideoError("unreadable", f"{files[index]}: {err}") from None
    return len(files), frames


def frame_files(folder: Path) -> list[Path]:
    """The folder's images in frame order. Numbered names (``frame_9.jpg``, ``frame_10.jpg``) go by their number, not
    as text, and must run on without a gap or a repeat: a missing frame would shift the rest of the clip in time."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    numbers = [re.search(r"(\d+)$", p.stem) for p in files]
    if not all(numbers):
        return sorted(files)
    numbered = sorted(zip((int(number[1]) for number in numbers), files))
    for (before, _), (after, file) in zip(numbered, numbered[1:]):
        if after != before + 1:
            raise VideoError("unreadable", f"{file}: frame {after} follows frame {before}, expected {before + 1} "
                                           "(a frame is missing or numbered twice)")
    return [file for _, file in numbered]
