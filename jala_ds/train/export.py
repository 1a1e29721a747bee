"""``jala export``: a run's latest checkpoint as a Hugging Face folder, in one process, with no GPU.

The ZeRO shards are merged offline by DeepSpeed's ``zero_to_fp32`` (after every file passed
``torch.load(weights_only=True)``, so nothing but tensors and plain values is ever unpickled), loaded into a
``JalaModel`` built from the run's resolved recipe, and written as:

    config.json, model.safetensors        the InternVL3 backbone: InternVLForConditionalGeneration.from_pretrained
    tokenizer files                       the text tokenizer with the motion vocabulary (<mot>, </mot>, [MASK], codes)
    jala_heads.safetensors                LAP, LSP and the frozen frame encoder, under their JalaModel names
                                          (a post-training run: LSP, frame encoder and the action head)
    jala_recipe.yaml                      the recipe, with model.pretrained pointing at this folder
    norm_stats.json, robot_meta.json      a post-training run only: the statistics its checkpoint carries

so ``build_model(load_config(out / "jala_recipe.yaml"), vocab)`` rebuilds the backbone from the folder and
``load_heads`` completes it. JalaModel has no ``save_pretrained`` of its own (yet): this is the split it gets.

The folder is written beside ``out`` and takes its place only once complete (``written_whole``): a failed export
leaves the previous one, and ``--overwrite`` replaces only an earlier export, never a folder of other things.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from jala_ds.config import JalaConfig, load_config
from jala_ds.data.robot_norm import NORM_STATS_FILE
from jala_ds.data.robot_schema import ROBOT_META_FILE
from jala_ds.motion.checkpoint_folder import written_whole
from jala_ds.train.checkpoint_layout import latest_checkpoint
from jala_ds.train.safe_checkpoint_engine import load_plain

HEADS_FILE = "jala_heads.safetensors"
RECIPE_FILE = "jala_recipe.yaml"
BACKBONE_PREFIX = "backbone."
POLICY_FILES = (NORM_STATS_FILE, ROBOT_META_FILE)
"""What a post-training checkpoint carries besides weights (``posttrain.py``); exports copy them."""


def export_run(run_dir: str | Path, out: str | Path | None = None, *, dtype: str = "bf16",
               overwrite: bool = False) -> Path:
    """The run's latest checkpoint as a Hugging Face folder at ``out`` (default ``<run>/export``). A folder that
    already holds files is refused unless it is an earlier export and ``overwrite`` is set: files of another export
    left next to this one (a policy's statistics beside pretraining weights) would make it load as something it is
    not. The earlier export is replaced only once the new one is complete."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "export"
    refuse_to_replace(out, overwrite)
    # The attention backend does not change the weights; the reference one imports anywhere (no Triton needed).
    cfg, tokenizer, model, checkpoint = load_run(run_dir, ["model.attention=reference"])
    model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)

    with written_whole(out) as staging:
        model.backbone.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        heads = {name: t.contiguous() for name, t in model.state_dict().items()
                 if not name.startswith(BACKBONE_PREFIX)}
        save_file(heads, str(staging / HEADS_FILE))
        for name in POLICY_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, staging / name)
        cfg.model.pretrained = str(out.resolve())
        cfg.posttrain.init = None  # the export holds every weight
        cfg.dump(staging / RECIPE_FILE)
    return out


def refuse_to_replace(out: Path, overwrite: bool) -> None:
    """Refuse, before anything loads, an ``out`` that is a file, that holds files without ``overwrite``, or that
    holds anything but an earlier export even with it: ``--out`` given the run's own folder (or any other) would
    otherwise be deleted, checkpoints and all."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder: choose another --out")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"--out {out} already holds files: choose an empty folder, or pass --overwrite to "
                              "replace its contents")
    if not any((out / name).is_file() for name in (HEADS_FILE, RECIPE_FILE)):
        raise FileExistsError(f"--out {out} holds files that are not a `jala export` (no {HEADS_FILE}), which "
                              "--overwrite would delete: choose a new or empty folder for --out")


def load_run(run_dir: Path, overrides: list[str] = ()) -> tuple[JalaConfig, Any, torch.nn.Module, Path]:
    """(recipe, tokenizer, model with the latest checkpoint's weights, checkpoint folder) of a training run:
    a ``JalaModel`` for pretraining, a ``JalaPolicyModel`` when the checkpoint holds an action head."""
    from jala_ds.model.build import build_model
    from jala_ds.model.policy_model import ACTION_HEAD_PREFIX, build_policy_model
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    recipe = run_dir / "config.yaml"
    checkpoint = latest_checkpoint(run_dir)
    if not recipe.is_file() or checkpoint is None:
        raise FileNotFoundError(f"{run_dir} is not a finished run (no config.yaml or checkpoints/latest): pass the "
                                "train.out_dir of a run that saved a checkpoint")
    cfg = load_config(recipe, overrides)
    tokenizer = load_text_tokenizer(cfg.model.pretrained, cfg.model.arch)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    state = merged_state_dict(checkpoint)
    is_policy = any(name.startswith(ACTION_HEAD_PREFIX) for name in state)
    model = build_policy_model(cfg, vocab, init=None) if is_policy else build_model(cfg, vocab)
    model.load_state_dict(state, strict=True)
    return cfg, tokenizer, model, checkpoint


def merged_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint folder, whatever the ZeRO stage and world size that saved it."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model_files = sorted(checkpoint.glob("*model_states.pt"))
    if not model_files:  # `latest` names a folder that is gone, or a save that never finished
        raise FileNotFoundError(f"checkpoint {checkpoint} holds no *model_states.pt (missing or incomplete): write "
                                f"the tag of a complete step_N folder into {checkpoint.parent / 'latest'}")
    for path in checkpoint.glob("*.pt"):
        torch.load(path, map_location="cpu", weights_only=True)  # refuse anything that is not plain data
    if not any(checkpoint.glob("*optim_states.pt")):  # no ZeRO: the model file holds every weight
        model_file = model_files[0]
        return {name: t.float() for name, t in load_plain(str(model_file))["module"].items()}
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)


def load_heads(model: torch.nn.Module, export_dir: str | Path) -> None:
    """Put an export's LAP, LSP and frame-encoder weights into a JalaModel built from its ``jala_recipe.yaml``."""
    heads = load_file(str(Path(export_dir) / HEADS_FILE))
    missing, unexpected = model.load_state_dict(heads, strict=False)
    wrong = [name for name in missing if not name.startswith(BACKBONE_PREFIX)] + list(unexpected)
    if wrong:
        raise ValueError(f"{export_dir}/{HEADS_FILE} does not fit this model ({', '.join(wrong[:5])}): build the "
                         f"model from the export's {RECIPE_FILE}")
