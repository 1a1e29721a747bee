"""Stored JPEG frames -> model inputs: decoded, resized with torch, ImageNet-normalised.

The VLM's vision tower and the frozen visual encoder take different sides (``model.image_size``,
``model.visual_encoder_image_size``); both read the same decoded frame, each resized once. Frames stay
uint8 through decoding, resizing (torch's uint8 antialiased resize is a fast SIMD path) and the batch: a
quarter of float32's bytes cross from the loader workers, into pinned memory and to the GPU. The models
normalise them on their device (:func:`normalized`).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torchvision.io import ImageReadMode, decode_jpeg

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def decode_stored_frames(record: Mapping, indices: list[int]) -> torch.Tensor:
    """uint8 ``[len(indices), 3, H, W]``: the record's stored frames number ``indices`` (positions in ``frame_index``)."""
    offsets = record["frame_offsets"]
    data = record["frames"]
    # bytearray: torch.frombuffer wants a writable buffer; the copy is a few kilobytes per frame.
    jpegs = [torch.frombuffer(bytearray(data[offsets[i]:offsets[i + 1]]), dtype=torch.uint8) for i in indices]
    return torch.stack([decode_jpeg(jpeg, mode=ImageReadMode.RGB) for jpeg in jpegs])


def resized(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> uint8 ``[..., 3, size, size]``, bilinear with antialiasing."""
    if frames.shape[-2:] == (size, size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*frames.shape[:-2], size, size)


def normalized(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> ImageNet mean/std in ``dtype``, computed in float32 on the frames' device."""
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (as decoded and batched), got {frames.dtype}: normalising twice "
                        "would feed the model noise")
    # Under a dispatch mode (fake tensors, a FLOP counter) the constants would be that mode's tensors: made afresh
    # and never cached, or every later real call of the process would read fake ones and normalise nothing.
    fresh = _get_current_dispatch_mode() is not None
    scale, shift = _normalizing_constants(frames.device) if fresh else _cached_constants(frames.device)
    return frames.to(torch.float32).mul_(scale).sub_(shift).to(dtype)


def _normalizing_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / 255 - mean) / std as one multiply and one subtract, on ``device`` (copied without waiting for it: the
    training forward never makes the host wait, ``tests/test_model_host_syncs.py``)."""
    return ((1.0 / (255.0 * IMAGENET_STD)).to(device, non_blocking=True),
            (IMAGENET_MEAN / IMAGENET_STD).to(device, non_blocking=True))


_cached_constants = functools.cache(_normalizing_constants)
"""The constants copied to each device once."""
