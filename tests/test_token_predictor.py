"""The "JALA w/o latent" baseline: `jala token-predictor train` learns motion codes from boundary frames, `label`
writes them into the video-only clips, and the sequence builder makes labelled documents of those clips.

Measured here (the session's synthetic corpus, tiny recipe, binning tokenizer of 32 codes per part, 300 steps of
32 pairs, one CPU process): the predictor gets 60% of the probe's codes right, where the most frequent code at
each position gets 38% of them (55% when it scored a part's 32 codes at each position rather than its stage's 16).
The probe is the corpus' first 64 labelled pairs (tiny_cpu holds no clip out), so this shows the model reads the
frames, not that it generalises; the test asks for 10 points above that guess.
"""
import itertools
import json
import os
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from jala_ds.cli import main as jala
from jala_ds.config import load_config
from jala_ds.data.corpus_provenance import build_plan, converted_settings, tokenizer_fingerprint
from jala_ds.data.motion_tokens import build_motion_tokenizer
from jala_ds.data.schema import HANDS, TOKEN_COLUMNS, hand_tokens
from jala_ds.data.sequence import IGNORE, SequenceBuilder
from jala_ds.motion.chunk_pairs import LabelledChunkStream, boundary_frames, hand_codes, labelled_pairs
from jala_ds.motion.pose_corpus import open_mds
from jala_ds.motion.pseudo_label import pseudo_label_corpus
from jala_ds.motion.token_predictor import build_token_predictor, load_token_predictor, shape_of
from jala_ds.motion.train_token_predictor import probe_metrics, probe_pairs
from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

STEPS = 300


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("token_predictor")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)   # MLflow puts artifacts under ./mlruns
        code = jala(["token-predictor", "train", "--recipe", "tiny_cpu", f"data.mds_dir={tiny_corpus.mds}",
                     f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "tracking.experiment=predictor-test",
                     "--steps", str(STEPS), "--out", str(root / "predictor")])
    assert code == 0
    cfg = load_config("tiny_cpu", [f"data.mds_dir={tiny_corpus.mds}"])
    return {"root": root, "checkpoint": root / "predictor", "cfg": cfg,
            "tokenizer": build_motion_tokenizer(cfg.motion_tokenizer)}


@pytest.fixture(scope="module")
def labelled(trained, tiny_corpus):
    out = trained["root"] / "mds_pseudo"
    report = pseudo_label_corpus(trained["cfg"], trained["checkpoint"], tiny_corpus.mds, out)
    return out, report


