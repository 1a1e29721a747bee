"""The action-token predictor of the paper's "JALA w/o latent" baseline: a chunk's boundary frames -> its motion tokens.

The paper trains "an action-token predictor mapping boundary frames to motion chunk tokens" on labelled clips and
writes its predictions into the video-only clips as explicit pseudo labels, in place of latent actions. Ours is
LAP's architecture with a classifier: the frozen visual encoder reads (o_t, o_t+k), a ``Perceiver`` with one
query per token position of a hand's chunk reads the pair (its two-hand head picks the hand), and a linear layer
scores the codes of that position's residual stage. A position holds one stage's code, and stage ``r`` owns codes
``[r * K, (r + 1) * K)`` of its part (the layout GRVQ and binning share, docs/architecture.md section 3): any other
code is one the tokenizer cannot decode, so the classifier never offers it.

    predictor = build_token_predictor(cfg)
    logits = predictor(frames, hand)        # frames uint8 [C, 2, 3, s, s], hand [C] -> [C, T, K]
    codes = predictor.predict(frames, hand) # int64 [C, T], each in its position's stage range of [0, vocab_per_part)

A checkpoint folder holds ``model.safetensors`` (every weight, the frozen encoder's included, so a random test
encoder reloads as trained), ``visual_encoder/config.json`` and ``config.json`` (shapes, token layout, training).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from jala_ds.config import JalaConfig
from jala_ds.model.perceiver import Perceiver
from jala_ds.model.visual_encoder import FrozenFrameEncoder, build_visual_encoder
from jala_ds.motion.checkpoint_folder import folder_config, written_whole

CHECKPOINT_FORMAT = "jala-token-predictor"
FORMAT_VERSION = 2
"""Version 2 (2026-11-28): a K-way classifier per position, over its stage's codes (version 1 scored a part's
whole vocabulary, and could pick codes of another stage)."""


@dataclasses.dataclass(frozen=True)
class PredictorShape:
    """What a checkpoint must agree on with the recipe that uses it."""
    tokens_per_chunk: int
    vocab_per_part: int
    codes_per_stage: int
    """K: the codes of one residual stage, the classes at each position."""
    chunk_frames: int
    image_size: int
    """Side of the frames the visual encoder reads (``model.visual_encoder_image_size``)."""
    width: int
    heads: int
    layers: int


class ActionTokenPredictor(nn.Module):
    def __init__(self, encoder: FrozenFrameEncoder, shape: PredictorShape):
        super().__init__()
        self.shape = shape
        self.visual_encoder = encoder
        self.perceiver = Perceiver(feature_dim=encoder.hidden_size, width=shape.width, heads=shape.heads,
                                   layers=shape.layers, queries=shape.tokens_per_chunk, out_dim=shape.width)
        self.classifier = nn.Linear(shape.width, shape.codes_per_stage)
        # The first code of each position's stage: a part's tokens run (step, group, stage), stage fastest.
        stages = shape.vocab_per_part // shape.codes_per_stage
        self.register_buffer("stage_offsets", torch.arange(shape.tokens_per_chunk) % stages * shape.codes_per_stage,
                             persistent=False)

    def forward(self, frames: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        """uint8 ``frames [C, 2, 3, s, s]``, ``hand [C]`` -> logits ``[C, T, codes_per_stage]``:
        class ``k`` at position ``t`` is code ``stage_offsets[t] + k``."""
        return self.logits(self.visual_encoder(frames), hand)

    def logits(self, features: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        """The same from the encoder's features of the frame pairs, ``[C, 2, L, D]``: labelling encodes each
        stored frame once, where a clip's pairs share frames and both hands share each pair."""
        return self.classifier(self.perceiver(features, hand))

    @torch.no_grad()
    def predict(self, frames: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        """The most likely code at each position: int64 ``[C, T]``."""
        return self.codes(self.forward(frames, hand))

    def codes(self, logits: torch.Tensor) -> torch.Tensor:
        """The most likely code at each position of ``logits [..., T, K]``: int64 ``[..., T]``."""
        return logits.argmax(-1) + self.stage_offsets

    def classes(self, codes: torch.Tensor) -> torch.Tensor:
        """Each code of ``codes [..., T]`` as its class at its position, the cross-entropy target; codes outside
        their position's stage are refused (they come from another tokenizer layout)."""
        classes = codes - self.stage_offsets
        if bool(((classes < 0) | (classes >= self.shape.codes_per_stage)).any()):
            raise ValueError("motion codes outside their position's stage range: the corpus was tokenized with "
                             "another motion_tokenizer layout; set motion_tokenizer.stages and codes_per_stage to "
                             "the corpus's, or re-tokenize it")
        return classes


def shape_of(cfg: JalaConfig) -> PredictorShape:
    return PredictorShape(tokens_per_chunk=cfg.motion_tokenizer.tokens_per_chunk,
                          vocab_per_part=cfg.motion_tokenizer.vocab_per_part,
                          codes_per_stage=cfg.motion_tokenizer.codes_per_stage, chunk_frames=cfg.data.chunk_frames,
                          image_size=cfg.model.visual_encoder_image_size, width=cfg.model.perceiver_width,
                          heads=cfg.model.perceiver_heads, layers=cfg.model.perceiver_layers)


def build_token_predictor(cfg: JalaConfig) -> ActionTokenPredictor:
    """A new predictor for the recipe: its visual encoder (loaded, or random tiny) and a fresh perceiver."""
    return ActionTokenPredictor(build_visual_encoder(cfg.model), shape_of(cfg))


def default_checkpoint(cfg: JalaConfig) -> Path:
    return Path(cfg.token_predictor.checkpoint or Path(cfg.train.out_dir) / "token_predictor")


def save_token_predictor(model: ActionTokenPredictor, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write the checkpoint folder; an existing one is replaced only once the new one is complete."""
    config = {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "encoder_kind": model.visual_encoder.kind,
              "shape": dataclasses.asdict(model.shape), "training": info}
    with written_whole(out_dir) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(staging / "model.safetensors"))
        model.visual_encoder.encoder.config.save_pretrained(staging / "visual_encoder")
        (staging / "config.json").write_text(json.dumps(config, indent=2))
    return Path(out_dir)


def load_token_predictor(path: str | Path, expect: PredictorShape | None = None,
                         tokenizer: str | None = None) -> ActionTokenPredictor:
    """Load a folder written by ``jala token-predictor train``, in eval mode on the CPU. ``expect``: the recipe's
    shape; a checkpoint whose token layout or frame size differs is refused, naming the key to change.
    ``tokenizer``: the recipe's tokenizer fingerprint (``corpus_provenance``); a predictor trained on another
    tokenizer's codes is refused (one saved before the fingerprint was recorded is not checked)."""
    path = Path(path)
    config = folder_config(path, CHECKPOINT_FORMAT, FORMAT_VERSION, "an action-token predictor",
                           "train one with `jala token-predictor train --recipe R --out DIR`")
    shape = PredictorShape(**config["shape"])
    if expect is not None:
        keys = {"tokens_per_chunk": "motion_tokenizer (its layout)", "vocab_per_part": "motion_tokenizer (its layout)",
                "codes_per_stage": "motion_tokenizer.codes_per_stage",
                "chunk_frames": "data.chunk_frames", "image_size": "model.visual_encoder_image_size"}
        for field, key in keys.items():
            if getattr(expect, field) != getattr(shape, field):
                raise ValueError(f"the predictor {path} was trained with {field}={getattr(shape, field)}, the recipe "
                                 f"has {getattr(expect, field)}: set {key} to match, or train a predictor for "
                                 "this recipe")
    trained_on = config["training"].get("tokenizer")
    if tokenizer is not None and trained_on is not None and trained_on != tokenizer:
        raise ValueError(f"the predictor {path} was trained on another motion tokenizer's codes than the recipe's: "
                         "set motion_tokenizer (kind and checkpoint) to the one it was trained with, or train a "
                         "predictor for this recipe")
    encoder = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(path / "visual_encoder"))
    model = ActionTokenPredictor(FrozenFrameEncoder(encoder, config["encoder_kind"]), shape)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval()
