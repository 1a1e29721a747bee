"""The effective DeepSpeed config: a native JSON from ``ds_configs/`` with the recipe's values filled in.

The recipe is the one source of truth for batch sizes, clipping, precision and AdamW's hyper-parameters. In
the JSON those keys are ``"auto"`` (or absent) and get filled here; a number that disagrees with the recipe is
refused with one line naming both keys. Nothing here imports torch or DeepSpeed: the checks run before any
process starts.

    ds = build_ds_config(cfg.train, world_size=8)
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from jala_ds.config_checks import ConfigError
from jala_ds.train.config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AUTO = "auto"


def resolve_ds_config_path(name: str) -> Path:
    """``train.ds_config`` as given (relative to the working directory), else relative to the project root."""
    for candidate in (Path(name), PROJECT_ROOT / name):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(f"ds_configs/{p.name}" for p in (PROJECT_ROOT / "ds_configs").glob("*.json")))
    raise ConfigError(f"train.ds_config: file '{name}' not found: pass a DeepSpeed JSON path or one of: {known}")


def read_ds_config(name: str) -> dict[str, Any]:
    path = resolve_ds_config_path(name)
    try:
        tree = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"train.ds_config: {path} is not valid JSON (line {err.lineno}: {err.msg}): "
                          "fix the file") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"train.ds_config: {path} must hold a JSON object of DeepSpeed settings")
    return tree


def recipe_values(train: TrainConfig) -> list[tuple[str, str, Any]]:
    """(JSON key, recipe key, value) for every DeepSpeed setting the recipe owns."""
    return [
        ("train_micro_batch_size_per_gpu", "train.micro_batch_size", train.micro_batch_size),
        ("gradient_accumulation_steps", "train.grad_accum_steps", train.grad_accum_steps),
        ("train_batch_size", "train.global_batch_size", train.global_batch_size),
        ("gradient_clipping", "train.grad_clip", train.grad_clip),
        ("bf16.enabled", "train.dtype", train.dtype == "bf16"),
        ("optimizer.params.lr", "train.lr", train.lr),
        ("optimizer.params.betas", "train.betas", list(train.betas)),
        ("optimizer.params.weight_decay", "train.weight_decay", train.weight_decay),
    ]


def build_ds_config(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """Fill ``train.ds_config``'s ``"auto"``/absent recipe-owned keys; refuse contradictions and unsupported parts."""
    train.check_world_size(world_size)
    where = train.ds_config
    ds = copy.deepcopy(read_ds_config(where))
    refuse_unsupported(ds, where)
    ds.setdefault("optimizer", {}).setdefault("type", "AdamW")
    ds["optimizer"].setdefault("params", {})
    for json_key, recipe_key, value in recipe_values(train):
        present = get_path(ds, json_key)
        if present is not None and present != AUTO and not same_value(present, value):
            raise ConfigError(f"{where}: {json_key}={json.dumps(present)} contradicts {recipe_key} (which gives "
                              f"{json.dumps(value)}): set it to \"auto\" in the JSON, or change {recipe_key}")
        set_path(ds, json_key, value)
    accumulate_in_fp32(ds, train)
    without_throughput_timer(ds)
    leftover = find_auto(ds)
    if leftover:
        raise ConfigError(f"{where}: {leftover} is \"auto\" but the recipe does not own it: write a number")
    return ds


def accumulate_in_fp32(ds: dict[str, Any], train: TrainConfig) -> None:
    """bf16 runs of several micro-batches per step sum their gradients in fp32 under ZeRO-2 and -3
    (``data_types.grad_accum_dtype``, unless the JSON sets it).

    DeepSpeed's default is the model's dtype: each micro-batch's gradient added into a bf16 sum rounds it to 8
    mantissa bits, and 16 of them put the largest element of a tiny model's summed gradient 0.9 % off the exact
    sum (``tests/test_train_grad_accumulation.py``), an error that grows with the count. One micro-batch per step
    sums nothing and keeps DeepSpeed's path, which the recipe's GPU figures measured. ZeRO-1 would switch
    DeepSpeed to another optimiser class, and stage 0 refuses the mix, so they keep the default.
    """
    stage = get_path(ds, "zero_optimization.stage")
    if train.dtype == "bf16" and train.grad_accum_steps > 1 and stage in (2, 3):
        ds.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")


