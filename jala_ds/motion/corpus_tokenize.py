"""``jala data tokenize``: a copy of the MDS corpus with each hand's motion tokens added.

    report = tokenize_corpus("runs/grvq_tokenizer", "data/mds", "data/mds_tokens")
    # {"clips": 7500000, "tokenized_hands": ..., "chunks": ..., "seconds": ..., "clips_per_s": ..., ...}

Every record of ``<src>/lab`` and ``<src>/wild`` (and of the held-out ``<src>/heldout/lab|wild``, which
evaluation reads) is copied into the same folder under ``<out>`` (``jala_ds.motion.corpus_copy``), plus
``left_tokens``/``right_tokens``
(``jala_ds.data.schema.TOKEN_COLUMNS``): int32 ``[chunks, tokens_per_chunk]`` codes of each present hand's
``T // chunk_frames`` whole chunks (lab clips and pseudo-labelled wild clips), empty for an absent hand.
Hands of many clips are encoded together, one forward pass per block of clips, which is what makes the
throughput (printed and returned in clips/s). Under torchrun each rank copies its share
(``torchrun --nproc_per_node 8 $(which jala) data tokenize --device cuda ...``).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from jala_ds.data.corpus_provenance import converted_settings, is_pseudo_labelled
from jala_ds.data.mds_pieces import PIECE_CLIPS, RANKS_WAIT, content_sha256
from jala_ds.data.motion_tokens import MotionTokenizer
from jala_ds.data.schema import HANDS, TOKEN_COLUMNS, array_bytes, hand_poses
from jala_ds.motion.corpus_copy import copy_corpus
from jala_ds.motion.tokenizer import load_grvq_tokenizer
from jala_ds.torchrun_group import torchrun_ranks

CLIPS_PER_BLOCK = 64
"""Clips whose hands go through the tokenizer in one forward pass."""


def tokenize_records(tok: MotionTokenizer, records: list[dict[str, Any]]) -> list[dict[str, bytes]]:
    """The token columns of each record: one encode call for every hand of every record."""
    pieces, owners = [], []
    for i, record in enumerate(records):
        for hand in HANDS:
            poses = hand_poses(record, hand)
            chunks = poses.shape[0] // tok.chunk_frames
            if chunks:
                pieces.append(poses[:chunks * tok.chunk_frames])
                owners.append((i, hand, chunks))
    empty = np.zeros((0, tok.tokens_per_chunk), np.int32)
    columns = [{f"{hand}_tokens": array_bytes(empty, "<i4") for hand in HANDS} for _ in records]
    codes = tok.encode(np.concatenate(pieces)) if pieces else empty
    start = 0
    for i, hand, chunks in owners:
        columns[i][f"{hand}_tokens"] = array_bytes(codes[start:start + chunks], "<i4")
        start += chunks
    return columns


def tokenize_corpus(tokenizer_path: str | Path, src_mds: str | Path, out_mds: str | Path, device: str = "cpu", *,
                    resume: bool = False, overwrite: bool = False, piece_clips: int = PIECE_CLIPS) -> dict[str, Any]:
    """Copy ``src_mds`` to ``out_mds`` with motion tokens added, this rank's share of it under torchrun (``device``
    ``cuda`` is the rank's GPU); return counts and throughput, the same on every rank. ``resume`` finishes a copy
    that stopped part-way (``jala_ds.motion.corpus_copy``)."""
    if is_pseudo_labelled(src_mds):
        # Its video-only clips hold predicted codes and labeled=1 but no poses: encoded again they would keep
        # labeled=1 with no codes at all, a labelled clip without labels that stops pretraining when it is drawn.
        raise ValueError(f"--src {src_mds} is a pseudo-labelled copy (`jala token-predictor label`): tokenize the "
                         "corpus it was labelled from, then label the tokenized copy")
    with torchrun_ranks(RANKS_WAIT) as ranks:
        tok = load_grvq_tokenizer(tokenizer_path, ranks.on(device))
        converted = (converted_settings(src_mds) or {}).get("chunk_frames", tok.chunk_frames)
        if converted != tok.chunk_frames:
            raise ValueError(f"--tokenizer {tokenizer_path} encodes {tok.chunk_frames}-frame chunks but --src "
                             f"{src_mds} was converted with chunk_frames={converted}: tokenize with a tokenizer "
                             f"trained on {converted}-frame chunks")

        def add_tokens(subset: str, records: list[dict[str, Any]], tally: Counter) -> list[dict[str, bytes]]:
            columns = tokenize_records(tok, records)
            for tokens in columns:
                chunks = [len(tokens[f"{hand}_tokens"]) // (4 * tok.tokens_per_chunk) for hand in HANDS]
                tally["tokenized_hands"] += sum(c > 0 for c in chunks)
                tally["chunks"] += sum(chunks)
            return columns

        report = copy_corpus(src_mds, out_mds, TOKEN_COLUMNS, add_tokens, counted=("tokenized_hands", "chunks"),
                             block=CLIPS_PER_BLOCK, desc="tokenize", inputs={"tokenizer": content_sha256(tokenizer_path)},
                             ranks=ranks, piece_clips=piece_clips, resume=resume, overwrite=overwrite)
    if ranks.rank == 0:
        print(f"tokenized {report['clips']} clips ({report['chunks']} chunks) into {out_mds} at "
              f"{report['clips_per_s']:.1f} clips/s on {ranks.world_size} rank(s)")
    return report
