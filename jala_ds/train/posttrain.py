"""``jala posttrain``: a pretrained JALA plus a flow-matching action head, trained on robot demonstrations.

The loop is pretraining's (``loop.train``: DeepSpeed ZeRO-3, checkpoints and resume, MLflow, progress); this file
checks the run and builds its parts: the policy model (``JalaPolicyModel``) initialised from the pretrained
JALA, the robot loader, and a checkpoint that carries the dataset's ``norm_stats.json`` and ``robot_meta.json``.

    jala posttrain --recipe posttrain_tiny_cpu --init demo_out/export                    # one process
    deepspeed --num_gpus 2 $(which jala) posttrain --recipe posttrain_tiny_cpu --init demo_out/export
    deepspeed --num_gpus 8 $(which jala) posttrain --recipe posttrain_libero --init runs/jala-internvl3-2b
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from jala_ds.config import JalaConfig, flatten, load_config
from jala_ds.config_checks import ConfigError
from jala_ds.train.export import HEADS_FILE, POLICY_FILES, RECIPE_FILE
from jala_ds.train.preflight import ARCHITECTURE_KEYS, RunPlan, launcher_world_size, plan_for


def check_posttrain(recipe: str, overrides: list[str], init: str | None) -> RunPlan:
    """Everything checkable before a process group: recipe, robot data and its statistics, the init checkpoint,
    batch arithmetic. ``init`` (``--init``) overrides ``posttrain.init``."""
    from jala_ds.train.ds_config import build_ds_config

    cfg = load_config(recipe, [*overrides, *([f"posttrain.init={init}"] if init else [])])
    check_robot_data(cfg)
    if cfg.posttrain.init is not None:
        resolve_init(cfg)
    elif os.environ.get("RANK", "0") == "0":   # legitimate (a no-pretraining baseline) but easy to do by mistake
        start = f"model.pretrained={cfg.model.pretrained}" if cfg.model.pretrained else "random weights"
        print(f"jala posttrain: no --init (posttrain.init): starting from {start}, without JALA pretraining; pass "
              "--init EXPORT_OR_RUN to post-train a pretrained JALA", file=sys.stderr, flush=True)
    world_size = launcher_world_size()
    return plan_for(cfg, world_size, build_ds_config(cfg.train, world_size))


def check_robot_data(cfg: JalaConfig) -> None:
    """The loader's own checks (dataset, statistics, dims against the action head), as one config-error line."""
    from jala_ds.data.robot_loader import check_robot_dataset

    try:
        check_robot_dataset(cfg)
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"robot.mds_dir: {err}") from None


def resolve_init(cfg: JalaConfig) -> None:
    """Point the backbone at an export (``model.pretrained``), and refuse a recipe whose architecture differs
    from the one the checkpoint was pretrained with."""
    init = Path(cfg.posttrain.init).resolve()
    if (init / HEADS_FILE).is_file():
        pretrained_recipe = init / RECIPE_FILE
        cfg.model.pretrained = str(init)
    elif (init / "config.yaml").is_file() and (init / "checkpoints" / "latest").is_file():
        pretrained_recipe = init / "config.yaml"
    else:
        raise ConfigError(f"posttrain.init: {init} is neither a `jala export` folder ({HEADS_FILE}) nor a pretraining "
                          "run's train.out_dir (config.yaml + checkpoints/latest): pass one of those")
    cfg.posttrain.init = str(init)
    pretrained = flatten(yaml.safe_load(pretrained_recipe.read_text()))
    ours = cfg.flat()
    for key in ARCHITECTURE_KEYS:
        if key in pretrained and pretrained[key] != ours[key]:
            raise ConfigError(f"{key}={ours[key]!r} but {init} was pretrained with {pretrained[key]!r}: set "
                              f"{key}={pretrained[key]!r}")
    # A run's checkpoint holds every weight but not the text tokenizer, which comes from model.pretrained. A
    # random backbone's byte-level tokenizer, padded to the published vocabulary, would even fit the checkpoint's
    # embedding shape: the instructions would silently become other token ids than the pretraining's.
    theirs = pretrained.get("model.pretrained")
    if (theirs is None) != (cfg.model.pretrained is None):
        raise ConfigError(f"model.pretrained={cfg.model.pretrained!r} but {init} was pretrained from "
                          f"{theirs!r}, whose tokenizer its weights were trained with: set model.pretrained={theirs!r}")


def build_posttraining(plan: RunPlan, rank: int, world_size: int):
    """``loop.train``'s parts for post-training: tokenizer and vocabulary from the backbone's folder, the policy
    model (partitioned at birth under ZeRO-3, then filled from ``posttrain.init``), the robot loader, the engine."""
    import torch

    from jala_ds.data.orphaned_memory import remove_orphaned_streaming_memory
    from jala_ds.data.robot_loader import build_robot_loader
    from jala_ds.model.backbone import image_token_count
    from jala_ds.model.policy_model import build_policy_model
    from jala_ds.train.engine import build_engine, model_init_context
    from jala_ds.train.loop import TrainingParts, steps_per_epoch
    from jala_ds.train.zero_ema import ShardedEMA
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    cfg, train_cfg = plan.cfg, plan.cfg.train
    if os.environ.get("LOCAL_RANK", "0") == "0":  # once per node; other jobs' loaders on the node keep theirs
        remove_orphaned_streaming_memory()
    tokenizer = load_text_tokenizer(cfg.model.pretrained, cfg.model.arch)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    with model_init_context(plan.ds_config):
        model = build_policy_model(cfg, vocab, cfg.posttrain.init)
    loader = build_robot_loader(cfg, tokenizer, vocab, image_token_count(cfg.model), rank=rank, world_size=world_size)
    total_steps = train_cfg.max_steps or steps_per_epoch(len(loader), train_cfg.grad_accum_steps)
    engine = build_engine(model, plan.ds_config, train_cfg, total_steps)
    ema = ShardedEMA(engine.module, model.ema_pairs(), cfg.model.ema_tau)  # no pairs: a no-op the loop can call
    # Every rank built the model from the same seed (ZeRO-3 partitions identical weights); from here on torch's
    # generator only draws flow-matching times and noise, which should differ between data-parallel ranks.
    # Checkpoints carry each rank's generator state, so a resumed run draws what it would have.
    torch.manual_seed(train_cfg.seed + 1 + rank)
    return TrainingParts(engine=engine, ema=ema, loader=loader, total_steps=total_steps, losses=("loss",),
                         checkpoint_files=tuple(Path(cfg.robot.mds_dir) / name for name in POLICY_FILES))


def posttrain(plan: RunPlan) -> None:
    from jala_ds.train.loop import train

    train(plan, build_posttraining)
