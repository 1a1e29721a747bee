"""Motion generation with MCP (paper sec. 4.3, "Inference with MCP"): from all-[MASK] chunks to MANO poses.

    generator = MotionGenerator(trained.cfg, trained.model, trained.tokenizer, trained.vocab, device=trained.device)
    clips = generator.generate(records)          # MDS records with motion labels -> GeneratedClip per record

Each record becomes the generation document of ``SequenceBuilder.build_for_generation`` (image = the window's
first frame, instruction, then the hands' chunks interleaved along time, every chunk [MASK]): the same
builder, example and collate code as training. Chunks are generated one at a time in sequence order (L1, R1,
L2, ...): attention across chunks is causal, so each generated chunk is context for the next; each chunk's LSP
state comes from its own first frame, as in training (its last frame is replaced by the first, so nothing
after the chunk's start is ever seen).

Within a chunk, each pass runs the model (``JalaModel.hidden_states`` + the LM head, with the recipe's attention
backend) and fixes ``ceil(fraction * tokens_per_chunk)`` of the still-masked tokens: at each position the most
likely code among those valid there (the part's codes, within the residual stage that owns the slot), and the
positions drawn without replacement with probabilities proportional to ``confidence ** (1 / temperature)``
(Gumbel top-k; temperature -> 0 is pure confidence order). ``ensemble`` members differ only in those draws
(each member's stream is seeded by the seed, the sample and the member, so a clip's result does not depend on
what else is in the batch); all of them run as rows of one batch. Each member's codes are decoded to MANO by the
recipe's motion tokenizer, and the members are averaged in MANO space: translations by their mean, rotations by
the rotation nearest to their mean matrix.

A backbone trained with next-token prediction (``model.objective=ntp``: the paper's Being-H0 rows) decodes in
order instead: each chunk's tokens left to right, token t read where training put its label (the position
before it), drawn among the codes valid there from the softmax at ``temperature``; attention is causal, so the
still-masked tokens after it change nothing. Everything else (documents, chunk order, LSP frames, ensemble,
scoring) is the same, so Table 1's rows come from one code path.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from jala_ds.config import JalaConfig
from jala_ds.data.collate import collate
from jala_ds.data.example import ExampleBuilder
from jala_ds.data.motion_tokens import build_motion_tokenizer
from jala_ds.data.schema import HANDS, hand_poses
from jala_ds.data.sequence import Document, SequenceBuilder
from jala_ds.eval.chunk_context import ChunkContext
from jala_ds.model.backbone import image_token_count
from jala_ds.model.jala_model import JalaModel
from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.mano import join_frames, split_frames
from jala_ds.train.loop import to_device
from jala_ds.vocab import MotionVocab


@dataclass(frozen=True)
class Decoding:
    fraction: float = 0.05
    """Share of a chunk's tokens fixed per pass (the paper's 5%); at least one token per pass. MCP only."""
    ensemble: int = 4
    """Decodings per chunk averaged in MANO space."""
    seed: int = 0
    """Seeds the position draws: the same seed gives the same motion."""
    temperature: float = 1.0
    """Of the confidence-proportional position draws (mcp): near 0 fixes the most confident positions first; of
    the code draws (ntp): near 0 takes the most likely code."""
    reuse_context: bool = True
    """Passes after a chunk's first run the language model on that chunk alone (``chunk_context.py``); False
    runs every pass over the whole sequence: the reference the short passes are tested against."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"decoding fraction={self.fraction}: use a share of the chunk in (0, 1], e.g. 0.05")
        if self.ensemble < 1:
            raise ValueError(f"ensemble={self.ensemble}: use at least one decoding per chunk")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: use a positive value (small = confidence order)")


@dataclass
class GeneratedHand:
    predicted: np.ndarray
    """float32 ``[frames, 99]``: the ensembled MANO poses of the generated chunks."""
    true: np.ndarray
    """float32 ``[frames, 99]``: the clip's poses over the same frames."""
    member_codes: np.ndarray
    """int64 ``[ensemble, chunks, tokens_per_chunk]``: each member's codes (per part, not token ids)."""
    true_codes: np.ndarray
    """int64 ``[chunks, tokens_per_chunk]``: the codes of the true poses."""


@dataclass
class GeneratedClip:
    sample_id: str
    """``<clip_id>@<first chunk>:<end chunk>`` of the window."""
    clip_id: str
    subset: str
    instruction: str
    hands: dict[str, GeneratedHand] = field(default_factory=dict)


