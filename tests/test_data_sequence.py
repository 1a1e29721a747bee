"""Record -> document: the token layout, hybrid and full masking statistics, description and ntp labels."""
import numpy as np
import pytest
from streaming import LocalDataset

from jala_ds.config import load_config
from jala_ds.data.motion_tokens import BinningTokenizer
from jala_ds.data.schema import HANDS, array_bytes, hand_poses
from jala_ds.data.sequence import IGNORE, SequenceBuilder
from jala_ds.vocab import IMG_END, IMG_START, add_motion_vocab, byte_level_tokenizer

N_IMG = 4


@pytest.fixture(scope="module")
def corpus_records(tiny_corpus):
    out = []
    for subset in ("lab", "wild"):
        dataset = LocalDataset(local=str(tiny_corpus.mds / subset))
        out += [dataset[i] for i in range(len(dataset))]
    return out


def builder(*overrides):
    cfg = load_config("tiny_cpu", list(overrides))
    tok = byte_level_tokenizer()
    vocab = add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)
    seq = SequenceBuilder(cfg.data, objective=cfg.model.objective, tokenizer=tok, vocab=vocab,
                          motion_tokenizer=BinningTokenizer(cfg.motion_tokenizer), n_image_tokens=N_IMG,
                          seed=cfg.train.seed)
    return seq, tok, vocab, cfg


def pick(records, *, labeled, task=None, hands=None, min_chunks=1):
    for record in records:
        present = tuple(h for h in HANDS if len(hand_poses(record, h)))
        if (bool(record["labeled"]) == labeled and (task is None or record["task"] == task)
                and (hands is None or present == hands) and len(record["frame_index"]) - 1 >= min_chunks):
            return record
    raise LookupError("no such record in the tiny corpus")


def chunk_rows(doc, vocab):
    """``[chunks, tokens_per_chunk]`` motion ids of the document, from its ``<mot>``/``</mot>`` markers."""
    starts = np.flatnonzero(doc.input_ids == vocab.mot_start)
    ends = np.flatnonzero(doc.input_ids == vocab.mot_end)
    return np.stack([doc.input_ids[s + 1:e] for s, e in zip(starts, ends)]), starts


def test_layout_interleaves_hands_after_image_and_instruction(corpus_records):
    seq, tok, vocab, cfg = builder()
    record = pick(corpus_records, labeled=True, task="generation", hands=("left", "right"), min_chunks=3)
    doc = seq.build(record, sample_index=7, epoch=0)
    start = doc.image_frame
    width = min(cfg.data.max_chunks, len(record["frame_index"]) - 1)
    assert doc.sample_id == f"{record['clip_id']}@{start}:{start + width}"
    img = tok.convert_tokens_to_ids([IMG_START, IMG_END])
    assert doc.input_ids[:N_IMG + 2].tolist() == [img[0]] + [vocab.img_context] * N_IMG + [img[1]]
    text = tok(record["instruction"], add_special_tokens=False)["input_ids"][:cfg.data.max_text_tokens]
    assert doc.input_ids[N_IMG + 2:N_IMG + 2 + len(text)].tolist() == text
    rows, starts = chunk_rows(doc, vocab)
    assert doc.chunk_hand.tolist() == [0, 1] * width
    np.testing.assert_array_equal(doc.chunk_frames, [[start + j, start + j + 1] for j in range(width) for _ in HANDS])
    # Independent reference: encode each hand's window and lay the chunks out L1 R1 L2 R2.
    tokenizer = BinningTokenizer(cfg.motion_tokenizer)
    part = np.repeat([0, vocab.vocab_per_part], cfg.motion_tokenizer.tokens_per_part)
    codes = {h: tokenizer.encode(hand_poses(record, HANDS[h])[start * 15:(start + width) * 15]) for h in (0, 1)}
    truth = np.stack([codes[h][j] + vocab.motion_base + part for j in range(width) for h in (0, 1)])
    masked = rows == vocab.mask
    np.testing.assert_array_equal(rows[~masked], truth[~masked])
    for k, s in enumerate(starts):
        span = slice(s + 1, s + 1 + rows.shape[1])
        np.testing.assert_array_equal(doc.labels[span], np.where(masked[k], truth[k], IGNORE))
        assert (doc.motion_chunk[span] == k).all() and doc.motion_chunk[s] == doc.motion_chunk[s + rows.shape[1] + 1] == -1
    assert (doc.labels[:starts[0]] == IGNORE).all() and doc.labeled and doc.bidirectional


