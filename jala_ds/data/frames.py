"""Stored JPEG frames -> model inputs: decoded, resized with torch, ImageNet-normalised.

The VLM's vision tower and the frozen visual encoder take different sides (``model.image_size``,
``model.visual_encoder_image_size``); both read the same decoded frame, each resized once. Frames stay
uint8 through decoding and resizing (torch's uint8 antialiased resize is a fast SIMD path, and examples
a quarter of the size cross from loader workers more cheaply); :func:`normalized` makes the float batch.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# (x / 255 - mean) / std as one multiply and one subtract.
_SCALE = 1.0 / (255.0 * IMAGENET_STD)
_SHIFT = IMAGENET_MEAN / IMAGENET_STD


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


def normalized(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32, ImageNet mean/std."""
    return frames.to(torch.float32).mul_(_SCALE).sub_(_SHIFT)