def candidate_ids(vocab: MotionVocab, tokenizer: TokenizerConfig) -> torch.Tensor:
    """int64 ``[tokens_per_chunk, codes_per_stage]``: the token ids valid at each position of a chunk.

    A chunk is the wrist part's codes then the finger part's, each ordered (step, group, stage), and stage ``r``
    owns codes ``[r * K, (r + 1) * K)`` of its part (docs/architecture.md section 3): any other id there would
    be a code the tokenizer cannot decode.
    """
    slot = torch.arange(tokenizer.tokens_per_chunk)
    part, stage = slot // tokenizer.tokens_per_part, slot % tokenizer.stages
    first = vocab.motion_base + part * vocab.vocab_per_part + stage * tokenizer.codes_per_stage
    return first[:, None] + torch.arange(tokenizer.codes_per_stage)


def positions_to_fix(masked: torch.Tensor, confidence: torch.Tensor, count: int, uniform: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """bool ``[D, T]``: ``min(count, still masked)`` masked positions of each row, drawn without replacement with
    probability proportional to ``confidence ** (1 / temperature)`` (Gumbel top-k on ``uniform`` in (0, 1))."""
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-7)))
    score = torch.log(confidence.clamp_min(1e-30)) / temperature + gumbel
    score = score.masked_fill(~masked, -math.inf)
    rank = score.argsort(dim=1, descending=True).argsort(dim=1)
    wanted = masked.sum(dim=1, keepdim=True).clamp(max=count)
    return (rank < wanted) & masked


