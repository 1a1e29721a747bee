"""Batches in the exact format of docs/architecture.md section 4, built without the data pipeline.

The model tests use them until ``jala_ds.data.collate`` lands; they follow the same contract: real token ids
from ``jala_ds/vocab.py``, the sequence layout ``<img> <IMG_CONTEXT> x n </img> instruction <mot> L1 </mot>
<mot> R1 </mot> ...``, hybrid masking for labelled samples and full masking for video-only ones, packed rows
with per-document positions, random uint8 images.

    cfg, vocab = tiny_setup()
    batch = make_batch(cfg, vocab, [[Doc()], [Doc(labeled=False), Doc(hands=(1,))]], seed=0)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jala_ds.config import JalaConfig, load_config
from jala_ds.data.batch_index import batch_index
from jala_ds.model.backbone import image_token_count
from jala_ds.vocab import IMG_END, IMG_START, MotionVocab, add_motion_vocab, byte_level_tokenizer

IGNORE = -100


@dataclass
class Doc:
    """One sample (document) of a row."""

    labeled: bool = True
    hands: tuple[int, ...] = (0, 1)
    """Motion streams, interleaved along time: 0 left, 1 right."""
    chunks: int = 2
    """Chunks per hand."""
    instruction: str = "pick up the cup"


def tiny_setup(*overrides: str) -> tuple[JalaConfig, MotionVocab]:
    """The tiny CPU recipe (with ``key=value`` overrides) and its vocabulary over the byte-level tokenizer."""
    cfg = load_config("tiny_cpu", list(overrides))
    return cfg, add_motion_vocab(byte_level_tokenizer(), cfg.motion_tokenizer.vocab_per_part)


def _motion_codes(cfg: JalaConfig, vocab: MotionVocab, gen: torch.Generator) -> torch.Tensor:
    """One hand's chunk as token ids: the wrist part's codes, then the finger part's."""
    per_part = cfg.motion_tokenizer.tokens_per_part
    codes = torch.randint(0, vocab.vocab_per_part, (2, per_part), generator=gen)
    return torch.cat([vocab.motion_ids(codes[0], 0), vocab.motion_ids(codes[1], 1)])


def _chunk_mask(cfg: JalaConfig, doc: Doc, n_chunks: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Which tokens of each chunk are [MASK]: hybrid masking when labelled, everything when video-only."""
    tokens = cfg.motion_tokenizer.tokens_per_chunk
    if not doc.labeled:
        return [torch.ones(tokens, dtype=torch.bool) for _ in range(n_chunks)]
    target = int(torch.randint(0, n_chunks, (1,), generator=gen))
    lo, hi = cfg.data.mask_ratio_min, cfg.data.mask_ratio_max
    ratio = lo + (hi - lo) * float(torch.rand((), generator=gen))
    masks = []
    for c in range(n_chunks):
        if c < target:
            masks.append(torch.zeros(tokens, dtype=torch.bool))
        elif c == target:
            n_masked = max(1, round(ratio * tokens))
            mask = torch.zeros(tokens, dtype=torch.bool)
            mask[torch.randperm(tokens, generator=gen)[:n_masked]] = True
            masks.append(mask)
        else:
            masks.append(torch.rand(tokens, generator=gen) < cfg.data.later_chunk_mask_prob)
    return masks


def make_batch(cfg: JalaConfig, vocab: MotionVocab, rows: list[list[Doc]], seed: int = 0) -> dict:
    """A collated batch: each row packs its documents, rows are padded to the longest."""
    gen = torch.Generator().manual_seed(seed)
    tok = byte_level_tokenizer()
    img_start, img_end = tok.convert_tokens_to_ids([IMG_START, IMG_END])
    n_img = image_token_count(cfg.model)
    fields = {k: [] for k in ("input_ids", "labels", "position_ids", "doc_ids", "chunk_ids", "motion_chunk")}
    chunk_hand, chunk_labeled, sample_ids, images = [], [], [], 0
    n_chunks_total = 0
    for row in rows:
        row_fields = {k: [] for k in fields}
        row_chunk = 0
        for d, doc in enumerate(row):
            ids = [img_start] + [vocab.img_context] * n_img + [img_end] + tok.encode(doc.instruction)
            labels = [IGNORE] * len(ids)
            chunk_ids = [-1] * len(ids)
            motion_chunk = [-1] * len(ids)
            streams = [hand for _ in range(doc.chunks) for hand in doc.hands]  # L1 R1 L2 R2 along time
            for hand, mask in zip(streams, _chunk_mask(cfg, doc, len(streams), gen)):
                codes = _motion_codes(cfg, vocab, gen)
                ids += [vocab.mot_start] + torch.where(mask, vocab.mask, codes).tolist() + [vocab.mot_end]
                targets = torch.where(mask, codes, IGNORE) if doc.labeled else torch.full_like(codes, IGNORE)
                labels += [IGNORE] + targets.tolist() + [IGNORE]
                chunk_ids += [-1] + [row_chunk] * len(codes) + [-1]
                motion_chunk += [-1] + [n_chunks_total] * len(codes) + [-1]
                chunk_hand.append(hand)
                chunk_labeled.append(doc.labeled)
                row_chunk += 1
                n_chunks_total += 1
            row_fields["input_ids"] += ids
            row_fields["labels"] += labels
            row_fields["position_ids"] += list(range(len(ids)))
            row_fields["doc_ids"] += [d] * len(ids)
            row_fields["chunk_ids"] += chunk_ids
            row_fields["motion_chunk"] += motion_chunk
            sample_ids.append(f"clip{len(sample_ids):03d}[0:{doc.chunks * 15}]")
            images += 1
        for key, values in fields.items():
            values.append(row_fields[key])
    width = max(len(r) for r in fields["input_ids"])
    pad_values = {"input_ids": vocab.pad, "labels": IGNORE, "position_ids": 0, "doc_ids": -1, "chunk_ids": -1,
                  "motion_chunk": -1}
    batch = {}
    for key, values in fields.items():
        dtype = torch.int32 if key in ("doc_ids", "chunk_ids") else torch.int64
        batch[key] = torch.tensor([r + [pad_values[key]] * (width - len(r)) for r in values], dtype=dtype)
    s, s_enc = cfg.model.image_size, cfg.model.visual_encoder_image_size
    batch["pixel_values"] = torch.randint(0, 256, (images, 3, s, s), generator=gen, dtype=torch.uint8)
    # consecutive chunks share a boundary frame, as a clip's do
    batch["encoder_frames"] = torch.randint(0, 256, (n_chunks_total + 1, 3, s_enc, s_enc), generator=gen,
                                            dtype=torch.uint8)
    batch["chunk_frame_index"] = torch.stack([torch.arange(n_chunks_total), torch.arange(1, n_chunks_total + 1)], 1)
    batch["chunk_hand"] = torch.tensor(chunk_hand, dtype=torch.int64)
    batch["chunk_labeled"] = torch.tensor(chunk_labeled, dtype=torch.bool)
    batch["sample_ids"] = sample_ids
    layout = {key: batch[key] for key in ("input_ids", "labels", "motion_chunk", "doc_ids", "chunk_ids")}
    batch.update(batch_index(**layout, num_chunks=n_chunks_total, image_token_id=vocab.img_context, ignore=IGNORE))
    return batch


def to_device(batch: dict, device: str | torch.device) -> dict:
    """The batch with every tensor on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
