"""One MDS record -> one document of tokens with its labels (docs/architecture.md sections 3 and 4).

    <img> <IMG_CONTEXT> x n_img </img>  instruction  <mot> L1 </mot> <mot> R1 </mot> <mot> L2 </mot> ...

A clip holding more chunks than ``data.max_chunks`` contributes one window of that many chunks per hand;
its first stored frame is the document's image. Hands interleave along time (L1 R1 L2 R2); a one-hand
clip has one stream; a video-only clip has ``data.video_only_hands`` streams, every motion token
``[MASK]`` and no label at all (only the alignment loss trains it).

Labelled generation and continuation samples under ``model.objective=mcp`` get hybrid masking: one
target chunk drawn uniformly among the document's chunks, earlier chunks intact, a ratio drawn from
``[mask_ratio_min, mask_ratio_max]`` of the target's tokens masked (at least one), later chunks' tokens
masked with ``later_chunk_mask_prob``; labels are the true token ids at the masked positions. (A
continuation differs from a generation only by its instruction: the intact earlier chunks are the motion
it continues.) Under ``ntp`` (the Being-H0 baseline) nothing is masked and the label at each position is
the next token wherever that next token is a motion code. Description samples put the motion first,
intact, and the instruction after it as the target: the label at each position is the next text token.

All randomness (window, target, ratio, positions) comes from one generator seeded by (train.seed, epoch,
sample index), so a resumed run builds exactly the documents the uninterrupted one would.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from jala_ds.data.config import DataConfig
from jala_ds.data.motion_tokens import MotionTokenizer
from jala_ds.data.schema import HANDS, hand_poses, hand_tokens, labelled_hands
from jala_ds.vocab import IMG_END, IMG_START, MotionVocab

IGNORE = -100
"""Label of positions without loss."""


@dataclass
class Document:
    """One sample's tokens, before padding or packing. Chunk order is the order of the motion in the text."""

    sample_id: str
    """``<clip_id>@<first chunk>:<end chunk>``: which clip and window, for exact-once checks."""
    input_ids: np.ndarray
    """int64 ``[n]``."""
    labels: np.ndarray
    """int64 ``[n]``: the token to predict at each position, ``IGNORE`` where there is none."""
    motion_chunk: np.ndarray
    """int64 ``[n]``: index of the document's chunk for the motion codes strictly inside ``<mot>``/``</mot>``, else -1."""
    bidirectional: bool
    """Tokens of one chunk attend to each other (mcp), or everything is causal (ntp)."""
    chunk_hand: np.ndarray
    """int64 ``[c]``: 0 left, 1 right."""
    chunk_frames: np.ndarray
    """int64 ``[c, 2]``: stored-frame indices of each chunk's boundary frames (o_t, o_t+k)."""
    image_frame: int
    """Stored-frame index of the document's image (the window's first boundary frame)."""
    labeled: bool
    """The sample has (trusted) motion labels."""

    def __len__(self) -> int:
        return len(self.input_ids)


def hybrid_mask(rng: np.random.Generator, chunks: int, tokens_per_chunk: int, ratio_min: float,
                ratio_max: float, later_prob: float) -> np.ndarray:
    """bool ``[chunks, tokens_per_chunk]`` (True = masked) of the paper's hybrid masking scheme."""
    mask = np.zeros((chunks, tokens_per_chunk), bool)
    target = int(rng.integers(chunks))
    count = max(1, round(rng.uniform(ratio_min, ratio_max) * tokens_per_chunk))
    mask[target, rng.choice(tokens_per_chunk, count, replace=False)] = True
    mask[target + 1:] = rng.random((chunks - target - 1, tokens_per_chunk)) < later_prob
    return mask