class MotionGenerator:
    """Generates motion for MDS records with a trained model (batched, chunk by chunk, ensembled)."""

    def __init__(self, cfg: JalaConfig, model: JalaModel, tokenizer, vocab: MotionVocab, *,
                 decoding: Decoding = Decoding(), device: torch.device | str = "cpu") -> None:
        self.cfg, self.model, self.vocab, self.decoding = cfg, model, vocab, decoding
        self.device = torch.device(device)
        self.motion_tokenizer = build_motion_tokenizer(cfg.motion_tokenizer)
        self.sequences = SequenceBuilder(cfg.data, objective=cfg.model.objective, tokenizer=tokenizer, vocab=vocab,
                                         motion_tokenizer=self.motion_tokenizer,
                                         n_image_tokens=image_token_count(cfg.model), seed=cfg.train.seed)
        self.examples = ExampleBuilder(self.sequences, image_size=cfg.model.image_size,
                                       encoder_image_size=cfg.model.visual_encoder_image_size)
        self.candidates = candidate_ids(vocab, cfg.motion_tokenizer).to(self.device)
        self.tokens_per_chunk = cfg.motion_tokenizer.tokens_per_chunk
        self.per_pass = max(1, math.ceil(decoding.fraction * self.tokens_per_chunk))

    @property
    def passes_per_chunk(self) -> int:
        if self.cfg.model.objective != "mcp":
            return self.tokens_per_chunk   # ntp: one token per pass
        return math.ceil(self.tokens_per_chunk / self.per_pass)

    def prepare(self, records: list[Mapping], shown_steps: int = 0) -> tuple[list[Document], dict, list[torch.Generator]]:
        """Every record's generation document; the batch of them, each repeated ``ensemble`` times (record-major),
        on the device; one random stream per row."""
        members = self.decoding.ensemble
        documents = [self.sequences.build_for_generation(record, shown_steps=shown_steps) for record in records]
        examples = [self.examples.with_pixels(record, doc) for record, doc in zip(records, documents)]
        rows = [example for example in examples for _ in range(members)]
        batch = collate(rows, pack=False, max_tokens=max(len(doc) for doc in documents), vocab=self.vocab)
        # LSP reads only a chunk's first frame; its last frame is the future the model must not see, so it is
        # neither read nor encoded.
        seen, batch["chunk_frame_index"] = batch["chunk_frame_index"][:, [0, 0]].unique(return_inverse=True)
        batch["encoder_frames"] = batch["encoder_frames"][seen]
        batch = to_device(batch, self.device, next(self.model.parameters()).dtype)
        streams = [torch.Generator().manual_seed(row_seed(self.decoding.seed, doc.sample_id, member))
                   for doc in documents for member in range(members)]
        return documents, batch, streams

    @torch.no_grad()
    def fill(self, batch: dict, streams: list[torch.Generator]) -> Iterator[torch.Tensor]:
        """Fill every [MASK] of the batch's chunks in place (``batch["input_ids"]``), the k-th chunk of every row
        at once, k = 0, 1, ...; yields the still-masked positions ``[rows, T]`` of the chunks being filled after
        each pass."""
        fill = self._fill_masked if self.cfg.model.objective == "mcp" else self._fill_in_order
        yield from fill(batch, streams)

    def _fill_masked(self, batch: dict, streams: list[torch.Generator]) -> Iterator[torch.Tensor]:
        """MCP: per pass, the per-pass share of a chunk's masked positions, drawn by confidence."""
        chunk_tokens, row_of_chunk = batch["chunk_tokens"], chunk_rows(batch)
        features = self.model.encode_frames(batch)
        latent = self.model.latent_states_per_token(batch, features) if self.decoding.reuse_context else None
        ids = batch["input_ids"].view(-1)
        for chunks in chunks_by_rank(row_of_chunk):
            positions = chunk_tokens[chunks]
            rows = row_of_chunk[chunks].tolist()
            context = None  # the chunk's recorded keys and values, after its first pass (reuse_context)
            while True:
                masked = ids[positions] == self.vocab.mask
                if not masked.any():
                    break
                if context is None:
                    hidden, context = self._whole_sequence_pass(batch, features, row_of_chunk[chunks], positions)
                else:
                    hidden = context.chunk_hidden_states(self.model, batch, None if latent is None else latent[chunks])
                logits = self.model.backbone.lm_head(hidden).float()
                allowed = logits.gather(-1, self.candidates.expand(len(chunks), -1, -1))
                confidence, choice = allowed.softmax(dim=-1).max(dim=-1)
                uniform = torch.stack([draw_uniform(streams[r], self.tokens_per_chunk, busy)
                                       for r, busy in zip(rows, masked.any(dim=1).tolist())])
                fix = positions_to_fix(masked, confidence, self.per_pass, uniform.to(confidence.device),
                                       self.decoding.temperature)
                tokens = self.candidates.gather(1, choice.T).T  # [chunks, T]: the chosen code's token id
                ids[positions[fix]] = tokens[fix]
                yield ids[positions] == self.vocab.mask

    def _fill_in_order(self, batch: dict, streams: list[torch.Generator]) -> Iterator[torch.Tensor]:
        """ntp: one token of every row's chunk per pass, left to right, each read at the position before it. With
        ``reuse_context`` a pass after a chunk's first runs one position (the token the last pass wrote) against
        the recorded keys and values: the key/value-cache decoding of a causal model."""
        chunk_tokens, row_of_chunk = batch["chunk_tokens"], chunk_rows(batch)
        features = self.model.encode_frames(batch)
        latent = self.model.latent_states_per_token(batch, features) if self.decoding.reuse_context else None
        ids = batch["input_ids"].view(-1)
        length = batch["input_ids"].shape[1]
        for chunks in chunks_by_rank(row_of_chunk):
            positions = chunk_tokens[chunks]
            rows = row_of_chunk[chunks].tolist()
            # a chunk shown as context (``shown_steps``) keeps its true codes: only [MASK] slots are written, and a
            # rank holding shown chunks only runs no pass
            to_fill = ids[positions] == self.vocab.mask
            if not to_fill.any():
                continue
            context = None  # the rows' recorded keys and values, after the chunk's first pass (reuse_context)
            for slot in range(self.tokens_per_chunk):
                before = positions[:, slot:slot + 1] - 1   # <mot>, then the code the last pass wrote
                if context is None:
                    hidden, context = self._whole_sequence_pass(batch, features, row_of_chunk[chunks], before)
                else:
                    context.start_refreshing(batch, before - row_of_chunk[chunks][:, None] * length)
                    hidden = context.chunk_hidden_states(
                        self.model, batch, None if latent is None else latent[chunks, slot - 1:slot])
                logits = self.model.backbone.lm_head(hidden[:, 0]).float()
                allowed = (logits[:, self.candidates[slot]] / self.decoding.temperature).softmax(dim=-1).cpu()
                masked = to_fill[:, slot]
                # a row draws only for its own [MASK]s: its stream must not depend on what else is in the batch
                choice = torch.cat([torch.multinomial(allowed[i], 1, generator=streams[r]) if busy
                                    else torch.zeros(1, dtype=torch.long)
                                    for i, (r, busy) in enumerate(zip(rows, masked.tolist()))])
                drawn = self.candidates[slot][choice.to(self.candidates.device)]
                ids[positions[:, slot]] = torch.where(masked, drawn, ids[positions[:, slot]])
                yield ids[positions] == self.vocab.mask

    def _whole_sequence_pass(self, batch: dict, features: torch.Tensor | None, rows: torch.Tensor,
                             positions: torch.Tensor) -> tuple[torch.Tensor, ChunkContext | None]:
        """Final hidden states ``[R, P, d]`` at the flat ``positions`` ``[R, P]`` (one chunk's, or the position before
        it, per row of ``rows``) from a pass over every row's whole sequence; with ``reuse_context``, the keys and
        values it recorded too."""
        context = ChunkContext(rows) if self.decoding.reuse_context else None
        final, _ = self.model.hidden_states(batch, features, past_key_values=context)
        if context is not None:
            context.start_refreshing(batch, positions - rows[:, None] * final.shape[1])
        return final.flatten(0, 1)[positions], context

    def generate(self, records: list[Mapping], shown_steps: int = 0) -> list[GeneratedClip]:
        """Generate every masked chunk of each record's window; ``shown_steps`` leading time steps stay intact
        (continuation context) and are not part of the result."""
        if not records:
            return []
        documents, batch, streams = self.prepare(records, shown_steps)
        for _ in self.fill(batch, streams):
            pass
        chunk_tokens = batch["chunk_tokens"]
        codes = self.vocab.codes(batch["input_ids"].view(-1)[chunk_tokens]).cpu().numpy()  # [C, T]
        members, frames = self.decoding.ensemble, self.cfg.data.chunk_frames
        clips, first = [], 0
        for record, doc in zip(records, documents):
            n_chunks = len(doc.chunk_hand)
            start, end = (int(x) for x in doc.sample_id.rsplit("@", 1)[1].split(":"))
            clip = GeneratedClip(sample_id=doc.sample_id, clip_id=str(record["clip_id"]),
                                 subset=str(record["subset"]), instruction=str(record["instruction"]))
            per_member = codes[first:first + members * n_chunks].reshape(members, n_chunks, -1)
            for h, hand in enumerate(HANDS):
                generated = np.nonzero(doc.chunk_hand == h)[0][shown_steps:]  # one chunk per time step
                if not len(generated):
                    continue
                member_codes = per_member[:, generated].astype(np.int64)
                member_poses = np.stack([self.motion_tokenizer.decode(c) for c in member_codes])
                true = hand_poses(record, hand)[(start + shown_steps) * frames:end * frames]
                clip.hands[hand] = GeneratedHand(predicted=ensemble_poses(member_poses), true=true,
                                                 member_codes=member_codes,
                                                 true_codes=self.motion_tokenizer.encode(true).astype(np.int64))
            clips.append(clip)
            first += members * n_chunks
        return clips


