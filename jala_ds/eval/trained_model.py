"""A trained JALA model for evaluation, from either thing training leaves behind, in one process:

    trained = load_trained_model("demo_out/run")       # a run's train.out_dir: its latest checkpoint, merged
    trained = load_trained_model("demo_out/export")    # a `jala export` folder: backbone + jala_heads.safetensors

A run folder also gives the step and the MLflow run id the checkpoint recorded, so evaluation results can be
linked to the training run they judge; an export carries neither. ``overrides`` change the recipe the model is
rebuilt from (``model.attention=reference`` to evaluate a Triton-trained run on a CPU, say).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from jala_ds.config import JalaConfig, load_config
from jala_ds.model.jala_model import JalaModel
from jala_ds.vocab import MotionVocab

RUN_RECIPE = "config.yaml"


@dataclass
class TrainedModel:
    cfg: JalaConfig
    """The recipe the model was trained with (plus the overrides given)."""
    model: JalaModel
    """In eval mode, on ``device``."""
    tokenizer: PreTrainedTokenizerBase
    vocab: MotionVocab
    device: torch.device
    step: int | None
    """Optimiser step of the checkpoint; None for an export."""
    mlflow_run_id: str | None
    """The training run's MLflow run id, when the checkpoint recorded one."""
    source: Path


def load_trained_model(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                       device: str | torch.device | None = None) -> TrainedModel:
    """Rebuild the model of a run folder (or one of its ``checkpoints/step_N`` folders) or of an export."""
    from jala_ds.model.build import build_model
    from jala_ds.model.policy_model import ACTION_HEAD_PREFIX
    from jala_ds.train.checkpoint_layout import TAG_PATTERN, latest_checkpoint
    from jala_ds.train.export import HEADS_FILE, RECIPE_FILE, load_heads, merged_state_dict
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    path = Path(path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if (path / RECIPE_FILE).is_file():
        recipe, checkpoint = path / RECIPE_FILE, None
    elif TAG_PATTERN.match(path.name) and (path.parent.parent / RUN_RECIPE).is_file():
        recipe, checkpoint = path.parent.parent / RUN_RECIPE, path
    elif (path / RUN_RECIPE).is_file() and latest_checkpoint(path) is not None:
        recipe, checkpoint = path / RUN_RECIPE, latest_checkpoint(path)
    else:
        raise FileNotFoundError(f"{path} is neither a training run with a checkpoint ({RUN_RECIPE} and "
                                f"checkpoints/latest) nor a `jala export` folder ({RECIPE_FILE}): pass the run's "
                                "train.out_dir or the --out folder of `jala export`")
    cfg = load_config(recipe, overrides)
    if checkpoint is None:  # the export's recipe names the folder it was written to: it may have moved since
        cfg.model.pretrained = str(path.resolve())
    state = None if checkpoint is None else merged_state_dict(checkpoint)
    names = heads_names(path / HEADS_FILE) if state is None else state.keys()
    if any(name.startswith(ACTION_HEAD_PREFIX) for name in names):  # it would not load into a JalaModel
        raise ValueError(f"{path} is a post-trained robot policy (it has an action head), not a pretrained JALA: "
                         f"`jala eval` scores pretraining runs and their exports; run the policy with "
                         f"`jala serve --ckpt {path}`")
    tokenizer = load_text_tokenizer(cfg.model.pretrained, cfg.model.arch)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    model = build_model(cfg, vocab)
    run_state: dict[str, Any] = {}
    if state is None:
        load_heads(model, path)
    else:
        model.load_state_dict(state, strict=True)
        run_state = read_run_state(checkpoint)
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.train.dtype == "bf16" else torch.float32
    model.to(device=device, dtype=dtype).eval()
    return TrainedModel(cfg=cfg, model=model, tokenizer=tokenizer, vocab=vocab, device=device,
                        step=run_state.get("step"), mlflow_run_id=run_state.get("mlflow_run_id"), source=path)


def heads_names(heads_file: Path) -> list[str]:
    """The tensor names in an export's heads file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    if not heads_file.is_file():
        raise FileNotFoundError(f"{heads_file} is missing: re-export the run with `jala export`")
    with safe_open(str(heads_file), framework="pt") as heads:
        return list(heads.keys())


def read_run_state(checkpoint: Path) -> dict[str, Any]:
    """The run state training saved as DeepSpeed client state (step, config, MLflow run id) in the model file."""
    from jala_ds.train.safe_checkpoint_engine import load_plain

    model_files = sorted(checkpoint.glob("*model_states.pt"))
    if not model_files:
        raise FileNotFoundError(f"{checkpoint} holds no *model_states.pt: is the checkpoint complete?")
    state = load_plain(str(model_files[0]))
    return {key: state[key] for key in ("step", "mlflow_run_id") if key in state}
