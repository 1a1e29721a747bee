"""Examples -> batch: greedy packing, the attention mask the ids encode, and the pixel tensors."""
import itertools

import numpy as np
import pytest
import torch
from streaming import LocalDataset

from jala_ds.config import load_config
from jala_ds.data.batch_index import batch_index
from jala_ds.data.collate import collate, fill_rows, pack_rows
from jala_ds.data.example import ExampleBuilder
from jala_ds.data.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_stored_frames,
    normalized,
    resized,
)
from jala_ds.data.motion_tokens import BinningTokenizer
from jala_ds.data.sequence import IGNORE, SequenceBuilder
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer
from jala_kernels import chunk_attention_bounds, chunk_mask


def make_examples(tiny_corpus, count, *overrides):
    cfg = load_config("tiny_cpu", list(overrides))
    tok = byte_level_tokenizer()
    vocab = add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)
    seq = SequenceBuilder(cfg.data, objective=cfg.model.objective, tokenizer=tok, vocab=vocab,
                          motion_tokenizer=BinningTokenizer(cfg.motion_tokenizer), n_image_tokens=4, seed=0)
    builder = ExampleBuilder(seq, image_size=cfg.model.image_size, encoder_image_size=cfg.model.visual_encoder_image_size)
    records = []
    for subset in ("lab", "wild"):
        dataset = LocalDataset(local=str(tiny_corpus.mds / subset))
        records += [dataset[i] for i in range(len(dataset))]
    picked = [records[i] for i in np.random.default_rng(0).permutation(len(records))[:count]]
    return [builder.build(r, i, 0) for i, r in enumerate(picked)], picked, vocab, cfg


def reference_mask(documents, rows, width, vocab):
    """The mask contract built from each document's own tokens: causal, plus its <mot>...</mot> spans."""
    mask = torch.zeros(len(rows), width, width, dtype=torch.bool)
    for r, row in enumerate(rows):
        offset = 0
        for index in row:
            doc = documents[index]
            n = len(doc)
            block = torch.ones(n, n).tril().bool()
            if doc.bidirectional:
                starts = np.flatnonzero(doc.input_ids == vocab.mot_start)
                ends = np.flatnonzero(doc.input_ids == vocab.mot_end)
                for s, e in zip(starts, ends):
                    block[s + 1:e, s + 1:e] = True
            mask[r, offset:offset + n, offset:offset + n] = block
            offset += n
    return mask


def order_preserving_cuts(n: int):
    """Every way to cut documents 0..n-1, in order, into contiguous rows."""
    for mask in range(2 ** (n - 1)):
        bounds = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        yield [list(range(a, b)) for a, b in itertools.pairwise(bounds)]


def test_greedy_fill_is_order_preserving_and_fills_each_row():
    assert fill_rows([5, 3, 4, 6, 2], 8) == [[0, 1], [2], [3, 4]]
    lengths = np.random.default_rng(1).integers(1, 50, 200).tolist()
    rows = fill_rows(lengths, 64)
    assert [i for row in rows for i in row] == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert all(sum(lengths[i] for i in prev) + lengths[row[0]] > 64 for prev, row in itertools.pairwise(rows))


def test_packing_balances_rows_instead_of_padding_a_short_remainder():
    # 16 documents of ~520 tokens under 8192: greedy gives a full row and a 1-document row padded to 8192.
    lengths = [520] * 16
    assert [len(row) for row in fill_rows(lengths, 8192)] == [15, 1]
    assert [len(row) for row in pack_rows(lengths, 8192)] == [8, 8]