class SequenceBuilder:
    """Builds :class:`Document` s from MDS records for one run (recipe, tokenizers, image token count)."""

    def __init__(self, data: DataConfig, *, objective: str, tokenizer: PreTrainedTokenizerBase, vocab: MotionVocab,
                 motion_tokenizer: MotionTokenizer, n_image_tokens: int, seed: int) -> None:
        if motion_tokenizer.chunk_frames != data.chunk_frames:
            raise ValueError(f"data.chunk_frames={data.chunk_frames} but the motion tokenizer encodes "
                             f"{motion_tokenizer.chunk_frames}-frame chunks: set data.chunk_frames={motion_tokenizer.chunk_frames}")
        if motion_tokenizer.vocab_per_part != vocab.vocab_per_part:
            raise ValueError(f"the motion tokenizer has {motion_tokenizer.vocab_per_part} codes per part, the vocabulary "
                             f"{vocab.vocab_per_part}: build the vocabulary with add_motion_vocab(tok, {motion_tokenizer.vocab_per_part})")
        self.data, self.objective, self.seed = data, objective, seed
        self.tokenizer, self.vocab, self.motion_tokenizer = tokenizer, vocab, motion_tokenizer
        self.tokens_per_chunk = motion_tokenizer.tokens_per_chunk
        self.image_block = image_block(tokenizer, vocab, n_image_tokens)
        half = self.tokens_per_chunk // 2
        # Token id of code 0 at each position of a chunk: the wrist part's codes first, then the finger part's.
        self.code_base = vocab.motion_base + np.repeat([0, vocab.vocab_per_part], half).astype(np.int64)
        self.video_only_hands = [0, 1] if data.video_only_hands == "both" else [1]

    @property
    def longest(self) -> int:
        """The most tokens a document can have: the image block, an instruction of ``data.max_text_tokens``, and a
        window of ``data.max_chunks`` chunks for both hands, each chunk between ``<mot>`` and ``</mot>``."""
        chunks = len(HANDS) * self.data.max_chunks
        return len(self.image_block) + self.data.max_text_tokens + chunks * (self.tokens_per_chunk + 2)

    def build(self, record: Mapping, sample_index: int, epoch: int) -> Document:
        """The training document: a random window, hybrid masking (see the module docstring)."""
        rng = np.random.default_rng([self.seed, epoch, sample_index])
        chunks = len(record["frame_index"]) - 1
        labeled = bool(record["labeled"]) and not (self.data.pseudo_labels_as_unlabeled and record["subset"] == "wild")
        width = min(self.data.max_chunks, chunks)
        start = int(rng.integers(chunks - width + 1))
        describe = record["task"] == "description"
        hybrid = labeled and not describe and self.objective == "mcp"

        def masking(order: list[tuple[int, int]]) -> np.ndarray:
            return hybrid_mask(rng, len(order), self.tokens_per_chunk, self.data.mask_ratio_min,
                               self.data.mask_ratio_max, self.data.later_chunk_mask_prob)

        return self.assemble(record, start, width, labeled=labeled, describe=describe,
                             masking=masking if hybrid else None)

    def build_for_generation(self, record: Mapping, *, start: int = 0, shown_steps: int = 0) -> Document:
        """The document MCP decoding starts from (``jala_ds.eval``): the window of ``data.max_chunks`` chunks
        from chunk ``start``, laid out as a generation task (image, instruction, motion) whatever the record's
        task, its first ``shown_steps`` time steps intact (continuation context) and every later chunk all
        ``[MASK]``, with the true codes as labels there. Needs motion labels (pseudo labels count) to score."""
        chunks = len(record["frame_index"]) - 1
        if not record["labeled"]:
            raise ValueError(f"clip {record['clip_id']} has no motion labels: generation can only be scored "
                             "on labelled (or trusted pseudo-labelled) clips")
        if not 0 <= start < chunks:
            raise ValueError(f"clip {record['clip_id']} has {chunks} chunks: start={start} is outside [0, {chunks})")
        width = min(self.data.max_chunks, chunks - start)

        def masking(order: list[tuple[int, int]]) -> np.ndarray:
            steps = np.array([j for j, _ in order])
            return np.repeat((steps >= shown_steps)[:, None], self.tokens_per_chunk, axis=1)

        return self.assemble(record, start, width, labeled=True, describe=False, masking=masking)

    def build_masked(self, record: Mapping) -> Document:
        """The window of ``data.max_chunks`` chunks from chunk 0 as a generation task with every motion token
        ``[MASK]`` and no label, whether the clip is labelled or not: what the backbone predicts from the image and
        instruction alone, one view for every subset (``jala eval latents``; post-training reads h this way)."""
        chunks = len(record["frame_index"]) - 1
        return self.assemble(record, 0, min(self.data.max_chunks, chunks), labeled=False, describe=False,
                             masking=None)

    def assemble(self, record: Mapping, start: int, width: int, *, labeled: bool, describe: bool,
                 masking: Callable[[list[tuple[int, int]]], np.ndarray] | None) -> Document:
        """The document of the window ``[start, start + width)``; ``masking(order)`` gives the masked
        positions ``[chunks, tokens_per_chunk]`` of a labelled document's chunks, in sequence order."""
        poses = {hand: hand_poses(record, hand) for hand in HANDS}
        hands = labelled_hands(record) or self.video_only_hands
        order = [(j, h) for j in range(width) for h in hands]  # interleaved along time: L1 R1 L2 R2

        if labeled:
            codes = {h: self.window_codes(record, poses, h, start, width) for h in hands}
            truth = np.stack([codes[h][j] for j, h in order])
        else:
            truth = np.full((len(order), self.tokens_per_chunk), self.vocab.mask, np.int64)
        shown, targets = truth, np.full_like(truth, IGNORE)
        if masking is not None:
            masked = masking(order)
            shown, targets = np.where(masked, self.vocab.mask, truth), np.where(masked, truth, IGNORE)

        text = instruction_tokens(self.tokenizer, record["instruction"], self.data.max_text_tokens)
        image_seg, text_seg = plain_segment(self.image_block), plain_segment(text)
        motion_seg = motion_segment(shown, targets, self.vocab)
        segments = [image_seg, motion_seg, text_seg] if describe else [image_seg, text_seg, motion_seg]
        input_ids, labels, chunk_index = (np.concatenate(parts) for parts in zip(*segments))

        if labeled and describe:
            text_start = len(input_ids) - len(text)
            labels[text_start - 1:len(input_ids) - 1] = text
        elif labeled and self.objective == "ntp":
            next_is_code = chunk_index[1:] >= 0
            labels[:-1][next_is_code] = input_ids[1:][next_is_code]

        return Document(
            sample_id=f"{record['clip_id']}@{start}:{start + width}",
            input_ids=input_ids, labels=labels, motion_chunk=chunk_index,
            bidirectional=self.objective == "mcp",
            chunk_hand=np.array([h for _, h in order], np.int64),
            chunk_frames=np.array([[start + j, start + j + 1] for j, _ in order], np.int64),
            image_frame=start, labeled=labeled)

    def window_codes(self, record: Mapping, poses: dict[str, np.ndarray], hand: int, start: int, width: int) -> np.ndarray:
        """Token ids ``[width, tokens_per_chunk]`` of one hand's window: stored codes if any, else encoded now."""
        stored = hand_tokens(record, HANDS[hand])
        if stored is None:
            frames = self.data.chunk_frames
            codes = self.motion_tokenizer.encode(poses[HANDS[hand]][start * frames:(start + width) * frames])
        else:
            codes = stored[start:start + width]
        if codes.shape != (width, self.tokens_per_chunk):
            raise ValueError(f"clip {record['clip_id']}: {HANDS[hand]} codes have shape {codes.shape}, expected "
                             f"({width}, {self.tokens_per_chunk}): re-run `jala data tokenize` with this recipe's tokenizer")
        return codes.astype(np.int64) + self.code_base


