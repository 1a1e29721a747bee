"""MCP decoding on the tiny model (untrained: decoding mechanics do not need a good model): each pass fixes exactly
ceil(fraction * tokens) masked tokens, only valid codes are ever chosen, a seed reproduces the motion, and the
MANO-space ensemble returns valid rotations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jala_ds.data.motion_tokens import build_motion_tokenizer
from jala_ds.eval.mcp_decoding import (
    Decoding,
    MotionGenerator,
    candidate_ids,
    chunk_rows,
    chunks_by_rank,
    ensemble_poses,
    positions_to_fix,
)
from jala_ds.motion.mano import split_frames


def generator(tiny_generation, **decoding) -> MotionGenerator:
    cfg, model, tokenizer, vocab, _ = tiny_generation
    return MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(**decoding))


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.3])
def test_each_pass_fixes_exactly_the_configured_number_of_tokens(tiny_generation, fraction):
    gen = generator(tiny_generation, fraction=fraction, ensemble=2)
    per_pass = math.ceil(fraction * gen.tokens_per_chunk)
    _, batch, streams = gen.prepare(tiny_generation[4])
    still_masked = [masked.sum(dim=1) for masked in gen.fill(batch, streams)]
    rows = batch["input_ids"].shape[0]
    # chunk after chunk: the mask count of every row being filled falls by per_pass each pass, to zero
    expected = [max(gen.tokens_per_chunk - per_pass * p, 0) for p in range(1, gen.passes_per_chunk + 1)]
    counts = [int(c[0]) for c in still_masked]
    assert counts[:len(expected)] == expected and len(counts) % len(expected) == 0
    assert all(len(c) <= rows and bool((c == c[0]).all()) for c in still_masked)
    assert not (batch["input_ids"] == tiny_generation[3].mask).any()


def test_generation_encodes_each_chunks_first_frame_and_never_its_last(tiny_generation):
    gen = generator(tiny_generation, fraction=0.25, ensemble=2)
    records = tiny_generation[4]
    documents, batch, _ = gen.prepare(records)
    index = batch["chunk_frame_index"]
    assert torch.equal(index[:, 0], index[:, 1]), "LSP reads (o_t, o_t)"
    assert index.unique().tolist() == list(range(len(batch["encoder_frames"]))), "no other frame is encoded"
    firsts = []
    for record, document in zip(records, documents):
        example = gen.examples.with_pixels(record, document)
        firsts += [example.encoder_frames[example.chunk_frame_index[:, 0]]] * gen.decoding.ensemble
    assert torch.equal(batch["encoder_frames"][index[:, 0]].cpu(), torch.cat(firsts))


def test_only_codes_the_tokenizer_can_decode_are_chosen(tiny_generation):
    cfg, *_ = tiny_generation
    clips = generator(tiny_generation, fraction=0.25, ensemble=2).generate(tiny_generation[4])
    tokenizer = build_motion_tokenizer(cfg.motion_tokenizer)
    for clip in clips:
        for motion in clip.hands.values():
            for codes in motion.member_codes:
                assert tokenizer.decode(codes).shape == motion.true.shape
            assert motion.predicted.shape == motion.true.shape and np.isfinite(motion.predicted).all()


def test_candidates_are_the_parts_codes_within_each_stage(tiny_generation):
    cfg, _, _, vocab, _ = tiny_generation
    tok = cfg.motion_tokenizer
    ids = candidate_ids(vocab, tok)
    assert ids.shape == (tok.tokens_per_chunk, tok.codes_per_stage)
    codes, part = vocab.codes(ids), (ids - vocab.motion_base) // vocab.vocab_per_part
    assert bool((part[:tok.tokens_per_part] == 0).all()) and bool((part[tok.tokens_per_part:] == 1).all())
    stage = torch.arange(tok.tokens_per_chunk)[:, None] % tok.stages
    assert torch.equal(codes // tok.codes_per_stage, stage.expand_as(codes))


def test_a_seed_reproduces_the_motion(tiny_generation):
    first = generator(tiny_generation, fraction=0.25, ensemble=2, seed=7).generate(tiny_generation[4])
    again = generator(tiny_generation, fraction=0.25, ensemble=2, seed=7).generate(tiny_generation[4])
    for a, b in zip(first, again):
        for hand in a.hands:
            assert np.array_equal(a.hands[hand].member_codes, b.hands[hand].member_codes)
            assert np.array_equal(a.hands[hand].predicted, b.hands[hand].predicted)


def test_positions_follow_confidence_and_the_seed_changes_the_order():
    masked = torch.ones(1, 16, dtype=torch.bool)
    masked[0, :4] = False
    confidence = torch.linspace(0.1, 0.9, 16)[None]
    sure = positions_to_fix(masked, confidence, 3, torch.rand(1, 16), temperature=1e-4)
    assert sure[0].nonzero().squeeze(1).tolist() == [13, 14, 15]
    flat = torch.full((1, 16), 0.5)
    draws = {tuple(positions_to_fix(masked, flat, 3, torch.rand(1, 16, generator=torch.Generator().manual_seed(s)),
                                    1.0)[0].nonzero().squeeze(1).tolist()) for s in range(5)}
    assert len(draws) > 1 and all(len(d) == 3 and min(d) >= 4 for d in draws)
    assert int(positions_to_fix(masked, flat, 20, torch.rand(1, 16), 1.0).sum()) == 12  # never more than masked


def test_mano_ensemble_averages_translations_and_keeps_rotations_valid():
    rng = np.random.default_rng(0)
    member = rng.normal(size=(1, 5, 99)).astype(np.float32)
    wrist, _, fingers = split_frames(torch.from_numpy(member).double())
    valid = torch.cat([wrist.flatten(-2)[..., :6], torch.from_numpy(member[..., 6:9]).double(),
                       fingers[..., :2, :].flatten(-2).flatten(-2)], dim=-1).float().numpy()
    assert np.allclose(ensemble_poses(np.repeat(valid, 3, axis=0)), valid[0], atol=1e-5)
    other = valid.copy()
    other[..., 6:9] += 1.0
    mean = ensemble_poses(np.concatenate([valid, other, rng.normal(size=(1, 5, 99)).astype(np.float32)]))
    rotations = torch.cat([split_frames(torch.from_numpy(mean).double())[0][:, None],
                           split_frames(torch.from_numpy(mean).double())[2]], dim=1)
    eye = torch.eye(3, dtype=torch.float64).expand_as(rotations)
    assert torch.allclose(rotations @ rotations.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(rotations.shape[:-2], dtype=torch.float64))


@pytest.fixture(scope="module")
def ntp_generation(tiny_generation):
    """The tiny recipe as a Being-H0 backbone (next-token prediction), random, in eval mode."""
    from jala_ds.config import load_config
    from jala_ds.model.build import build_model

    _, _, tokenizer, vocab, records = tiny_generation
    cfg = load_config("tiny_cpu", ["model.objective=ntp", "model.align=false", "model.decoupled_ema=false"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab).eval()
    with torch.no_grad():  # the motion rows start equal (initialised alike): give their logits an order
        model.backbone.lm_head.weight[vocab.motion_base:] += 0.5 * torch.randn_like(
            model.backbone.lm_head.weight[vocab.motion_base:])
    return cfg, model, tokenizer, vocab, records


def test_next_token_decoding_fills_each_chunk_left_to_right_with_codes_valid_there(ntp_generation):
    cfg, model, tokenizer, vocab, records = ntp_generation
    gen = MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(ensemble=2))
    _, batch, streams = gen.prepare(records[:2])
    assert (batch["chunk_ids"] == -1).all(), "an ntp document is causal throughout"
    tokens = gen.tokens_per_chunk
    for step, masked in enumerate(gen.fill(batch, streams)):
        slot = step % tokens   # after each pass one more slot of the chunks being filled is set
        assert not masked[:, :slot + 1].any() and masked[:, slot + 1:].all()
    ids = batch["input_ids"].view(-1)[batch["chunk_tokens"]]
    assert (ids[:, :, None] == gen.candidates[None]).any(-1).all()


def test_next_token_decoding_reads_each_code_where_training_put_its_label(ntp_generation):
    """Near temperature 0 the first code of every row's first chunk is the most likely valid one at the
    position before it (``<mot>``), from one forward of the prepared batch."""
    cfg, model, tokenizer, vocab, records = ntp_generation
    gen = MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(ensemble=1, temperature=1e-6))
    _, batch, streams = gen.prepare(records[:2])
    rows = batch["chunk_tokens"][:, 0] // batch["input_ids"].shape[1]
    first_chunks = torch.tensor([int((rows == r).nonzero()[0]) for r in rows.unique()])
    first = batch["chunk_tokens"][first_chunks, 0]
    assert (batch["input_ids"].view(-1)[first - 1] == vocab.mot_start).all()
    with torch.no_grad():
        final, _ = model.hidden_states(batch, model.encode_frames(batch))
        logits = model.backbone.lm_head(final.flatten(0, 1)[first - 1])
    expected = gen.candidates[0][logits[:, gen.candidates[0]].argmax(-1)]
    next(iter(gen.fill(batch, streams)))
    assert torch.equal(batch["input_ids"].view(-1)[first], expected)


def test_next_token_decoding_with_recorded_keys_matches_whole_sequence_passes(ntp_generation):
    """One position per pass against the recorded keys and values reads the logits a pass over the whole sequence
    reads, at every pass of every chunk of every row, and so draws the same codes."""
    cfg, model, tokenizer, vocab, records = ntp_generation
    runs = []
    for reuse in (True, False):
        logits = []
        hook = model.backbone.lm_head.register_forward_hook(lambda module, args, out: logits.append(out.detach()))
        try:
            gen = MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(ensemble=2, reuse_context=reuse))
            _, batch, streams = gen.prepare(records[:3])
            for _ in gen.fill(batch, streams):
                pass
        finally:
            hook.remove()
        runs.append((logits, batch["input_ids"].view(-1)[batch["chunk_tokens"]]))
    (short, short_codes), (whole, whole_codes) = runs
    assert len(short) == len(whole) == gen.tokens_per_chunk * len(list(chunks_by_rank(chunk_rows(batch))))
    for a, b in zip(short, whole):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert torch.equal(short_codes, whole_codes) and not (short_codes == vocab.mask).any()


def test_next_token_generation_gives_poses_and_a_seed_reproduces_them(ntp_generation):
    cfg, model, tokenizer, vocab, records = ntp_generation
    runs = [MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(ensemble=2, seed=3)).generate(records[:1])
            for _ in range(2)]
    for hand, motion in runs[0][0].hands.items():
        assert motion.predicted.shape == motion.true.shape and np.isfinite(motion.predicted).all()
        assert np.array_equal(motion.member_codes, runs[1][0].hands[hand].member_codes)


def windows_of(tiny_corpus, hands: int) -> dict:
    """A labelled lab clip with ``hands`` labelled hands and at least two time steps."""
    from streaming import LocalDataset

    from jala_ds.data.schema import labelled_hands

    lab = LocalDataset(local=str(tiny_corpus.mds / "lab"))
    return next(record for record in map(lab.__getitem__, range(len(lab)))
                if len(labelled_hands(record)) == hands and len(record["frame_index"]) > 2)


@pytest.mark.parametrize("objective", ["mcp", "ntp"])
def test_shown_steps_keep_their_codes_and_a_clip_does_not_depend_on_its_batch(objective, request, tiny_corpus):
    """With the first time step shown, a two-handed clip's chunks L1 R1 are context and L2 R2 are generated; beside
    a one-hand clip, whose second chunk L2 is generated while the first clip's R1 waits, the first clip fills its
    chunks in the same order and with the same codes as alone. ntp wrote generated codes over the shown chunks, and
    both objectives drew from the waiting row's stream."""
    cfg, model, tokenizer, vocab, _ = request.getfixturevalue("tiny_generation" if objective == "mcp"
                                                              else "ntp_generation")
    gen = MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(ensemble=2, fraction=0.25))
    both, one = windows_of(tiny_corpus, 2), windows_of(tiny_corpus, 1)
    runs = []
    for records in ([both], [both, one]):
        documents, batch, streams = gen.prepare(records, shown_steps=1)
        rows, length = slice(0, gen.decoding.ensemble), len(documents[0])
        before = batch["input_ids"][rows, :length].clone()
        trace = [masked[rows].clone() for masked in gen.fill(batch, streams)]
        runs.append((before, batch["input_ids"][rows, :length], trace))
    (before, alone, alone_trace), (_, batched, batched_trace) = runs
    shown = documents[0].motion_chunk[:length] >= 0
    shown &= (before != vocab.mask).numpy()[0]
    assert shown.sum() == 2 * gen.tokens_per_chunk, "L1 and R1 are shown"
    assert torch.equal(alone[:, shown], before[:, shown]), "shown chunks keep their true codes"
    assert not (alone == vocab.mask).any()
    # alone, the clip fills L2 then R2; batched, the one-hand clip's L2 runs first while R1 waits
    assert len(batched_trace) > len(alone_trace)
    for a, b in zip(alone_trace, batched_trace[-len(alone_trace):]):
        assert torch.equal(a, b)
    assert torch.equal(alone, batched)
