"""``jala data tokenize``: a copy of the MDS corpus with each hand's motion tokens added.

    report = tokenize_corpus("runs/grvq_tokenizer", "data/mds", "data/mds_tokens")
    # {"clips": 7500000, "tokenized_hands": ..., "chunks": ..., "seconds": ..., "clips_per_s": ..., ...}

Every record of ``<src>/lab`` and ``<src>/wild`` (and of the held-out ``<src>/heldout/lab|wild``, which
evaluation reads) is copied column for column into the same folder under ``<out>`` with the same shard settings (hashes, compression, size limit), plus ``left_tokens``/``right_tokens``
(``jala_ds.data.schema.TOKEN_COLUMNS``): int32 ``[chunks, tokens_per_chunk]`` codes of each present hand's
``T // chunk_frames`` whole chunks (lab clips and pseudo-labelled wild clips), empty for an absent hand.
Hands of many clips are encoded together, one forward pass per block of clips, which is what makes the
throughput (printed and returned in clips/s).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jala_ds.data.convert import HELDOUT
from jala_ds.data.schema import HANDS, SUBSETS, TOKEN_COLUMNS, array_bytes, hand_poses
from jala_ds.motion.pose_corpus import open_mds
from jala_ds.motion.tokenizer import GrvqMotionTokenizer, load_grvq_tokenizer

CLIPS_PER_BLOCK = 64
"""Clips whose hands go through the tokenizer in one forward pass."""


def tokenize_records(tok: GrvqMotionTokenizer, records: list[dict[str, Any]]) -> list[dict[str, bytes]]:
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


def tokenize_corpus(tokenizer_path: str | Path, src_mds: str | Path, out_mds: str | Path,
                    device: str = "cpu") -> dict[str, Any]:
    """Copy ``src_mds`` to ``out_mds`` with motion tokens added; return counts and throughput."""
    from streaming import MDSWriter

    src_mds, out_mds = Path(src_mds), Path(out_mds)
    if src_mds.resolve() == out_mds.resolve():
        raise ValueError(f"--out {out_mds} is the source corpus: write the tokenized copy to another folder")
    folders = [*SUBSETS, *(f"{HELDOUT}/{subset}" for subset in SUBSETS)]
    subsets = [s for s in folders if (src_mds / s / "index.json").is_file()]
    if not any(s in SUBSETS for s in subsets):
        raise FileNotFoundError(f"no MDS subsets (lab/, wild/) under {src_mds}: point --src at `jala data convert`'s "
                                "output")
    taken = [s for s in subsets if (out_mds / s).exists()]
    if taken:
        raise FileExistsError(f"{out_mds} already holds {', '.join(taken)}: choose a new --out folder or delete it")
    tok = load_grvq_tokenizer(tokenizer_path, device)
    report: dict[str, Any] = {"clips": 0, "tokenized_hands": 0, "chunks": 0, "subsets": {}}
    started = time.perf_counter()
    for subset in subsets:
        source = open_mds(src_mds / subset)
        settings = json.loads((src_mds / subset / "index.json").read_text())["shards"][0]
        columns = dict(zip(settings["column_names"], settings["column_encodings"]))
        counts = {"clips": 0, "tokenized_hands": 0, "chunks": 0}
        with MDSWriter(out=str(out_mds / subset), columns={**columns, **TOKEN_COLUMNS},
                       compression=settings.get("compression"), hashes=settings.get("hashes") or None,
                       size_limit=settings.get("size_limit")) as writer, \
                tqdm(total=len(source), desc=f"tokenize {subset}", unit="clip") as progress:
            for block_start in range(0, len(source), CLIPS_PER_BLOCK):
                records = [source[i] for i in range(block_start, min(block_start + CLIPS_PER_BLOCK, len(source)))]
                for record, tokens in zip(records, tokenize_records(tok, records)):
                    writer.write({**{name: record[name] for name in columns}, **tokens})
                    chunks = [len(tokens[f"{hand}_tokens"]) // (4 * tok.tokens_per_chunk) for hand in HANDS]
                    counts["tokenized_hands"] += sum(c > 0 for c in chunks)
                    counts["chunks"] += sum(chunks)
                counts["clips"] += len(records)
                progress.update(len(records))
                rate = (report["clips"] + counts["clips"]) / (time.perf_counter() - started)
                progress.set_postfix(clips_per_s=f"{rate:.1f}")
        report["subsets"][subset] = counts
        for key, value in counts.items():
            report[key] += value
    report["seconds"] = time.perf_counter() - started
    report["clips_per_s"] = report["clips"] / report["seconds"]
    print(f"tokenized {report['clips']} clips ({report['chunks']} chunks) into {out_mds} at "
          f"{report['clips_per_s']:.1f} clips/s")
    return report
