"""``jala token-predictor label``: a copy of the corpus whose video-only clips carry predicted motion tokens.

    report = pseudo_label_corpus(cfg, "runs/token_predictor", "data/mds_tokens", "data/mds_pseudo")
    # {"clips": ..., "pseudo_labelled_clips": ..., "pseudo_labelled_chunks": ..., "subsets": {...}, ...}

The second half of the paper's "JALA w/o latent" baseline. Every video-only clip of ``<src>/lab`` and
``<src>/wild`` gets, for each hand that ``data.video_only_hands`` gives such a clip, the predictor's most likely
codes for each chunk from its boundary frames, in ``left_tokens``/``right_tokens``, and ``labeled=1``: the
pretraining loader then builds a labelled document from it (hybrid masking, MCP labels), as it does for a lab
clip. Labelled clips keep their codes: stored ones are copied, otherwise the recipe's motion tokenizer encodes
their poses, so the copy is self-contained. The copy records that tokenizer (``jala_ds.data.corpus_provenance``);
labelling refuses a predictor trained on another tokenizer's codes, and a source tokenized by another. The held-out
clips are copied without pseudo labels: evaluation scores against real poses only. Pretrain on the copy with
``model.align=false model.decoupled_ema=false`` (docs/method.md). Under torchrun each rank labels its share of every
subset on its own GPU (``torchrun --nproc_per_node 8 $(which jala) token-predictor label ...``).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jala_ds.config import JalaConfig
from jala_ds.data.corpus_provenance import (
    PSEUDO_LABEL_BUILD,
    check_chunk_frames,
    check_stored_codes,
    tokenizer_fingerprint,
)
from jala_ds.data.mds_pieces import PIECE_CLIPS, RANKS_WAIT, content_sha256
from jala_ds.data.motion_tokens import MotionTokenizer, build_motion_tokenizer
from jala_ds.data.schema import HANDS, SUBSETS, TOKEN_COLUMNS, array_bytes
from jala_ds.motion.chunk_pairs import boundary_frames
from jala_ds.motion.corpus_copy import copy_corpus
from jala_ds.motion.corpus_tokenize import tokenize_records
from jala_ds.motion.token_predictor import ActionTokenPredictor, load_token_predictor, shape_of
from jala_ds.torchrun_group import torchrun_ranks

CLIPS_PER_BLOCK = 64
"""Clips read, and their chunks predicted, together."""


@torch.no_grad()
def predicted_codes(model: ActionTokenPredictor, clips: list[torch.Tensor], hands: list[int], batch: int,
                    device: torch.device) -> list[np.ndarray]:
    """For each clip's uint8 boundary frames ``[n + 1, 3, s, s]``, the most likely codes of its ``n`` chunks for each
    hand in ``hands`` in turn: int32 ``[len(hands) * n, tokens_per_chunk]``. Every frame goes through the encoder
    once, ``batch`` frames or pairs per forward pass."""
    frames = torch.cat(clips)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        features = torch.cat([model.visual_encoder(frames[i:i + batch].to(device))
                              for i in range(0, len(frames), batch)])
        pairs, hand = [], []
        for clip in torch.split(features, [len(c) for c in clips]):
            pairs.append(torch.stack([clip[:-1], clip[1:]], dim=1).repeat(len(hands), 1, 1, 1))
            hand.append(torch.tensor(hands, device=device).repeat_interleave(len(clip) - 1))
        pairs, hand = torch.cat(pairs), torch.cat(hand)
        codes = torch.cat([model.codes(model.logits(pairs[i:i + batch], hand[i:i + batch]))
                           for i in range(0, len(pairs), batch)])
    return [c.numpy().astype(np.int32) for c in torch.split(codes.cpu(), [len(hands) * (len(c) - 1) for c in clips])]


def pseudo_label_corpus(cfg: JalaConfig, predictor_path: str | Path, src_mds: str | Path, out_mds: str | Path,
                        device: str = "cpu", *, resume: bool = False, overwrite: bool = False,
                        piece_clips: int = PIECE_CLIPS) -> dict[str, Any]:
    """Copy ``src_mds`` to ``out_mds`` with the video-only training clips pseudo-labelled, this rank's share of it
    under torchrun (``device`` ``cuda`` is the rank's GPU); return counts, the same on every rank. ``resume``
    finishes a copy that stopped part-way (``jala_ds.motion.corpus_copy``)."""
    check_chunk_frames(src_mds, cfg.data.chunk_frames)
    check_stored_codes(src_mds, cfg.motion_tokenizer, recipe_key="--src")
    with torchrun_ranks(RANKS_WAIT) as ranks:
        torch_device = ranks.on(device)
        tokenizer = build_motion_tokenizer(cfg.motion_tokenizer)   # a missing checkpoint is named here
        fingerprint = tokenizer_fingerprint(cfg.motion_tokenizer)
        model = load_token_predictor(predictor_path, expect=shape_of(cfg), tokenizer=fingerprint).to(torch_device)
        hands = [0, 1] if cfg.data.video_only_hands == "both" else [1]
        label = partial(labelled_columns, model, tokenizer, hands, cfg.token_predictor.label_batch_chunks,
                        torch_device)
        inputs = {"predictor": content_sha256(predictor_path), "video_only_hands": cfg.data.video_only_hands,
                  "motion_tokenizer": dataclasses.asdict(cfg.motion_tokenizer), "tokenizer": fingerprint}
        report = copy_corpus(src_mds, out_mds, TOKEN_COLUMNS, label, block=CLIPS_PER_BLOCK, desc=PSEUDO_LABEL_BUILD,
                             counted=("pseudo_labelled_clips", "pseudo_labelled_chunks"), inputs=inputs, ranks=ranks,
                             piece_clips=piece_clips, resume=resume, overwrite=overwrite)
    report["hands"] = [HANDS[h] for h in hands]
    if ranks.rank == 0:
        print(f"pseudo-labelled {report['pseudo_labelled_clips']} video-only clips ({report['pseudo_labelled_chunks']}"
              f" chunks, hands: {', '.join(report['hands'])}) of {report['clips']} into {out_mds} at "
              f"{report['clips_per_s']:.1f} clips/s on {ranks.world_size} rank(s)")
    return report


def labelled_columns(model: ActionTokenPredictor, tokenizer: MotionTokenizer, hands: list[int], batch: int,
                     device: torch.device, subset: str, records: list[dict[str, Any]],
                     tally: Counter) -> list[dict[str, Any]]:
    """The token columns (and ``labeled``) that a block of ``subset``'s records gets in the copy."""
    # A labelled clip keeps its stored codes (copied with the other columns) or gets them encoded here.
    stored = all(name in record for record in records for name in TOKEN_COLUMNS)
    columns: list[dict[str, Any]] = [{} for _ in records] if stored else tokenize_records(tokenizer, records)
    unlabelled = [i for i, record in enumerate(records)
                  if subset in SUBSETS and not record["labeled"] and len(record["frame_index"]) > 1]
    clips = [boundary_frames(records[i], model.shape.image_size) for i in unlabelled]
    predicted = predicted_codes(model, clips, hands, batch, device) if clips else []
    for i, codes in zip(unlabelled, predicted):
        chunks = len(codes) // len(hands)
        tokens = {f"{hand}_tokens": array_bytes(np.zeros((0, model.shape.tokens_per_chunk)), "<i4")
                  for hand in HANDS}
        for j, h in enumerate(hands):
            tokens[f"{HANDS[h]}_tokens"] = array_bytes(codes[j * chunks:(j + 1) * chunks], "<i4")
        columns[i] = {**tokens, "labeled": 1}
        tally["pseudo_labelled_clips"] += 1
        tally["pseudo_labelled_chunks"] += len(codes)
    return columns