def chunk_rows(batch: dict) -> torch.Tensor:
    """The row of each of the batch's chunks (chunks are numbered row by row, in sequence order)."""
    return batch["chunk_tokens"][:, 0] // batch["input_ids"].shape[1]


def chunks_by_rank(row_of_chunk: torch.Tensor) -> Iterator[torch.Tensor]:
    """The k-th chunk of every row that has one, k = 0, 1, ...: what one decoding step fills at once."""
    rank_in_row = torch.arange(len(row_of_chunk), device=row_of_chunk.device) - \
        torch.searchsorted(row_of_chunk, row_of_chunk)
    for k in range(int(rank_in_row.max()) + 1 if len(rank_in_row) else 0):
        yield (rank_in_row == k).nonzero().squeeze(1)


def draw_uniform(stream: torch.Generator, count: int, busy: bool) -> torch.Tensor:
    """``count`` uniforms from a row's ``stream`` when its chunk still has a [MASK] (``busy``), else zeros and no
    draw: a row whose chunk is shown or done waits while other rows' chunks of its rank are filled, and how long
    depends on the batch, so drawing then would make its later draws depend on what else is in the batch."""
    return torch.rand(count, generator=stream) if busy else torch.zeros(count)


def row_seed(seed: int, sample_id: str, member: int) -> int:
    """A 63-bit seed of (seed, sample, member), the same in every process (Python's ``hash`` is salted)."""
    digest = hashlib.sha256(f"{seed}/{sample_id}/{member}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def ensemble_poses(member_poses: np.ndarray) -> np.ndarray:
    """``[E, frames, 99]`` MANO poses -> ``[frames, 99]``: mean translation; every rotation the one nearest (in
    Frobenius norm) to the members' mean matrix, i.e. the chordal L2 mean on SO(3)."""
    wrist, translation, fingers = split_frames(torch.from_numpy(np.asarray(member_poses, np.float64)))
    mean = join_frames(nearest_rotation(wrist.mean(dim=0)), translation.mean(dim=0),
                       nearest_rotation(fingers.mean(dim=0)))
    return mean.numpy().astype(np.float32)


def nearest_rotation(matrix: torch.Tensor) -> torch.Tensor:
    """The rotation nearest to each ``[..., 3, 3]`` matrix: ``U diag(1, 1, det(U V^T)) V^T`` from its SVD."""
    u, _, vh = torch.linalg.svd(matrix)
    flip = torch.ones(matrix.shape[:-1], dtype=matrix.dtype)
    flip[..., -1] = torch.sign(torch.linalg.det(u @ vh))
    return u @ torch.diag_embed(flip) @ vh