def masking_pattern(seq, vocab, records, epochs):
    targets, ratios, later_masked, later_total, earlier_masked = [], [], 0, 0, 0
    for epoch in range(epochs):
        for index, record in enumerate(records):
            rows, _ = chunk_rows(seq.build(record, index, epoch), vocab)
            masked = rows == vocab.mask
            target = int(np.flatnonzero(masked.any(axis=1))[0])  # the target always has a masked token
            targets.append((target, len(rows)))
            ratios.append(masked[target].mean())
            earlier_masked += masked[:target].sum()
            later_masked += masked[target + 1:].sum()
            later_total += masked[target + 1:].size
    return targets, np.array(ratios), earlier_masked, later_masked / max(later_total, 1)


def test_hybrid_masking_statistics_match_the_configuration(corpus_records):
    seq, _, vocab, cfg = builder()
    records = [r for r in corpus_records if r["labeled"] and r["task"] != "description"
               and sum(len(hand_poses(r, h)) > 0 for h in HANDS) == 2 and len(r["frame_index"]) > 2]
    targets, ratios, earlier, later_rate = masking_pattern(seq, vocab, records, epochs=120)
    tokens = cfg.motion_tokenizer.tokens_per_chunk
    u = np.linspace(cfg.data.mask_ratio_min, cfg.data.mask_ratio_max, 100001)
    expected_ratio = np.maximum(1, np.round(u * tokens)).mean() / tokens
    assert earlier == 0, "chunks before the target stay intact"
    assert abs(ratios.mean() - expected_ratio) < 0.02
    assert ratios.min() >= max(1, round(cfg.data.mask_ratio_min * tokens)) / tokens - 1e-9
    assert abs(later_rate - cfg.data.later_chunk_mask_prob) < 0.01
    four = [t for t, n in targets if n == 4]
    assert len(four) > 500 and np.abs(np.bincount(four, minlength=4) / len(four) - 0.25).max() < 0.05


def test_fixed_ratio_and_no_later_masking_are_exact(corpus_records):
    seq, _, vocab, _ = builder("data.mask_ratio_min=0.5", "data.mask_ratio_max=0.5", "data.later_chunk_mask_prob=0")
    records = [r for r in corpus_records if r["labeled"] and r["task"] == "generation"]
    _, ratios, earlier, later_rate = masking_pattern(seq, vocab, records, epochs=3)
    assert (ratios == 0.5).all() and earlier == 0 and later_rate == 0