def no_label(length: int, fill: int = IGNORE) -> np.ndarray:
    return np.full(length, fill, np.int64)


Segment = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(input_ids, labels, motion_chunk)`` of one stretch of a document."""


def image_block(tokenizer: PreTrainedTokenizerBase, vocab: MotionVocab, n_image_tokens: int) -> np.ndarray:
    """``<img> <IMG_CONTEXT> x n_image_tokens </img>`` as token ids."""
    if n_image_tokens < 1:
        raise ValueError(f"n_image_tokens={n_image_tokens}: an image needs at least one <IMG_CONTEXT> token")
    img_start, img_end = tokenizer.convert_tokens_to_ids([IMG_START, IMG_END])
    return np.array([img_start] + [vocab.img_context] * n_image_tokens + [img_end], np.int64)


def instruction_tokens(tokenizer: PreTrainedTokenizerBase, text: str, limit: int) -> np.ndarray:
    """The instruction's token ids, truncated to ``limit``."""
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"][:limit], np.int64)


def plain_segment(ids: np.ndarray) -> Segment:
    """Tokens outside any chunk and without labels (images, an instruction that is not a target)."""
    return ids, no_label(len(ids)), no_label(len(ids), -1)


def motion_segment(shown: np.ndarray, targets: np.ndarray, vocab: MotionVocab) -> Segment:
    """``<mot> codes </mot>`` per chunk from the shown ids and labels ``[chunks, tokens_per_chunk]``."""
    chunks, tokens_per_chunk = shown.shape
    motion = np.empty((chunks, tokens_per_chunk + 2), np.int64)
    motion[:, 0], motion[:, 1:-1], motion[:, -1] = vocab.mot_start, shown, vocab.mot_end
    motion_labels = np.full_like(motion, IGNORE)
    motion_labels[:, 1:-1] = targets
    motion_chunk = np.full_like(motion, -1)
    motion_chunk[:, 1:-1] = np.arange(chunks)[:, None]
    return motion.ravel(), motion_labels.ravel(), motion_chunk.ravel()


def masked_chunk_document(*, sample_id: str, image_block: np.ndarray, images: int, text: np.ndarray, hand: int,
                          tokens_per_chunk: int, vocab: MotionVocab, bidirectional: bool) -> Document:
    """A robot observation's document (post-training and the policy): one image block per camera, the
    instruction, and one motion chunk of ``hand``, all ``[MASK]`` and without labels. The backbone's predictive
    embeddings at that chunk condition the action head; its LSP context reads the first camera's frame.
    ``bidirectional``: whether the chunk attends both ways, as the backbone was pretrained (mcp), or causally (ntp)."""
    masked = np.full((1, tokens_per_chunk), vocab.mask, np.int64)
    segments = [plain_segment(image_block)] * images + [plain_segment(text),
                                                         motion_segment(masked, np.full_like(masked, IGNORE), vocab)]
    input_ids, labels, chunk_index = (np.concatenate(parts) for parts in zip(*segments))
    return Document(sample_id=sample_id, input_ids=input_ids, labels=labels, motion_chunk=chunk_index,
                    bidirectional=bidirectional, chunk_hand=np.array([hand], np.int64), chunk_frames=np.zeros((1, 2), np.int64),
                    image_frame=0, labeled=False)
