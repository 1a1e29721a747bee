"""JalaPolicyModel: a pretrained JALA backbone feeding a flow-matching DiT action head (paper sec. 4.4, eq. 7).

One post-training forward, top to bottom:

1. the robot batch (``jala_ds.data.robot_loader``) is a pretraining sequence with one motion chunk per sample,
   every token ``[MASK]``: ``<img> cameras </img> instruction <mot> [MASK] x T </mot>``;
2. ``JalaModel.hidden_states`` runs it exactly as in pretraining (LSP's latent states of the first camera's
   (o_t, o_t) on the chunk's positions, chunk-mask attention), so the output of layer ``model.align_layer`` at
   the chunk's positions is the predictive embedding h ``[B, T, d]`` the pretraining aligned with latent actions;
   the layers above it are not run at all (``stop_at_align_layer``): nothing here reads them;
3. the DiT head cross-attends to h, self-attends over the proprioceptive state and the noised action chunk, and
   regresses the flow-matching velocity: ``loss = masked MSE(v(x_t, t | h, state), action - noise)``.

LAP is not built (no latent actions are needed after pretraining). Which parts train is ``posttrain.trainable``
(``set_trainable``); layers above ``align_layer``, the final norm and the LM head never run here, so they stay
frozen whatever the setting.

    model = build_policy_model(cfg, vocab, init="runs/pretrain/export")
    out = model(batch); out.loss.backward()
    actions = model.predict_actions(batch, steps=10)      # [B, H, A], normalised
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from jala_ds.config import JalaConfig
from jala_ds.model.action_head import FlowMatchingHead
from jala_ds.model.jala_model import JalaModel
from jala_ds.model.zero_gather import gathered_for_edit
from jala_ds.train.posttrain_config import TRAINABLE_PARTS
from jala_ds.vocab import MotionVocab

ACTION_HEAD_PREFIX = "action_head."
DROPPED_PREFIX = "lap."
"""LAP's weights in a pretrained checkpoint: not needed after pretraining, skipped on load."""


class PolicyOutput(NamedTuple):
    """What one post-training forward returns (a NamedTuple so ZeRO-3's hooks see the tensors)."""

    loss: torch.Tensor
    """Flow-matching loss: MSE between predicted and target velocity over the valid action entries."""
    predictive: torch.Tensor
    """Predictive embeddings h ``[B, T, d]`` the head was conditioned on."""