@pytest.mark.parametrize("hands, streams", [("both", [0, 1]), ("right", [1])])
def test_video_only_samples_are_fully_masked_without_labels(corpus_records, hands, streams):
    seq, _, vocab, _ = builder(f"data.video_only_hands={hands}")
    for task in ("generation", "description"):
        record = pick(corpus_records, labeled=False, task=task)
        doc = seq.build(record, 3, 0)
        rows, _ = chunk_rows(doc, vocab)
        assert (rows == vocab.mask).all() and (doc.labels == IGNORE).all() and not doc.labeled
        assert doc.chunk_hand.tolist() == streams * (len(rows) // len(streams))


def test_pseudo_labels_as_unlabeled_masks_wild_labelled_clips(corpus_records):
    record = next(r for r in corpus_records if r["subset"] == "wild" and r["labeled"])
    seq, _, vocab, _ = builder("data.pseudo_labels_as_unlabeled=true")
    doc = seq.build(record, 0, 0)
    assert not doc.labeled and (chunk_rows(doc, vocab)[0] == vocab.mask).all() and (doc.labels == IGNORE).all()
    assert builder()[0].build(record, 0, 0).labeled


def test_description_puts_intact_motion_first_and_targets_the_text(corpus_records):
    seq, tok, vocab, _ = builder()
    record = pick(corpus_records, labeled=True, task="description")
    doc = seq.build(record, 5, 2)
    rows, starts = chunk_rows(doc, vocab)
    assert starts[0] == N_IMG + 2 and not (rows == vocab.mask).any()
    text = tok(record["instruction"], add_special_tokens=False)["input_ids"][:32]
    assert doc.input_ids[-len(text):].tolist() == text
    expected = np.full(len(doc), IGNORE)
    expected[len(doc) - len(text) - 1:-1] = text
    np.testing.assert_array_equal(doc.labels, expected)


def test_ntp_objective_is_causal_with_next_motion_token_labels(corpus_records):
    seq, _, vocab, _ = builder("model.objective=ntp", "model.align=false", "model.decoupled_ema=false")
    doc = seq.build(pick(corpus_records, labeled=True, task="generation", min_chunks=2), 1, 0)
    assert not doc.bidirectional and not (doc.input_ids == vocab.mask).any()
    next_is_code = np.append(doc.motion_chunk[1:] >= 0, False)
    np.testing.assert_array_equal(doc.labels[next_is_code], doc.input_ids[1:][next_is_code[:-1]])
    assert (doc.labels[~next_is_code] == IGNORE).all() and next_is_code.sum() == (doc.motion_chunk >= 0).sum()


def test_same_seed_epoch_and_index_give_the_same_document(corpus_records):
    seq, _, _, _ = builder("data.max_chunks=1")
    records = [r for r in corpus_records if r["labeled"] and len(r["frame_index"]) > 3]
    def docs(epoch):
        return [seq.build(r, i, epoch) for i, r in enumerate(records)]
    first, again, other = docs(0), docs(0), docs(1)
    assert all((a.input_ids == b.input_ids).all() and a.sample_id == b.sample_id for a, b in zip(first, again))
    assert any(a.sample_id != b.sample_id or (a.input_ids != b.input_ids).any() for a, b in zip(first, other))


def test_stored_tokens_are_used_instead_of_encoding(corpus_records):
    seq, _, vocab, cfg = builder()
    record = dict(pick(corpus_records, labeled=True, task="description", hands=("left", "right")))
    chunks = len(record["frame_index"]) - 1
    tokens = cfg.motion_tokenizer.tokens_per_chunk
    for h, hand in enumerate(HANDS):
        record[f"{hand}_tokens"] = array_bytes(np.full((chunks, tokens), 3 + h, np.int32), "<i4")
    rows, _ = chunk_rows(seq.build(record, 0, 0), vocab)
    assert vocab.codes(rows).tolist() == [[3] * tokens, [4] * tokens] * (len(rows) // 2)
    record["left_tokens"] = array_bytes(np.zeros((chunks, tokens - 1), np.int32), "<i4")
    with pytest.raises(ValueError, match="jala data tokenize"):
        seq.build(record, 0, 0)


def test_the_longest_document_bounds_every_document_and_is_reached(corpus_records):
    """``longest`` is what the loader checks data.max_tokens against before training starts: no document is
    longer, and a two-handed clip with a long instruction and a full window is that long."""
    seq, _, _, _ = builder("data.max_text_tokens=8", "data.max_chunks=2")
    assert max(len(seq.build(record, i, 0)) for i, record in enumerate(corpus_records)) <= seq.longest
    record = pick(corpus_records, labeled=True, hands=HANDS, min_chunks=2)
    assert len(seq.build({**record, "instruction": "x" * 100}, 0, 0)) == seq.longest


def test_tokenizer_and_vocabulary_must_agree():
    cfg = load_config("tiny_cpu")
    tok = byte_level_tokenizer()
    vocab = add_motion_vocab(tok, 64)
    with pytest.raises(ValueError, match="add_motion_vocab"):
        SequenceBuilder(cfg.data, objective="mcp", tokenizer=tok, vocab=vocab,
                        motion_tokenizer=BinningTokenizer(cfg.motion_tokenizer), n_image_tokens=4, seed=0)


@pytest.mark.parametrize("labeled", [True, False])
def test_the_masked_view_hides_every_code_and_keeps_the_training_layout(corpus_records, labeled):
    """``jala eval latents`` reads lab and wild clips the same way: no true code visible, no label."""
    seq, _, vocab, cfg = builder()
    record = pick(corpus_records, labeled=labeled, task="generation", min_chunks=2)
    masked = seq.build_masked(record)
    rows, _ = chunk_rows(masked, vocab)
    assert (rows == vocab.mask).all() and (masked.labels == IGNORE).all() and not masked.labeled
    width = min(cfg.data.max_chunks, len(record["frame_index"]) - 1)
    assert masked.sample_id == f"{record['clip_id']}@0:{width}"
    training = seq.assemble(record, 0, width, labeled=labeled, describe=False, masking=None)
    assert masked.chunk_hand.tolist() == training.chunk_hand.tolist() and masked.bidirectional
    np.testing.assert_array_equal(masked.chunk_frames, training.chunk_frames)