def test_predictor_reads_the_frames_beyond_the_most_frequent_code(trained):
    model = load_token_predictor(trained["checkpoint"], expect=shape_of(trained["cfg"]))
    probe = probe_pairs(trained["cfg"], trained["tokenizer"])
    accuracy = probe_metrics(model, probe, torch.device("cpu"))["probe_token_accuracy"]
    guess = (probe.codes == torch.mode(probe.codes, 0).values).float().mean().item()
    print(f"probe token accuracy {accuracy:.2f} against {guess:.2f} for the most frequent code per position")
    assert accuracy > guess + 0.10
    # The checkpoint reloads as trained: the accuracy it recorded at the end is what the reloaded model scores.
    recorded = json.loads((trained["checkpoint"] / "config.json").read_text())["training"]
    assert recorded["probe_token_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    run = mlflow.MlflowClient(f"sqlite:///{trained['root'] / 'mlflow.db'}").get_run(recorded["run_id"])
    assert run.data.metrics["probe_token_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert run.data.params["token_predictor.batch_chunks"] == "32"


def test_each_position_offers_only_the_codes_of_its_stage(trained):
    """A position of a chunk holds one residual stage's code (stage r owns codes [r K, (r + 1) K) of its part): an
    untrained predictor, whose argmax over a whole part would mostly land in other stages, predicts at every
    position a code of the stage the tokenizer writes there; a code of another stage is refused as a target."""
    cfg = trained["cfg"]
    per_stage = cfg.motion_tokenizer.codes_per_stage
    torch.manual_seed(0)
    model = build_token_predictor(cfg).eval()
    probe = probe_pairs(cfg, trained["tokenizer"])
    predicted = model.predict(probe.frames, probe.hand)
    assert predicted.shape == probe.codes.shape
    assert torch.equal(predicted // per_stage, probe.codes // per_stage)
    assert len(predicted.unique()) > cfg.motion_tokenizer.stages  # not a constant code per stage
    with pytest.raises(ValueError, match="outside their position's stage range"):
        model.classes(probe.codes + per_stage)


def test_label_fills_video_only_training_clips_and_copies_everything_else(trained, tiny_corpus, labelled):
    out, report = labelled
    model = load_token_predictor(trained["checkpoint"])
    tokens_per_chunk = trained["cfg"].motion_tokenizer.tokens_per_chunk
    filled = chunks = agreeing = scored_codes = 0
    for subset in ("lab", "wild"):
        before, after = open_mds(tiny_corpus.mds / subset), open_mds(out / subset)
        assert len(before) == len(after) == report["subsets"][subset]["clips"]
        for i in range(len(before)):
            old, new = before[i], after[i]
            assert set(new) == set(old) | set(TOKEN_COLUMNS)
            for key in old:
                if key != "labeled":
                    assert np.array_equal(np.asarray(old[key]), np.asarray(new[key])), key
            assert new["labeled"] == 1
            for hand in HANDS:
                codes = hand_tokens(new, hand)
                assert codes.shape[1] in (0, tokens_per_chunk)
                if codes.size:   # each position holds a code of its stage
                    stages = np.arange(tokens_per_chunk) % trained["cfg"].motion_tokenizer.stages
                    assert (codes // trained["cfg"].motion_tokenizer.codes_per_stage == stages).all()
            if old["labeled"]:   # real labels: the tokenizer's codes of the poses, for the hands that have poses
                for hand in HANDS:
                    expected = hand_codes(old, hand, trained["tokenizer"]) if len(old[hand]) else np.zeros((0, 0))
                    assert np.array_equal(hand_tokens(new, hand).reshape(expected.shape), expected)
            else:                # pseudo labels for both hands (tiny_cpu: data.video_only_hands=both)
                frames = boundary_frames(old, model.shape.image_size)
                pairs = torch.stack([frames[:-1], frames[1:]], dim=1)
                for h, hand in enumerate(HANDS):
                    predicted = model.predict(pairs, torch.full((len(pairs),), h)).numpy()
                    agreeing += int((hand_tokens(new, hand) == predicted).sum())
                    scored_codes += predicted.size
                filled += 1
                chunks += 2 * len(pairs)
    assert filled > 0 and report["pseudo_labelled_clips"] == filled and report["pseudo_labelled_chunks"] == chunks
    # The copy says whose codes it stores, and what chunk length its source was converted with.
    assert build_plan(out)["tokenizer"] == tokenizer_fingerprint(trained["cfg"].motion_tokenizer)
    assert converted_settings(out) == converted_settings(tiny_corpus.mds) and converted_settings(out)["chunk_frames"]
    # Labelling encodes each frame once in batches of another size: float rounding may flip a near tie.
    assert agreeing / scored_codes > 0.99


def test_pseudo_labelled_clip_becomes_a_labelled_mcp_document(trained, labelled):
    out, _ = labelled
    cfg = trained["cfg"]
    wild = open_mds(out / "wild")
    record = next(wild[i] for i in range(len(wild)) if not len(wild[i]["left"]) and not len(wild[i]["right"]))
    text = load_text_tokenizer(None)
    vocab = add_motion_vocab(text, cfg.motion_tokenizer.vocab_per_part)
    builder = SequenceBuilder(cfg.data, objective="mcp", tokenizer=text, vocab=vocab,
                              motion_tokenizer=trained["tokenizer"], n_image_tokens=4, seed=0)
    document = builder.build(record, sample_index=0, epoch=0)
    assert document.labeled and document.chunk_hand.tolist()[:2] == [0, 1]
    masked = np.flatnonzero(document.labels != IGNORE)
    assert len(masked) > 0
    # Each label is the stored pseudo code of its chunk's hand at its time step and position, as a token id.
    start = int(document.sample_id.rsplit("@", 1)[1].split(":")[0])
    for position in masked:
        c = document.motion_chunk[position]
        offset = position - np.flatnonzero(document.motion_chunk == c)[0]
        code = hand_tokens(record, HANDS[document.chunk_hand[c]])[start + c // 2, offset]   # two streams: L, R
        assert document.labels[position] == builder.code_base[offset] + code


def test_right_hand_only_labels_only_the_right_hand(trained, tiny_corpus):
    cfg = load_config("tiny_cpu", ["data.video_only_hands=right"])
    out = trained["root"] / "mds_right"
    report = pseudo_label_corpus(cfg, trained["checkpoint"], tiny_corpus.mds, out)
    assert report["hands"] == ["right"]
    wild_before, wild_after = open_mds(tiny_corpus.mds / "wild"), open_mds(out / "wild")
    video_only = [i for i in range(len(wild_before)) if not wild_before[i]["labeled"]]
    assert video_only
    for i in video_only:
        assert hand_tokens(wild_after[i], "left").size == 0
        assert len(hand_tokens(wild_after[i], "right")) == len(wild_before[i]["frame_index"]) - 1


def test_bad_inputs_get_one_clear_error(trained, tiny_corpus, labelled, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="jala token-predictor train"):
        load_token_predictor(tmp_path)
    old = tmp_path / "version_1"   # a predictor from before the per-stage classifier
    shutil.copytree(trained["checkpoint"], old)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "version": 1}))
    with pytest.raises(ValueError, match=r"not a jala-token-predictor v2 checkpoint \(.*version 1\): train one"):
        load_token_predictor(old)
    other = load_config("tiny_cpu", ["motion_tokenizer.codes_per_stage=8"])
    with pytest.raises(ValueError, match="vocab_per_part=32, the recipe has 16"):
        load_token_predictor(trained["checkpoint"], expect=shape_of(other))
    with pytest.raises(ValueError, match="trained on another motion tokenizer's codes than the recipe's: set "):
        load_token_predictor(trained["checkpoint"], tokenizer="binning steps=2 groups=2 stages=2 codes_per_stage=16")
    tokenized = tmp_path / "tokenized_by_another"   # codes of another tokenizer would be copied as this one's
    (tokenized / "pieces").mkdir(parents=True)
    (tokenized / "pieces" / "plan.json").write_text(json.dumps({"build": "tokenize", "tokenizer": "0" * 64}))
    assert jala(["token-predictor", "label", "--recipe", "tiny_cpu", "--predictor", str(trained["checkpoint"]),
                 "--src", str(tokenized), "--out", str(tmp_path / "out")]) == 2
    assert f"--src: {tokenized} holds the codes of another motion tokenizer" in capsys.readouterr().err
    assert jala(["token-predictor", "train", "--recipe", "tiny_cpu", f"data.mds_dir={tokenized}",
                 "--steps", "1", "--out", str(tmp_path / "predictor")]) == 2
    assert f"data.mds_dir: {tokenized} holds the codes of another motion tokenizer" in capsys.readouterr().err
    out, _ = labelled
    assert jala(["token-predictor", "label", "--recipe", "tiny_cpu", "--predictor", str(trained["checkpoint"]),
                 "--src", str(tiny_corpus.mds), "--out", str(out)]) == 2
    assert "mds_pseudo/lab already holds data: pass --resume" in capsys.readouterr().err
    assert jala(["token-predictor", "label", "--recipe", "tiny_cpu", "--predictor", str(tmp_path / "none"),
                 "--src", str(tiny_corpus.mds), "--out", str(tmp_path / "out")]) == 2
    assert "is not an action-token predictor" in capsys.readouterr().err
    assert jala(["token-predictor", "train", "--recipe", "tiny_cpu", f"data.mds_dir={tiny_corpus.mds}",
                 "--steps", "1", "--out", str(trained["checkpoint"])]) == 2
    assert "already holds an action-token predictor: choose another --out, or pass --overwrite" in \
        capsys.readouterr().err


def test_training_refuses_a_pseudo_labelled_copy(tmp_path, capsys):
    """Its video-only clips count as labelled: the predictor would learn an earlier predictor's guesses."""
    pseudo = tmp_path / "mds_pseudo"
    (pseudo / "pieces").mkdir(parents=True)
    (pseudo / "pieces" / "plan.json").write_text(json.dumps({"build": "pseudo-label"}))
    assert jala(["token-predictor", "train", "--recipe", "tiny_cpu", f"data.mds_dir={pseudo}", "--steps", "1",
                 "--out", str(tmp_path / "predictor")]) == 2
    assert f"data.mds_dir: {pseudo} is a pseudo-labelled copy" in capsys.readouterr().err
    assert not (tmp_path / "predictor").exists()


@pytest.mark.slow
def test_two_rank_data_parallel_training_writes_one_checkpoint(trained, tiny_corpus, tmp_path):
    # 2 ranks (torchrun, gloo), each reading its own half of the clips; rank 0 saves.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
           "-m", "jala_ds.cli", "token-predictor", "train", "--recipe", "tiny_cpu", f"data.mds_dir={tiny_corpus.mds}",
           f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "--steps", "10", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((tmp_path / "ddp" / "config.json").read_text())["training"]
    assert recorded["world_size"] == 2 and recorded["steps"] == 10
    assert load_token_predictor(tmp_path / "ddp", expect=shape_of(trained["cfg"])).shape.tokens_per_chunk == 16


@pytest.mark.slow
def test_two_ranks_label_the_copy_one_process_writes(trained, tiny_corpus, labelled, tmp_path):
    # torchrun's 2 ranks (gloo) share out the pieces of 8 clips of every subset; rank 0 merges the indexes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29564",
           "-m", "jala_ds.cli", "token-predictor", "label", "--recipe", "tiny_cpu", "--predictor",
           str(trained["checkpoint"]), "--src", str(tiny_corpus.mds), "--out", str(tmp_path / "split"),
           "--piece-clips", "8"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    whole, report = labelled
    assert result.stdout.count("pseudo-labelled") == 1   # rank 0 reports, for both
    assert f"pseudo-labelled {report['pseudo_labelled_clips']} video-only clips" in result.stdout
    agreeing = scored = 0
    for subset in ("lab", "wild"):
        one, two = open_mds(whole / subset), open_mds(tmp_path / "split" / subset)
        assert len(one) == len(two)
        for i in range(len(one)):
            assert set(one[i]) == set(two[i])
            for key in set(one[i]) - set(TOKEN_COLUMNS):
                assert np.array_equal(np.asarray(one[i][key]), np.asarray(two[i][key])), key
            for hand in HANDS:
                agreeing += int((hand_tokens(one[i], hand) == hand_tokens(two[i], hand)).sum())
                scored += hand_tokens(one[i], hand).size
        shards = json.loads((tmp_path / "split" / subset / "index.json").read_text())["shards"]
        pieces = [shard["raw_data"]["basename"].split("/")[0] for shard in shards]
        assert sorted(set(pieces)) == [f"piece{k:05d}" for k in range((len(one) + 7) // 8)] and pieces == sorted(pieces)
    # Other blocks of clips go through the encoder together: float rounding may flip a near tie.
    assert agreeing / scored > 0.99


def corpus_pairs(mds, tokenizer, image_size) -> list[tuple[int, tuple[int, ...], int]]:
    """(hand, codes, frame checksum) of every labelled pair of the corpus' training subsets."""
    found = []
    for subset in ("lab", "wild"):
        dataset = open_mds(mds / subset)
        for i in range(len(dataset)):
            if dataset[i]["labeled"]:
                pairs = labelled_pairs(dataset[i], tokenizer, image_size)
                found += [pair_key(*pair) for pair in zip(pairs.frames, pairs.hand, pairs.codes)]
    return found


def pair_key(frames: torch.Tensor, hand, codes: torch.Tensor) -> tuple[int, tuple[int, ...], int]:
    return int(hand), tuple(codes.tolist()), int(frames.long().sum())


def test_stream_visits_every_labelled_pair_once_per_epoch_and_feeds_loader_workers(trained, tiny_corpus):
    cfg, tokenizer = trained["cfg"], trained["tokenizer"]
    size = cfg.model.visual_encoder_image_size
    expected = sorted(corpus_pairs(tiny_corpus.mds, tokenizer, size))
    stream = LabelledChunkStream(tiny_corpus.mds, tokenizer, image_size=size, seed=0)
    first_epoch = list(itertools.islice(iter(stream), len(expected)))
    assert sorted(pair_key(*pair) for pair in first_epoch) == expected
    # Loader workers share the datasets opened by the parent; each reads its own clips.
    batches = iter(DataLoader(stream, batch_size=8, num_workers=2))
    keys = set(expected)
    for _ in range(4):
        frames, hand, codes = next(batches)
        assert all(pair_key(*pair) in keys for pair in zip(frames, hand, codes))