@pytest.mark.parametrize("seed", range(40))
def test_packing_is_the_narrowest_cut_with_the_fewest_rows(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, int(rng.integers(1, 11))).tolist()
    max_tokens = int(rng.integers(max(lengths), 100))
    rows = pack_rows(lengths, max_tokens)
    assert [i for row in rows for i in row] == list(range(len(lengths)))

    def width(cut):
        return max(sum(lengths[i] for i in row) for row in cut)

    feasible = [cut for cut in order_preserving_cuts(len(lengths)) if width(cut) <= max_tokens]
    fewest = min(len(cut) for cut in feasible)
    assert len(rows) == fewest
    assert width(rows) == min(width(cut) for cut in feasible if len(cut) == fewest)


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("objective", ["mcp", "ntp"])
def test_ids_reproduce_the_reference_mask(tiny_corpus, pack, objective):
    extra = ["model.align=false", "model.decoupled_ema=false"] if objective == "ntp" else []
    examples, _, vocab, cfg = make_examples(tiny_corpus, 9, f"model.objective={objective}", *extra)
    documents = [e.document for e in examples]
    batch = collate(examples, pack=pack, max_tokens=cfg.data.max_tokens, vocab=vocab)
    rows = pack_rows([len(d) for d in documents], cfg.data.max_tokens) if pack else [[i] for i in range(9)]
    assert len(rows) < 9 if pack else len(rows) == 9
    width = batch["input_ids"].shape[1]
    assert torch.equal(chunk_mask(batch["doc_ids"], batch["chunk_ids"]), reference_mask(documents, rows, width, vocab))
    for r, row in enumerate(rows):
        offset = 0
        for d, index in enumerate(row):
            doc, span = documents[index], slice(offset, offset + len(documents[index]))
            assert batch["input_ids"][r, span].tolist() == doc.input_ids.tolist()
            assert batch["labels"][r, span].tolist() == doc.labels.tolist()
            assert batch["position_ids"][r, span].tolist() == list(range(len(doc)))
            assert (batch["doc_ids"][r, span] == d).all()
            offset += len(doc)
        assert (batch["doc_ids"][r, offset:] == -1).all() and (batch["input_ids"][r, offset:] == vocab.pad).all()


def test_chunk_tensors_line_up_with_motion_positions(tiny_corpus):
    examples, _, vocab, cfg = make_examples(tiny_corpus, 8, "data.pack=true")
    batch = collate(examples, pack=True, max_tokens=cfg.data.max_tokens, vocab=vocab)
    chunks = sum(len(e.document.chunk_hand) for e in examples)
    assert batch["chunk_frame_index"].shape == (chunks, 2) and batch["pixel_values"].shape == (8, 3, 56, 56)
    assert sorted(set(batch["motion_chunk"][batch["motion_chunk"] >= 0].tolist())) == list(range(chunks))
    pairs = batch["encoder_frames"][batch["chunk_frame_index"]]
    assert pairs.shape == (chunks, 2, 3, 28, 28)
    assert torch.equal(pairs, torch.cat([e.encoder_frames[e.chunk_frame_index] for e in examples]))
    assert batch["chunk_hand"].tolist() == [h for e in examples for h in e.document.chunk_hand.tolist()]
    assert batch["chunk_labeled"].tolist() == [e.document.labeled for e in examples for _ in e.document.chunk_hand]
    assert batch["sample_ids"] == [e.document.sample_id for e in examples]
    in_chunk = batch["motion_chunk"] >= 0
    ids = batch["input_ids"][in_chunk]
    is_motion = (ids >= vocab.motion_base) & (ids < vocab.motion_base + 2 * vocab.vocab_per_part)
    assert (is_motion | (ids == vocab.mask)).all()


def test_each_boundary_frame_crosses_once_and_each_chunk_indexes_its_own_pair(tiny_corpus):
    examples, records, _, cfg = make_examples(tiny_corpus, 8)
    shared = 0
    for example, record in zip(examples, records):
        stored = example.document.chunk_frames  # [c, 2] stored frame numbers
        assert len(example.encoder_frames) == len(np.unique(stored))
        shared += len(stored) * 2 - len(example.encoder_frames)
        want = resized(decode_stored_frames(record, stored.ravel().tolist()), cfg.model.visual_encoder_image_size)
        assert torch.equal(example.encoder_frames[example.chunk_frame_index], want.view(*stored.shape, *want.shape[1:]))
    assert shared > 0, "the sample has both hands' chunks, or consecutive ones: some frames are shared"