class JalaPolicyModel(JalaModel):
    """JalaModel without LAP, plus ``action_head``. Parameter names: ``backbone.*``, ``visual_encoder.*``,
    ``lsp.*`` as in pretraining (so pretrained weights load by name), and ``action_head.*``."""

    def __init__(self, jala: JalaModel, action_head: FlowMatchingHead):
        super().__init__(jala.cfg, jala.backbone, jala.tokens_per_chunk, jala.vocab_size,
                         visual_encoder=jala.visual_encoder, lap=None, lsp=jala.lsp)
        self.action_head = action_head

    def ema_pairs(self) -> list[tuple[str, str]]:
        return []  # the decoupled EMA pairs LAP with LSP; without LAP there is nothing to follow

    def condition(self, batch: dict) -> torch.Tensor:
        """Predictive embeddings ``[B, T, d]``: one all-[MASK] chunk per sample, chunk c belongs to sample c."""
        _, predictive = self.hidden_states(batch, self.encode_frames(batch), stop_at_align_layer=True)
        batch_size = batch["state"].shape[0]
        if predictive.shape[0] != batch_size:
            raise ValueError(f"the batch has {predictive.shape[0]} motion chunks for {batch_size} samples: a robot "
                             "batch holds exactly one chunk per sample (build it with robot_batch)")
        return predictive

    def forward(self, batch: dict) -> PolicyOutput:
        cond = self.condition(batch)
        # The target stays as given (float32 from the trainer): the head computes the flow in float32.
        loss = self.action_head.loss(cond, batch["state"].to(cond.dtype), batch["actions"], batch["action_valid"])
        return PolicyOutput(loss=loss, predictive=cond)

    @torch.no_grad()
    def predict_actions(self, batch: dict, steps: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Action chunks ``[B, H, A]`` in the normalised space, by forward Euler from noise (``steps`` or
        ``action_head.euler_steps``)."""
        cond = self.condition(batch)
        return self.action_head.sample(cond, batch["state"].to(cond.dtype), steps=steps, generator=generator)

    def part_parameters(self, part: str) -> Iterator[nn.Parameter]:
        """The parameters of one ``posttrain.trainable`` part."""
        backbone = self.backbone.model
        if part == "vision_tower":
            yield from backbone.vision_tower.parameters()
        elif part == "projector":
            yield from backbone.multi_modal_projector.parameters()
        elif part == "language_model":  # the layers that reach h: embedding and layers 1..align_layer
            yield from backbone.language_model.embed_tokens.parameters()
            for layer in backbone.language_model.layers[:self.cfg.align_layer]:
                yield from layer.parameters()
        elif part == "lsp":
            yield from self.lsp.parameters()
        elif part == "action_head":
            yield from self.action_head.parameters()
        else:
            raise ValueError(f"unknown trainable part '{part}': choose among {list(TRAINABLE_PARTS)}")

    def set_trainable(self, parts: list[str]) -> None:
        """Freeze everything, then unfreeze ``parts``."""
        self.requires_grad_(False)
        for part in parts:
            for param in self.part_parameters(part):
                param.requires_grad_(True)


def build_policy_model(cfg: JalaConfig, vocab: MotionVocab, init: str | Path | None) -> JalaPolicyModel:
    """The policy model of recipe ``cfg`` (call inside ``model_init_context`` under ZeRO-3).

    ``init`` is where the pretrained JALA comes from: a ``jala export`` folder (then ``cfg.model.pretrained``
    must be that folder, which ``posttrain_preflight.resolve_init`` arranges, and its heads file completes the
    model) or a pretraining run's ``train.out_dir`` (every weight from its latest checkpoint). None leaves the
    backbone as ``model.pretrained`` gives it and the perceiver at random (also how a saved policy is rebuilt
    before its own weights load).
    """
    from jala_ds.model.build import build_model

    jala_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, align=False, decoupled_ema=False))
    jala = build_model(jala_cfg, vocab)
    head = FlowMatchingHead(cfg.action_head, cond_dim=jala.backbone.config.text_config.hidden_size)
    model = JalaPolicyModel(jala, head)
    if init is not None:
        load_pretrained(model, Path(init))
    model.set_trainable(cfg.posttrain.trainable)
    return model


def load_pretrained(model: JalaPolicyModel, init: Path) -> None:
    """Copy a pretrained JALA's weights into ``model``, parameter by parameter (gathered under ZeRO-3, so only
    one full tensor at a time is materialised). LAP's weights are skipped; every other weight must fit."""
    from safetensors.torch import load_file

    from jala_ds.train.checkpoint_layout import latest_checkpoint
    from jala_ds.train.export import BACKBONE_PREFIX, HEADS_FILE, merged_state_dict

    params = {name: p for name, p in model.named_parameters() if not name.startswith(ACTION_HEAD_PREFIX)}
    if (init / HEADS_FILE).is_file():  # an export: the backbone came through model.pretrained
        state = load_file(str(init / HEADS_FILE))
        params = {name: p for name, p in params.items() if not name.startswith(BACKBONE_PREFIX)}
    elif (checkpoint := latest_checkpoint(init)) is not None:
        state = merged_state_dict(checkpoint)
    else:
        raise FileNotFoundError(f"posttrain.init={init} is neither a `jala export` folder ({HEADS_FILE}) nor a run "
                                "with checkpoints/latest: pass one of those")
    state = {name: t for name, t in state.items() if not name.startswith(DROPPED_PREFIX)}
    missing = sorted(params.keys() - state.keys())
    # A tied LM head is one parameter under two names: a run's state dict holds both, named_parameters() one.
    unexpected = sorted(state.keys() - dict(model.named_parameters(remove_duplicate=False)).keys())
    if missing or unexpected:
        raise ValueError(f"{init} does not fit the recipe's model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): use the model section the checkpoint was pretrained with")
    for name, param in params.items():
        with gathered_for_edit([param]), torch.no_grad():
            if param.shape != state[name].shape:
                raise ValueError(f"{init}: {name} has shape {tuple(state[name].shape)} but the recipe builds "
                                 f"{tuple(param.shape)}: use the model section the checkpoint was pretrained with")
            param.copy_(state[name])
