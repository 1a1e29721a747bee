"""Robot observations -> the pretraining batch (docs/architecture.md section 4) plus normalised state and actions.

Post-training's loader and the policy build their batches here, so training and inference see the same tokens,
pixels and normalisation. One observation is one document:

    <img> <IMG_CONTEXT> x n </img>  (per camera)   instruction   <mot> [MASK] x tokens_per_chunk </mot>

The chunk is all ``[MASK]`` with no label (so no MCP loss; ``chunk_labeled`` False); ``chunk_hand`` is
``robot.hand``; its frame pair is (o_t, o_t) of the first camera, which is what LSP reads. The backbone's
predictive embeddings at that chunk condition the action head. Extra batch keys: ``state`` float32 ``[B, S]``,
and in training ``actions`` float32 ``[B, H, A]`` and ``action_valid`` bool ``[B, H]``, normalised with the
dataset's ``norm_stats.json``.

    batch = robot_batch([RobotSample(images, state, None, None, "pick up the cup")], cfg, tok, vocab, n_img, norm)
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from jala_ds.config import JalaConfig
from jala_ds.data.collate import collate
from jala_ds.data.example import Example
from jala_ds.data.frames import resized
from jala_ds.data.robot_norm import NormStats
from jala_ds.data.robot_schema import RobotSample, robot_sample
from jala_ds.data.sequence import image_block, instruction_tokens, masked_chunk_document
from jala_ds.vocab import MotionVocab


class RobotExamples:
    """Builds :class:`Example` s from robot samples (live ones) or robot MDS records (the loader's)."""

    def __init__(self, cfg: JalaConfig, tokenizer: PreTrainedTokenizerBase, vocab: MotionVocab, n_image_tokens: int,
                 norm: NormStats, *, camera_positions: list[int] | None = None) -> None:
        if norm.mode != cfg.robot.norm_mode:
            raise ValueError(f"the normalisation statistics are for mode {norm.mode!r} but robot.norm_mode is "
                             f"{cfg.robot.norm_mode!r}: set robot.norm_mode={norm.mode}, or re-convert the dataset")
        self.cfg, self.tokenizer, self.vocab, self.norm = cfg, tokenizer, vocab, norm
        self.image_block = image_block(tokenizer, vocab, n_image_tokens)
        self.tokens_per_chunk = cfg.motion_tokenizer.tokens_per_chunk
        self.camera_positions = camera_positions
        """Which stored cameras a record's sample keeps, in order (None: all)."""

    def max_tokens(self, cameras: int) -> int:
        """The longest document an observation with ``cameras`` images can make."""
        return cameras * len(self.image_block) + self.cfg.robot.max_text_tokens + self.tokens_per_chunk + 2

    def build(self, record: Mapping, sample_index: int, epoch: int) -> Example:
        """A stored record's example (the loader's items); the same whatever the epoch: nothing is random."""
        sample = robot_sample(record, self.cfg.robot.action_horizon)
        if self.camera_positions is not None:
            sample = RobotSample(images=sample.images[self.camera_positions], state=sample.state,
                                 actions=sample.actions, action_valid=sample.action_valid,
                                 instruction=sample.instruction, sample_id=sample.sample_id)
        return self.from_sample(sample)

    def from_sample(self, sample: RobotSample) -> Example:
        if sample.images.ndim != 4 or sample.images.shape[-1] != 3 or sample.images.dtype != np.uint8:
            raise ValueError(f"observation {sample.sample_id!r}: images must be uint8 [cameras, height, width, 3], "
                             f"got {sample.images.dtype} {tuple(sample.images.shape)}")
        if sample.state.shape != (self.norm.state.dim,):
            raise ValueError(f"observation {sample.sample_id!r}: state has shape {tuple(sample.state.shape)}; the "
                             f"dataset's normalisation statistics are for a state of {self.norm.state.dim} dimensions")
        model = self.cfg.model
        images = torch.from_numpy(np.ascontiguousarray(sample.images)).permute(0, 3, 1, 2)  # [n_cam, 3, h, w]
        first = resized(images[:1], model.visual_encoder_image_size)
        text = instruction_tokens(self.tokenizer, sample.instruction, self.cfg.robot.max_text_tokens)
        document = masked_chunk_document(sample_id=sample.sample_id, image_block=self.image_block, images=len(images),
                                         text=text, hand=self.cfg.robot.hand, tokens_per_chunk=self.tokens_per_chunk,
                                         vocab=self.vocab, bidirectional=self.cfg.model.objective == "mcp")
        extras = {"state": np.asarray(self.norm.normalize_state(sample.state.astype(np.float32)), np.float32)}
        if sample.actions is not None:
            if sample.actions.shape[-1] != self.norm.action.dim:
                raise ValueError(f"sample {sample.sample_id!r}: actions have {sample.actions.shape[-1]} dimensions, "
                                 f"the normalisation statistics {self.norm.action.dim}")
            extras["actions"] = np.asarray(self.norm.normalize_action(sample.actions.astype(np.float32)), np.float32)
            extras["action_valid"] = np.asarray(sample.action_valid, bool)
        return Example(document, resized(images, model.image_size), first, torch.zeros((1, 2), dtype=torch.int64), extras)


def robot_batch(samples: list[RobotSample], cfg: JalaConfig, tokenizer: PreTrainedTokenizerBase, vocab: MotionVocab,
                n_image_tokens: int, norm: NormStats) -> dict:
    """The batch of ``samples`` (live observations: ``actions`` None; or stored ones), one row per sample."""
    if not samples:
        raise ValueError("robot_batch needs at least one observation")
    with_actions = {sample.actions is not None for sample in samples}
    if len(with_actions) > 1:
        raise ValueError("some observations carry actions and some do not: batch them separately")
    cameras = {len(sample.images) for sample in samples}
    wanted = cfg.robot.cameras
    if len(cameras) > 1 or (wanted is not None and cameras != {len(wanted)}):
        raise ValueError(f"observations have {sorted(cameras)} camera images; the model was trained on "
                         f"{len(wanted) if wanted else 'the same number of'} cameras "
                         f"({', '.join(wanted) if wanted else 'robot_meta.json lists them'}), in that order")
    examples = RobotExamples(cfg, tokenizer, vocab, n_image_tokens, norm)
    return collate([examples.from_sample(sample) for sample in samples], pack=False,
                   max_tokens=examples.max_tokens(cameras.pop()), vocab=vocab)
