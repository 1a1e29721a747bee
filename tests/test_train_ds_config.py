"""The effective DeepSpeed config: recipe values fill "auto", agreeing numbers pass, contradictions are refused."""
from __future__ import annotations

import dataclasses
import json

import pytest

from jala_ds.config import load_config
from jala_ds.config_checks import ConfigError
from jala_ds.train.config import TrainConfig
from jala_ds.train.ds_config import PROJECT_ROOT, build_ds_config, find_auto

SHIPPED = sorted(p.name for p in (PROJECT_ROOT / "ds_configs").glob("*.json"))


def custom(tmp_path, tree: dict) -> TrainConfig:
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(tree))
    return TrainConfig(micro_batch_size=2, global_batch_size=8, grad_accum_steps=2, ds_config=str(path), dtype="bf16",
                       lr=3e-4, betas=[0.9, 0.95], weight_decay=0.1, grad_clip=0.5)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_takes_the_paper_recipe_values(name):
    cfg = load_config("pretrain_internvl3_2b", [f"train.ds_config=ds_configs/{name}", "model.attention=reference"])
    ds = build_ds_config(cfg.train, world_size=8)
    assert find_auto(ds) is None
    batch = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]
    assert batch == (16, 1, 128)
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"] == {"enabled": True}
    assert ds["optimizer"]["type"] == "AdamW"
    # which AdamW runs it: torch's (fused on GPUs: no DeepSpeed op to build), or DeepSpeed's CPU Adam under offload
    implementation = {"cpu.json": {"torch_adam": True}, "zero3_offload.json": {}}.get(
        name, {"torch_adam": True, "fused": True})
    assert ds["optimizer"]["params"] == {"lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.05, "eps": 1e-8,
                                         **implementation}
    assert "scheduler" not in ds


def test_zero3_configs_keep_the_production_persistence_threshold():
    for name in ("cpu.json", "zero3_bf16.json", "zero3_offload.json"):
        zero = json.loads((PROJECT_ROOT / "ds_configs" / name).read_text())["zero_optimization"]
        assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 1e5, name


def test_absent_keys_are_filled_and_agreeing_numbers_pass(tmp_path):
    train = custom(tmp_path, {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.5,
                              "optimizer": {"params": {"lr": 0.0003}}, "zero_optimization": {"stage": 2}})
    ds = build_ds_config(train, world_size=2)
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 2
    assert ds["optimizer"] == {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}}
    assert ds["bf16"] == {"enabled": True}


@pytest.mark.parametrize("tree, words", [
    ({"gradient_accumulation_steps": 4}, ["gradient_accumulation_steps=4", "train.grad_accum_steps", '"auto"']),
    ({"train_batch_size": 16}, ["train_batch_size=16", "train.global_batch_size"]),
    ({"gradient_clipping": 1.0}, ["gradient_clipping=1.0", "train.grad_clip"]),
    ({"bf16": {"enabled": False}}, ["bf16.enabled=false", "train.dtype"]),
    ({"optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.999]}}}, ["optimizer.params.betas", "train.betas"]),
    ({"optimizer": {"type": "AdamW", "params": {"weight_decay": 0.0}}}, ["optimizer.params.weight_decay"]),
    ({"optimizer": {"type": "Lamb"}}, ["optimizer.type=Lamb", "AdamW"]),
    ({"scheduler": {"type": "WarmupLR"}}, ["scheduler", "train.warmup_frac"]),
    ({"fp16": {"enabled": True}}, ["fp16.enabled=true"]),
    ({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}, ["zero_optimization.reduce_bucket_size"]),
    ({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 2}}, ["zero_hpz_partition_size"]),
    ({"zero_optimization": {"stage": 3, "zero_quantized_weights": True}}, ["zero_quantized_weights"]),
    # the EMA averaged DeepSpeed's one-element placeholder of each swapped-out shard
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}, ["offload_param.device=nvme"]),
    # a quoted stage read "stage=3 is not a ZeRO stage: use 0, 1, 2 or 3"; the rest stopped with a Python error
    ({"zero_optimization": {"stage": "3"}}, ['zero_optimization.stage="3" is not a ZeRO stage', "the number"]),
    ({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": "2"}}, ["zero_hpz_partition_size"]),
    ({"zero_optimization": None}, ["zero_optimization must be a JSON object of settings, got null"]),
    ({"bf16": True}, ["bf16 must be a JSON object of settings, got true", "write it as {...}"]),
    ({"optimizer": {"type": "AdamW", "params": None}}, ["optimizer.params must be a JSON object"]),
])
def test_contradictions_and_unsupported_settings_are_one_line_naming_both_keys(tmp_path, tree, words):
    with pytest.raises(ConfigError) as err:
        build_ds_config(custom(tmp_path, tree), world_size=2)
    message = str(err.value)
    assert "\n" not in message and "custom.json" in message
    for word in words:
        assert word in message, message


def test_world_size_that_breaks_the_batch_arithmetic_is_refused_with_fixes_that_work(tmp_path):
    train = custom(tmp_path, {})   # micro-batch 2, 2 micro-batches per step, global batch 8
    with pytest.raises(ConfigError, match="world size 3") as refused:
        build_ds_config(train, world_size=3)
    # 8 samples do not split into micro-batches of 2 on 3 ranks: only the global batch can change
    assert "grad_accum_steps=" not in str(refused.value) and "train.global_batch_size=12" in str(refused.value)
    with pytest.raises(ConfigError, match="world size 4") as refused:
        build_ds_config(train, world_size=4)
    assert "train.grad_accum_steps=1 or train.global_batch_size=16" in str(refused.value)
    build_ds_config(dataclasses.replace(train, grad_accum_steps=1), world_size=4)
    build_ds_config(dataclasses.replace(train, global_batch_size=12), world_size=3)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(ConfigError, match=r"broken.json is not valid JSON \(line 1"):
        build_ds_config(TrainConfig(micro_batch_size=1, global_batch_size=1, ds_config=str(path)), world_size=1)