def without_throughput_timer(ds: dict[str, Any]) -> None:
    """DeepSpeed's throughput timer off, unless the JSON configures it (``timers.throughput``).

    On by default, and started by every forward when the engine was given no data loader (ours is our own), it
    synchronises the device at the start of each forward and the end of each step from the third step on
    (``deepspeed/utils/timer.py``, ``ThroughputTimer``, 0.19.8): twice per micro-batch, the host stops queuing
    work until the GPU has run everything, so the host never runs ahead into the next step. It would only log a
    samples/s figure; the training loop measures throughput itself (``metrics.py``).
    """
    ds.setdefault("timers", {}).setdefault("throughput", {"enabled": False})


def refuse_unsupported(ds: dict[str, Any], where: str) -> None:
    """Settings that would silently bypass the recipe or the sharded EMA, and sections that are not JSON objects
    (``"bf16": true``), which the checks below and DeepSpeed would stop at with a Python error."""
    for section in ("optimizer", "optimizer.params", "zero_optimization", "bf16", "fp16", "data_types", "timers"):
        *parents, leaf = section.split(".")
        holder = get_path(ds, ".".join(parents)) if parents else ds
        value = holder.get(leaf, {}) if isinstance(holder, dict) else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {section} must be a JSON object of settings, got {json.dumps(value)}: "
                              f"write it as {{...}}, or remove it")
    if "scheduler" in ds:
        raise ConfigError(f"{where}: remove the 'scheduler' section: the learning-rate schedule comes from "
                          "train.warmup_frac and train.min_lr_ratio")
    if get_path(ds, "fp16.enabled") is True:
        raise ConfigError(f"{where}: fp16.enabled=true is not offered (DeepSpeed refuses fp16 on CPU and the "
                          "paper trains in bf16): remove the fp16 section and set train.dtype=bf16")
    kind = get_path(ds, "optimizer.type")
    if kind is not None and str(kind).lower() != "adamw":
        raise ConfigError(f"{where}: optimizer.type={kind} is not supported: use \"AdamW\" (the paper's optimiser)")
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):  # json.dumps: a quoted "3" reads as the string it is
        raise ConfigError(f"{where}: zero_optimization.stage={json.dumps(stage)} is not a ZeRO stage: use the number "
                          "0, 1, 2 or 3")
    for key in ("zero_quantized_weights", "zero_quantized_nontrainable_weights"):
        if zero.get(key):
            raise ConfigError(f"{where}: zero_optimization.{key}=true is not supported (the sharded EMA writes "
                              "full-precision parameter shards): remove it")
    if str(get_path(ds, "zero_optimization.offload_param.device")).lower() == "nvme":
        # A swapped-out shard's ds_tensor is DeepSpeed's one-element placeholder: the EMA would average that.
        raise ConfigError(f"{where}: zero_optimization.offload_param.device=nvme is not supported (the sharded EMA "
                          "reads and writes parameter shards in memory): use \"cpu\" or \"none\"")
    if zero.get("zero_hpz_partition_size", 1) not in (0, 1):
        raise ConfigError(f"{where}: zero_optimization.zero_hpz_partition_size>1 is not supported (the sharded "
                          "EMA would miss the secondary copies): remove it")


def same_value(present: Any, value: Any) -> bool:
    if isinstance(value, bool) or isinstance(present, bool):
        return present is value
    if isinstance(value, (int, float)) and isinstance(present, (int, float)):
        return math.isclose(float(present), float(value), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(value, list) and isinstance(present, list):
        return len(value) == len(present) and all(same_value(p, v) for p, v in zip(present, value))
    return present == value


def get_path(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def find_auto(tree: Any, prefix: str = "") -> str | None:
    """The dotted key of the first ``"auto"`` value left in ``tree``, if any."""
    if tree == AUTO:
        return prefix.rstrip(".")
    if isinstance(tree, dict):
        for key, value in tree.items():
            found = find_auto(value, f"{prefix}{key}.")
            if found:
                return found
    return None


def zero_stage(ds: dict[str, Any]) -> int:
    return int(get_path(ds, "zero_optimization.stage") or 0)
