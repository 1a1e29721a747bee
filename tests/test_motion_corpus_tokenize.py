"""`jala data tokenize`'s work: a tokenized copy of a tiny MDS corpus in the converter's column format."""
import json
import shutil

import numpy as np
import pytest
import torch
from streaming import MDSWriter

from jala_ds.cli import main as jala
from jala_ds.data.mds_pieces import merge_pieces
from jala_ds.data.schema import MDS_COLUMNS, SHARD_HASHES, array_bytes, hand_poses, hand_tokens
from jala_ds.motion import corpus_tokenize
from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.corpus_copy import corpus_subsets
from jala_ds.motion.corpus_tokenize import tokenize_corpus, tokenize_records
from jala_ds.motion.pose_corpus import open_mds
from jala_ds.motion.synthetic import synthetic_motion
from jala_ds.motion.tokenizer import load_grvq_tokenizer, save_tokenizer
from jala_ds.motion.tokenizer_model import MotionTokenizerModel

CFG = TokenizerConfig(groups=2, stages=2, codes_per_stage=8, latent_dim=16, conv_width=16)


def record(clip_id: str, subset: str, left_frames: int, right_frames: int, rng) -> dict:
    """A clip in the converter's format; frame_index lists one boundary frame per chunk (+1), frames are empty."""
    length = max(left_frames, right_frames)
    boundaries = np.minimum(np.arange(length // 15 + 1) * 15, max(length - 1, 0)).astype(np.int32)
    poses = {hand: synthetic_motion(n, rng) if n else np.zeros((0, 99), np.float32)
             for hand, n in (("left", left_frames), ("right", right_frames))}
    return {"clip_id": clip_id, "source": "test", "subset": subset, "task": "generation",
            "instruction": f"clip {clip_id}", "fps": 30.0, "time_scale": 1.0 if subset == "lab" else 2.0,
            "frames": clip_id.encode(), "frame_offsets": np.arange(len(boundaries) + 1, dtype=np.int64),
            "frame_index": boundaries, "left": array_bytes(poses["left"], "<f4"),
            "right": array_bytes(poses["right"], "<f4"), "labeled": int(left_frames + right_frames > 0)}


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    clips = {"lab": [record("lab_0", "lab", 47, 47, rng), record("lab_1", "lab", 0, 30, rng)],
             "wild": [record("wild_0", "wild", 0, 61, rng), record("wild_1", "wild", 0, 0, rng)],
             "heldout/lab": [record("lab_2", "lab", 16, 0, rng)]}  # the converter's held-out split, for eval
    for subset, records in clips.items():
        with MDSWriter(out=str(tmp_path / "mds" / subset), columns=MDS_COLUMNS, hashes=SHARD_HASHES,
                       size_limit=4096) as writer:
            for r in records:
                writer.write(r)
    torch.manual_seed(0)
    model = MotionTokenizerModel(CFG, 15, torch.zeros(99), torch.ones(99))
    return tmp_path / "mds", save_tokenizer(model, tmp_path / "tokenizer", {"steps": 0})


def test_tokens_are_added_and_every_other_column_is_copied(corpus, tmp_path):
    src, checkpoint = corpus
    report = tokenize_corpus(checkpoint, src, tmp_path / "out")
    tok = load_grvq_tokenizer(checkpoint)
    assert report["clips"] == 5 and report["clips_per_s"] > 0
    assert report["tokenized_hands"] == 5            # lab_0 x2, lab_1, lab_2, wild_0
    assert report["chunks"] == 3 + 3 + 2 + 1 + 4
    for subset in ("lab", "wild", "heldout/lab"):
        before, after = open_mds(src / subset), open_mds(tmp_path / "out" / subset)
        assert len(before) == len(after)
        for i in range(len(before)):
            old, new = before[i], after[i]
            for column in MDS_COLUMNS:
                assert np.array_equal(np.asarray(new[column]), np.asarray(old[column])), column
            for hand in ("left", "right"):
                poses = hand_poses(old, hand)
                chunks = poses.shape[0] // 15
                expected = tok.encode(poses[:chunks * 15]) if chunks else np.zeros((0, tok.tokens_per_chunk))
                stored = np.frombuffer(new[f"{hand}_tokens"], dtype="<i4").reshape(-1, tok.tokens_per_chunk)
                assert np.array_equal(stored, expected)
                if chunks == len(old["frame_index"]) - 1 and chunks:
                    assert np.array_equal(hand_tokens(new, hand), expected)   # the data pipeline's reader
        index = json.loads((tmp_path / "out" / subset / "index.json").read_text())
        assert index["shards"][0]["hashes"] == SHARD_HASHES


def same_records(one, two):
    assert len(one) == len(two)
    for i in range(len(one)):
        assert set(one[i]) == set(two[i])
        for column in one[i]:
            assert np.array_equal(np.asarray(one[i][column]), np.asarray(two[i][column])), column


def test_a_stopped_copy_resumes_where_it_stopped(corpus, tmp_path, monkeypatch):
    # In pieces of one clip, the copy dies in its fourth piece. Resumed, it tokenizes only the pieces it had not
    # finished and ends with the shards and report of a copy that never stopped.
    src, checkpoint = corpus
    whole = tokenize_corpus(checkpoint, src, tmp_path / "whole", piece_clips=1)
    tokenize_corpus(checkpoint, src, tmp_path / "default")   # one piece per subset
    tokenized = []

    def dies_in_the_fourth_piece(tok, records):
        tokenized.extend(record["clip_id"] for record in records)
        if len(tokenized) == 4:
            raise RuntimeError("pre-empted")
        return tokenize_records(tok, records)

    monkeypatch.setattr(corpus_tokenize, "tokenize_records", dies_in_the_fourth_piece)
    with pytest.raises(RuntimeError, match="pre-empted"):
        tokenize_corpus(checkpoint, src, tmp_path / "out", piece_clips=1)
    with pytest.raises(FileExistsError, match="pass --resume"):
        tokenize_corpus(checkpoint, src, tmp_path / "out", piece_clips=1)
    tokenized.clear()
    report = tokenize_corpus(checkpoint, src, tmp_path / "out", piece_clips=1, resume=True)
    assert tokenized == ["wild_1", "lab_2"]   # lab_0, lab_1 and wild_0 were done
    assert report["copied_now"] == 2
    assert {key: report[key] for key in ("clips", "tokenized_hands", "chunks", "subsets")} == \
        {key: whole[key] for key in ("clips", "tokenized_hands", "chunks", "subsets")}
    for subset in corpus_subsets(src):
        assert (tmp_path / "out" / subset / "index.json").read_text() == \
            (tmp_path / "whole" / subset / "index.json").read_text()
        same_records(open_mds(tmp_path / "whole" / subset), open_mds(tmp_path / "out" / subset))
        # other pieces, other shards; the same records
        same_records(open_mds(tmp_path / "whole" / subset), open_mds(tmp_path / "default" / subset))


def test_a_copy_resumes_only_from_the_same_inputs(corpus, tmp_path):
    src, checkpoint = corpus
    tokenize_corpus(checkpoint, src, tmp_path / "out", piece_clips=2)
    other = save_tokenizer(MotionTokenizerModel(CFG, 15, torch.zeros(99), torch.ones(99)), tmp_path / "other",
                           {"steps": 0})
    with pytest.raises(ValueError, match="begun with tokenizer='[0-9a-f]{64}', this run has"):
        tokenize_corpus(other, src, tmp_path / "out", piece_clips=2, resume=True)
    report = tokenize_corpus(checkpoint, src, tmp_path / "out", piece_clips=2, resume=True)
    assert report["copied_now"] == 0 and report["clips"] == 5   # all done: only the indexes are written again
    report = tokenize_corpus(other, src, tmp_path / "out", piece_clips=2, overwrite=True)
    assert report["copied_now"] == 5


def test_a_piece_rank_0_cannot_see_is_named(corpus, tmp_path):
    src, checkpoint = corpus
    tokenize_corpus(checkpoint, src, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="piece00001: every rank must write --out on one shared filesystem"):
        merge_pieces(tmp_path / "out" / "lab", ["piece00000", "piece00001"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_a_cuda_device_is_refused_not_run_on_the_cpu(corpus, tmp_path, capsys):
    src, checkpoint = corpus
    assert jala(["data", "tokenize", "--tokenizer", str(checkpoint), "--src", str(src), "--out",
                 str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is visible here: pass --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out" / "lab").exists()


def test_refuses_to_overwrite(corpus, tmp_path):
    src, checkpoint = corpus
    with pytest.raises(ValueError, match="is in .*, where this build writes \\(and --overwrite deletes\\)"):
        tokenize_corpus(checkpoint, src, src)
    nested = tmp_path / "nested"   # a corpus in a folder named like a subset: --overwrite would delete it
    shutil.copytree(src, nested / "lab")
    with pytest.raises(ValueError, match=f"--src {nested / 'lab'} is in {nested / 'lab'}, where this build writes"):
        tokenize_corpus(checkpoint, nested / "lab", nested, overwrite=True)
    assert (nested / "lab" / "lab" / "index.json").is_file()
    tokenize_corpus(checkpoint, src, tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite to start again, or choose another --out"):
        tokenize_corpus(checkpoint, src, tmp_path / "out")


def test_overwrite_leaves_no_held_out_split_of_the_corpus_copied_before(corpus, tmp_path):
    """Evaluation reads <out>/heldout: one left by a copy of another corpus would be scored as this one's."""
    src, checkpoint = corpus
    tokenize_corpus(checkpoint, src, tmp_path / "out")
    shutil.rmtree(src / "heldout")   # now a corpus without a held-out split
    tokenize_corpus(checkpoint, src, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "heldout" / "lab").exists()


def test_a_pseudo_labelled_copy_is_refused(corpus, tmp_path):
    """Its video-only clips have labeled=1 and predicted codes but no poses: tokenized again they would be
    labelled clips with no codes."""
    src, checkpoint = corpus
    (src / "pieces").mkdir()
    (src / "pieces" / "plan.json").write_text(json.dumps({"build": "pseudo-label"}))
    with pytest.raises(ValueError, match="is a pseudo-labelled copy .*: tokenize the corpus it was labelled from"):
        tokenize_corpus(checkpoint, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_corpus_cut_into_other_chunks_is_refused(corpus, tmp_path):
    """Read as 15-frame chunks, a clip cut into 10-frame ones would get the codes of poses that straddle its
    chunks, with nothing said."""
    src, checkpoint = corpus
    (src / "pieces").mkdir()
    (src / "pieces" / "plan.json").write_text(json.dumps({"build": "convert", "settings": {"chunk_frames": 10}}))
    with pytest.raises(ValueError, match="encodes 15-frame chunks but --src .* was converted with chunk_frames=10: "
                                         "tokenize with a tokenizer trained on 10-frame chunks"):
        tokenize_corpus(checkpoint, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_converters_corpus_trains_a_tokenizer_and_gets_tokens_the_loader_reads(tiny_corpus, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)   # MLflow's store and artifacts
    assert jala(["tokenizer", "train", "--recipe", "tiny_cpu", f"data.mds_dir={tiny_corpus.mds}",
                 "motion_tokenizer.log_every=1", "--steps", "3", "--out", str(tmp_path / "tok")]) == 0
    report = tokenize_corpus(tmp_path / "tok", tiny_corpus.mds, tmp_path / "out")
    assert report["clips"] == len(open_mds(tiny_corpus.mds / "lab")) + len(open_mds(tiny_corpus.mds / "wild"))
    assert report["tokenized_hands"] > 0
    lab = open_mds(tmp_path / "out" / "lab")
    for i in range(len(lab)):
        for hand in ("left", "right"):
            tokens = hand_tokens(lab[i], hand)
            if hand_poses(lab[i], hand).shape[0] >= 15:
                assert tokens.shape == (len(lab[i]["frame_index"]) - 1, 2 * 4 * 1 * 2)