def test_index_fields_are_the_positions_the_model_would_find_on_the_device(tiny_corpus):
    examples, _, vocab, cfg = make_examples(tiny_corpus, 8, "data.pack=true")
    batch = collate(examples, pack=True, max_tokens=cfg.data.max_tokens, vocab=vocab)
    flat_ids, flat_labels, flat_chunk = (batch[key].flatten() for key in ("input_ids", "labels", "motion_chunk"))
    assert torch.equal(batch["image_positions"], (flat_ids == vocab.img_context).nonzero().squeeze(1))
    assert torch.equal(batch["label_positions"], (flat_labels != IGNORE).nonzero().squeeze(1))
    chunks, per_chunk = batch["chunk_tokens"].shape
    assert chunks == len(batch["chunk_hand"]) and per_chunk == cfg.motion_tokenizer.tokens_per_chunk
    assert torch.equal(flat_chunk[batch["chunk_tokens"]], torch.arange(chunks)[:, None].expand(-1, per_chunk))
    assert bool((batch["chunk_tokens"].diff(dim=1) > 0).all()), "each chunk's positions in sequence order"
    expected = torch.stack(chunk_attention_bounds(batch["doc_ids"], batch["chunk_ids"]))
    assert batch["chunk_bounds"].dtype == torch.int32 and torch.equal(batch["chunk_bounds"], expected)


def test_chunks_of_unequal_length_are_refused_with_their_counts():
    ids = torch.zeros(1, 6, dtype=torch.int64)
    motion_chunk = torch.tensor([[-1, 0, 0, 1, 1, 1]])
    doc, chunk = torch.zeros(1, 6, dtype=torch.int32), motion_chunk.to(torch.int32)
    with pytest.raises(ValueError, match=r"motion_chunk: the batch's 2 chunks .* got \[2, 3\]"):
        batch_index(ids, ids, motion_chunk, doc, chunk, num_chunks=2, image_token_id=1, ignore=IGNORE)


def test_normalising_under_fake_tensors_first_leaves_later_real_frames_normalised():
    """The FLOP tests run the frame encoder on fake tensors: had that first call cached its constants, every later
    real call of the process read fake ones and normalised nothing (seen in CI: a test worker's frame encoders saw
    raw pixels)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from jala_ds.data import frames

    frames._cached_constants.cache_clear()
    with FakeTensorMode(allow_non_fake_inputs=True):
        normalized(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    torch.testing.assert_close(normalized(pixels) * IMAGENET_STD + IMAGENET_MEAN, torch.ones(1, 3, 2, 2))


def test_pixels_cross_as_decoded_uint8_and_normalise_to_imagenet_statistics(tiny_corpus):
    examples, records, vocab, cfg = make_examples(tiny_corpus, 3)
    batch = collate(examples, pack=False, max_tokens=cfg.data.max_tokens, vocab=vocab)
    assert batch["pixel_values"].dtype == batch["encoder_frames"].dtype == torch.uint8
    for i, (example, record) in enumerate(zip(examples, records)):
        decoded = decode_stored_frames(record, [example.document.image_frame])
        torch.testing.assert_close(normalized(decoded) * IMAGENET_STD + IMAGENET_MEAN, decoded / 255, atol=1e-6, rtol=0)
        pixels = batch["pixel_values"][i]  # resized 64 -> 56 px
        assert pixels.shape == (3, 56, 56)
        torch.testing.assert_close(pixels.double().mean(dim=(1, 2)), decoded[0].double().mean(dim=(1, 2)), atol=2.5,
                                   rtol=0)
    assert normalized(batch["pixel_values"], torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="must be uint8"):
        normalized(normalized(batch["pixel_values"]))


def test_a_document_longer_than_max_tokens_is_an_error_naming_it(tiny_corpus):
    examples, _, vocab, _ = make_examples(tiny_corpus, 2)
    longest = max(examples, key=lambda e: len(e.document)).document
    with pytest.raises(ValueError, match=f"sample {longest.sample_id}.*data.max_tokens=20"):
        collate(examples, pack=True, max_tokens=20, vocab=vocab)
