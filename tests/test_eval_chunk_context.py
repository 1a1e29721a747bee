"""MCP decoding's short passes (``jala_ds/eval/chunk_context.py``): after a chunk's recorded first pass, running
the language model on the chunk alone gives the hidden states a pass over the whole sequence gives, at every
later pass, for the first chunk of each row and for a chunk after an already filled one."""
from __future__ import annotations

import pytest
import torch

from jala_ds.eval.chunk_context import ChunkContext
from jala_ds.eval.mcp_decoding import Decoding, MotionGenerator


@pytest.fixture(scope="module")
def decoding_batch(tiny_generation):
    """The tiny model and a generation batch of two windows, two ensemble members each (four rows)."""
    cfg, model, tokenizer, vocab, records = tiny_generation
    # A fresh model hides what these tests look for: every motion code starts with the same embedding (the mean
    # of the text ones), so a chunk's hidden states would not depend on its tokens; and attention is almost
    # uniform (scores ~0.05), so a stale key would hardly show. Distinct unit-scale embeddings and sharper scores.
    with torch.no_grad():
        model.backbone.get_input_embeddings().weight.normal_(generator=torch.Generator().manual_seed(0))
        for layer in model.backbone.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
    generator = MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(ensemble=2))
    _, batch, _ = generator.prepare(records[:2])
    return model, generator, batch


def fill_randomly(ids: torch.Tensor, positions: torch.Tensor, candidates: torch.Tensor, share: float,
                  generator: torch.Generator) -> None:
    """Put a valid code at a random ``share`` of each chunk's ``positions`` ``[R, T]`` (flat into ``ids``)."""
    pick = torch.rand(positions.shape, generator=generator) < share
    code = torch.randint(candidates.shape[1], positions.shape, generator=generator)
    tokens = candidates.gather(1, code.T).T
    ids[positions[pick]] = tokens[pick]


@torch.no_grad()
@pytest.mark.parametrize("chunk_rank", [0, 1], ids=["first chunk", "after a filled chunk"])
def test_short_passes_give_the_whole_sequence_hidden_states(decoding_batch, chunk_rank):
    model, generator, original = decoding_batch
    batch = {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in original.items()}
    width, per_chunk = batch["input_ids"].shape[1], generator.tokens_per_chunk
    chunk_tokens = batch["chunk_tokens"]
    row_of_chunk = chunk_tokens[:, 0] // width
    rows = row_of_chunk.unique()
    first = torch.searchsorted(row_of_chunk, rows)
    assert bool((row_of_chunk[first + 1] == rows).all()), "every row holds two chunks, one per hand"
    chunks = first + chunk_rank
    positions = chunk_tokens[chunks]
    ids, draws = batch["input_ids"].view(-1), torch.Generator().manual_seed(chunk_rank)
    if chunk_rank:  # the earlier chunk is finished: context for this one
        fill_randomly(ids, chunk_tokens[first], generator.candidates, 1.0, draws)

    features = model.encode_frames(batch)
    context = ChunkContext(rows)
    model.hidden_states(batch, features, past_key_values=context)
    context.start_refreshing(batch, positions - rows[:, None] * width)
    latent = model.latent_states_per_token(batch, features)[chunks]
    for share in (0.3, 0.7):  # two passes, so the second reads keys and values the first refreshed
        fill_randomly(ids, positions, generator.candidates, share, draws)
        short = context.chunk_hidden_states(model, batch, latent)
        whole, _ = model.hidden_states(batch, features)
        assert short.shape == (len(rows), per_chunk, whole.shape[-1])
        torch.testing.assert_close(short, whole.flatten(0, 1)[positions], rtol=1e-5, atol=1e-5)


def test_a_context_records_exactly_one_whole_pass_before_refreshing(decoding_batch):
    model, _, batch = decoding_batch
    context = ChunkContext(torch.tensor([0]))
    with pytest.raises(RuntimeError, match="recorded nothing"):
        context.start_refreshing(batch, torch.zeros(1, 4, dtype=torch.long))
    with torch.no_grad():
        model.hidden_states(batch, model.encode_frames(batch), past_key_values=context)
        with pytest.raises(RuntimeError, match="one full pass per ChunkContext"):
            model.hidden_states(batch, model.encode_frames(batch), past_key_values=context)


def test_whole_mcp_decoding_reads_the_same_logits_with_recorded_keys(decoding_batch, tiny_generation, tiny_corpus):
    """Every pass of every chunk, to the last one, of a batch mixing a two-handed window (L1 R1 L2 R2) and a
    shorter one-hand window: the short passes read the logits whole-sequence passes read, and fill the same codes."""
    from streaming import LocalDataset

    from jala_ds.data.schema import labelled_hands

    model, _, _ = decoding_batch  # the sharpened model
    cfg, _, tokenizer, vocab, _ = tiny_generation
    lab = LocalDataset(local=str(tiny_corpus.mds / "lab"))
    windows = [record for record in map(lab.__getitem__, range(len(lab))) if len(record["frame_index"]) > 2]
    records = [next(r for r in windows if len(labelled_hands(r)) == hands) for hands in (2, 1)]
    runs = []
    for reuse in (True, False):
        gen = MotionGenerator(cfg, model, tokenizer, vocab,
                              decoding=Decoding(ensemble=2, fraction=0.25, reuse_context=reuse))
        documents, batch, streams = gen.prepare(records)
        logits = []
        hook = model.backbone.lm_head.register_forward_hook(lambda module, args, out: logits.append(out.detach()))
        try:
            for _ in gen.fill(batch, streams):
                pass
        finally:
            hook.remove()
        runs.append((logits, batch["input_ids"]))
    assert len(documents[0]) != len(documents[1]) and [len(d.chunk_hand) for d in documents] == [4, 2]
    (short, short_ids), (whole, whole_ids) = runs
    assert len(short) == len(whole) == 4 * gen.passes_per_chunk
    for a, b in zip(short, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(short_ids, whole_ids) and not (short_ids == vocab.mask).any()
