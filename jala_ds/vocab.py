"""The token vocabulary shared by data, model and evaluation: text, image placeholders and motion tokens.

Layout (ids after the text tokenizer's own vocabulary, in this order):
``<mot>``, ``</mot>``, ``[MASK]``, then ``vocab_per_part`` wrist tokens, then ``vocab_per_part`` finger tokens.
Motion ids are computed arithmetically (``MotionVocab.motion_ids``), never by tokenizing strings, so the
sequence builder stays fast; the strings exist so that exported tokenizers round-trip.

Real runs use the InternVL3 checkpoint's tokenizer (Qwen2 BPE, which already has ``<img>``, ``</img>``,
``<IMG_CONTEXT>``); tests and the demo use a byte-level tokenizer built here with no download.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
MOT_START, MOT_END, MASK = "<mot>", "</mot>", "[MASK]"
PAD = "<|endoftext|>"
PARTS = ("wrist", "finger")
ROW_MULTIPLE = 64
"""The embedding and LM head have their rows rounded up to a multiple of this. With the full vocabulary's odd
159,869 rows the head's matrix products have unaligned leading dimensions, and cuBLAS falls back to slow
kernels for them (an H200 profile of the full recipe: a Turing-generation kernel taking 4.8 ms once per step,
about ten times what the product's FLOPs need). The extra rows stand for no token."""
PUBLISHED_TEXT_VOCAB = {"internvl3_2b": 151674}
"""Embedding rows of each published backbone's tokenizer (InternVL3-2B: Qwen2.5 plus InternVL's image and box
tokens). A random-weight run of that shape pads the byte-level tokenizer to it, so that the embedding and LM
head it trains, and so its memory and FLOPs, are the real model's."""


def embedding_rows(vocab_size: int) -> int:
    """Rows of the embedding and LM head for ``vocab_size`` tokens: rounded up to a multiple of ``ROW_MULTIPLE``."""
    return -(-vocab_size // ROW_MULTIPLE) * ROW_MULTIPLE


@dataclass(frozen=True)
class MotionVocab:
    """Ids of the motion tokens inside the full vocabulary."""

    mot_start: int
    mot_end: int
    mask: int
    motion_base: int
    """Id of wrist code 0; finger code 0 is ``motion_base + vocab_per_part``."""
    vocab_per_part: int
    img_context: int
    pad: int
    size: int
    """Tokens in the whole vocabulary."""

    @property
    def rows(self) -> int:
        """Rows of the embedding and of the LM head."""
        return embedding_rows(self.size)

    def motion_ids(self, codes: torch.Tensor, part: int) -> torch.Tensor:
        """Token ids of ``codes`` (values in [0, vocab_per_part)) of part 0 (wrist) or 1 (finger)."""
        return codes.long() + self.motion_base + part * self.vocab_per_part

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of ``motion_ids``: the code within its part."""
        return (ids - self.motion_base) % self.vocab_per_part


def byte_level_tokenizer(size: int | None = None) -> PreTrainedTokenizerFast:
    """A 256-symbol byte-level tokenizer with InternVL's image tokens: real HF classes, nothing downloaded.

    ``size`` pads the vocabulary to that many tokens with symbols no text ever produces (``<unused_i>``), ahead of
    the special tokens, so a random backbone built over it has a published model's embedding shape.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = 4  # PAD and the three image tokens, added below
    if size is not None and size < len(alphabet) + specials:
        raise ValueError(f"a byte-level vocabulary of {size} tokens is too small: it needs at least "
                         f"{len(alphabet) + specials}")
    fillers = [f"<unused_{i}>" for i in range(0 if size is None else size - len(alphabet) - specials)]
    vocab = {symbol: i for i, symbol in enumerate(alphabet + fillers)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=PAD)
    tok.add_special_tokens({"additional_special_tokens": [IMG_START, IMG_END, IMG_CONTEXT]})
    return tok


def load_text_tokenizer(pretrained: str | None, arch: str | None = None) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer from a local folder; without a checkpoint, the byte-level one, padded to the
    published vocabulary of ``arch`` (``model.arch``) when it has one."""
    if pretrained is None:
        return byte_level_tokenizer(PUBLISHED_TEXT_VOCAB.get(arch))
    try:
        tok = AutoTokenizer.from_pretrained(pretrained, local_files_only=True, trust_remote_code=False)
    except (OSError, TypeError, ValueError) as err:  # without tokenizer files transformers fails on a None path
        raise FileNotFoundError(f"no text tokenizer could be loaded from model.pretrained={pretrained} ({err}): the "
                                "folder must hold the checkpoint's tokenizer files (tokenizer.json or vocab.json + "
                                "merges.txt, tokenizer_config.json) beside its weights") from None
    missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT) if t not in tok.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer in {pretrained} lacks InternVL image tokens {missing}: "
                         "point model.pretrained at an InternVL3 checkpoint in the transformers format")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def add_motion_vocab(tok: PreTrainedTokenizerBase, vocab_per_part: int) -> MotionVocab:
    """Add ``<mot>``, ``</mot>``, ``[MASK]`` and the motion codes to ``tok`` (idempotent) and return their ids."""
    names = [MOT_START, MOT_END, MASK] + [f"<{part}_{i}>" for part in PARTS for i in range(vocab_per_part)]
    if MOT_START not in tok.get_vocab():
        tok.add_tokens(names, special_tokens=True)
    ids = tok.convert_tokens_to_ids(names[:4])
    base = ids[3]
    last = tok.convert_tokens_to_ids(names[-1])
    if last != base + 2 * vocab_per_part - 1:
        raise ValueError(f"motion tokens in the tokenizer are not contiguous ({base}..{last}) or the tokenizer "
                         f"was built for another vocabulary size than {vocab_per_part} per part")
    return MotionVocab(mot_start=ids[0], mot_end=ids[1], mask=ids[2], motion_base=base,
                       vocab_per_part=vocab_per_part, img_context=tok.convert_tokens_to_ids(IMG_CONTEXT),
                       pad=tok.pad_token_id, size=len(tok))
