"""A DeepSpeed checkpoint engine whose files load with ``torch.load(weights_only=True)``: nothing is unpickled.

DeepSpeed 0.19.8 writes a few Python objects into its files (the ZeRO stage as ``ZeroStageEnum``, the loss
scaler object, ZeRO-1/2's ``fragment_address`` records) and reads every file back with
``torch.load(weights_only=False)``, which would run whatever a tampered file asks for. This engine writes
integer enums as their value (DeepSpeed and its ``zero_to_fp32`` compare them as ints) and the other objects
as plain dicts that it rebuilds on load from a fixed allow-list of classes; everything else must already be
tensors, numbers, strings, lists or dicts, or the save fails naming the key.
"""
from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.utils.tensor_fragment import fragment_address

# The only classes a checkpoint may name; rebuilt from their plain state, never imported by name from a file.
ALLOWED_CLASSES = {cls.__name__: cls for cls in (LossScaler, DynamicLossScaler, fragment_address)}
OBJECT_TAG = "__jala_object__"
LEAVES = (torch.Tensor, torch.Size, torch.dtype, torch.device, int, float, bool, str, bytes, type(None))


def to_plain(value: Any, where: str = "state") -> Any:
    """``value`` with allow-listed objects replaced by ``{OBJECT_TAG: class name, "state": ...}``."""
    if isinstance(value, enum.Enum) and isinstance(value, int):
        return int(value)  # pickling the enum itself would name its class
    if isinstance(value, LEAVES):
        return value
    if isinstance(value, dict):
        plain = {key: to_plain(item, f"{where}.{key}") for key, item in value.items()}
        return OrderedDict(plain) if isinstance(value, OrderedDict) else plain
    if isinstance(value, (list, tuple)):
        items = [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    name = type(value).__name__
    if ALLOWED_CLASSES.get(name) is type(value):
        return {OBJECT_TAG: name, "state": to_plain(dict(vars(value)), f"{where}.{name}")}
    raise TypeError(f"checkpoint value {where} is a {type(value).__module__}.{name}, which torch.load("
                    "weights_only=True) cannot read: store it as tensors, numbers, strings, lists or dicts")


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(value, dict):
        if OBJECT_TAG in value:
            cls = ALLOWED_CLASSES[value[OBJECT_TAG]]
            obj = cls.__new__(cls)
            obj.__dict__.update(from_plain(value["state"]))
            return obj
        restored = {key: from_plain(item) for key, item in value.items()}
        return OrderedDict(restored) if isinstance(value, OrderedDict) else restored
    if isinstance(value, list):
        return [from_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(from_plain(item) for item in value)
    return value


def save_plain(state: Any, path: str) -> None:
    torch.save(to_plain(state), path)


def load_plain(path: str, map_location: Any = None) -> Any:
    return from_plain(torch.load(path, map_location=map_location, weights_only=True))


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch engine with plain files; install with ``engine.checkpoint_engine = SafeCheckpointEngine()``."""

    def __init__(self) -> None:
        super().__init__(config_params=None)

    def save(self, state_dict: Any, path: str) -> None:
        save_plain(state_dict, path)

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_plain(path, map_location)
