"""The GRVQ motion tokenizer trained through `jala tokenizer train` on a synthetic MDS corpus (one CPU process).

Measured here (300 steps, batch 64, G=2 x R=2 x K=16 per part, 192 synthetic clips): the held-out pose
reconstruction MSE falls 14.6x from initialisation; the test asks for 8x.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from jala_ds.cli import main as jala
from jala_ds.data.motion_tokens import MotionTokenizer, build_motion_tokenizer
from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.synthetic import synthetic_motion, write_pose_corpus
from jala_ds.motion.tokenizer import GrvqMotionTokenizer, load_grvq_tokenizer
from jala_ds.motion.tokenizer_model import MotionTokenizerModel

TINY = {"groups": 2, "stages": 2, "codes_per_stage": 16, "latent_dim": 32, "conv_width": 32, "batch_size": 64,
        "lr": 2e-3, "ema_decay": 0.9, "log_every": 100}
STEPS = 300
SEED = 1234  # tiny_cpu's train.seed: the training run starts from torch.manual_seed(SEED)


def overrides(mds, tracking_db):
    return ([f"data.mds_dir={mds}", f"tracking.uri=sqlite:///{tracking_db}", "tracking.experiment=tokenizer-test"]
            + [f"motion_tokenizer.{key}={value}" for key, value in TINY.items()])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer")
    mds = write_pose_corpus(root / "mds", lab=160, wild=32, frames=45, seed=0)
    out = root / "checkpoint"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)   # MLflow puts artifacts under ./mlruns
        code = jala(["tokenizer", "train", "--recipe", "tiny_cpu", *overrides(mds, root / "mlflow.db"),
                     "--steps", str(STEPS), "--out", str(out)])
    assert code == 0
    return {"root": root, "mds": mds, "checkpoint": out, "tracking_db": root / "mlflow.db"}


def held_out_poses(clips: int = 32) -> np.ndarray:
    rng = np.random.default_rng(99)
    return np.concatenate([synthetic_motion(45, rng) for _ in range(clips)])


def reconstruction_error(tokenizer, poses: np.ndarray) -> float:
    return float(np.mean((tokenizer.decode(tokenizer.encode(poses)) - poses) ** 2))


def test_training_reconstructs_far_better_than_at_initialisation(trained):
    tok = load_grvq_tokenizer(trained["checkpoint"])
    torch.manual_seed(SEED)
    untrained = GrvqMotionTokenizer(MotionTokenizerModel(tok.cfg, 15, tok.model.mean, tok.model.std))
    poses = held_out_poses()
    factor = reconstruction_error(untrained, poses) / reconstruction_error(tok, poses)
    print(f"held-out pose MSE {factor:.1f}x lower after {STEPS} steps than at initialisation")
    assert factor > 8


def test_every_codebook_entry_stays_in_use(trained):
    tok = load_grvq_tokenizer(trained["checkpoint"])
    tokens = tok.encode(held_out_poses(clips=128)).reshape(-1, 2, tok.cfg.tokens_per_part)
    for part in range(2):
        used = np.unique(tokens[:, part])
        usage = len(used) / tok.vocab_per_part
        assert usage >= 0.9, f"part {part} uses {usage:.0%} of its codes"


def test_checkpoint_serves_the_data_pipelines_tokenizer_protocol(trained):
    assert sorted(p.name for p in trained["checkpoint"].iterdir()) == [
        "config.json", "model.safetensors", "normalization.json"]
    cfg = TokenizerConfig(kind="grvq", checkpoint=str(trained["checkpoint"]), **{
        k: v for k, v in TINY.items() if k in ("groups", "stages", "codes_per_stage", "latent_dim")})
    tok = build_motion_tokenizer(cfg)
    assert isinstance(tok, MotionTokenizer)
    assert (tok.chunk_frames, tok.tokens_per_chunk, tok.vocab_per_part) == (15, 2 * 4 * 2 * 2, 2 * 16)
    poses = held_out_poses(clips=3)
    codes = tok.encode(poses)
    assert codes.dtype == np.int32 and codes.shape == (9, 32)
    # Slot i of a part holds stage i % R: codes of stage r lie in [r * K, (r + 1) * K).
    assert np.array_equal(codes // 16, np.broadcast_to(np.arange(32) % 2, codes.shape))
    decoded = tok.decode(codes)
    assert decoded.dtype == np.float32 and decoded.shape == poses.shape
    assert np.array_equal(load_grvq_tokenizer(trained["checkpoint"]).encode(poses), codes)


def test_a_recipe_with_another_token_layout_is_refused(trained):
    with pytest.raises(ValueError, match="motion_tokenizer.stages=8 but the checkpoint"):
        load_grvq_tokenizer(trained["checkpoint"], expect=TokenizerConfig())


def test_bad_inputs_get_one_clear_error(trained):
    tok = load_grvq_tokenizer(trained["checkpoint"])
    with pytest.raises(ValueError, match="multiple of 15 frames"):
        tok.encode(np.zeros((20, 99), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(np.full((15, 99), np.nan, np.float32))
    with pytest.raises(ValueError, match="stage's range"):
        tok.decode(np.full((1, 32), 31, np.int32))
    with pytest.raises(ValueError, match="codes must be integers, got dtype float32"):
        tok.decode(tok.encode(np.zeros((15, 99), np.float32)).astype(np.float32) + 0.5)


def test_the_data_pipeline_refuses_a_checkpoint_of_another_token_layout(trained):
    """Same tokens per chunk, other codes per stage: the vocabulary sized from the recipe would mix up the codes."""
    cfg = TokenizerConfig(kind="grvq", checkpoint=str(trained["checkpoint"]), **{
        **{k: v for k, v in TINY.items() if k in ("groups", "stages", "latent_dim")}, "codes_per_stage": 8})
    with pytest.raises(ValueError, match="motion_tokenizer.codes_per_stage=8 but the checkpoint"):
        build_motion_tokenizer(cfg)


def test_encoding_and_decoding_no_chunks_gives_empty_arrays(trained):
    tok = load_grvq_tokenizer(trained["checkpoint"])
    codes = tok.encode(np.zeros((0, 99), np.float32))
    assert codes.dtype == np.int32 and codes.shape == (0, 32)
    poses = tok.decode(codes)
    assert poses.dtype == np.float32 and poses.shape == (0, 99)


def test_a_checkpoint_missing_a_file_is_named_with_the_fix(trained, tmp_path):
    for name in ("model.safetensors", "normalization.json"):
        broken = tmp_path / name
        shutil.copytree(trained["checkpoint"], broken)
        (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=f"not a whole GRVQ tokenizer checkpoint \\(no {name}\\): train"):
            load_grvq_tokenizer(broken)


def test_training_is_logged_to_mlflow(trained):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{trained['tracking_db']}")
    (run,) = client.search_runs([client.get_experiment_by_name("tokenizer-test").experiment_id])
    assert run.data.params["motion_tokenizer.stages"] == "2"
    history = client.get_metric_history(run.info.run_id, "probe_mpjpe_cm")
    assert [m.step for m in history] == [100, 200, 300]
    init = client.get_metric_history(run.info.run_id, "init_probe_mpjpe_cm")[0].value
    assert history[-1].value < init


def test_training_without_a_corpus_fails_with_one_line(tmp_path, capsys):
    code = jala(["tokenizer", "train", "--recipe", "tiny_cpu", f"data.mds_dir={tmp_path / 'missing'}", "--steps", "1"])
    assert code == 2
    assert "point data.mds_dir at the output of `jala data convert`" in capsys.readouterr().err


def test_training_into_a_checkpoint_replaces_it_only_when_asked(trained, tmp_path, capsys, monkeypatch):
    """The tokenized corpus and the runs point at the checkpoint: retraining over it takes --overwrite."""
    out = tmp_path / "checkpoint"
    shutil.copytree(trained["checkpoint"], out)
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.chdir(tmp_path)
    command = ["tokenizer", "train", "--recipe", "tiny_cpu", *overrides(trained["mds"], tmp_path / "mlflow.db"),
               "--steps", "1", "--out", str(out)]
    assert jala(command) == 2
    assert f"--out {out} already holds a tokenizer checkpoint" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert jala([*command, "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != before


def test_training_never_replaces_a_file_or_a_folder_of_other_things(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = ["tokenizer", "train", "--recipe", "tiny_cpu", *overrides(trained["mds"], tmp_path / "mlflow.db"),
               "--steps", "1", "--overwrite"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    assert jala([*command, "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file, not a checkpoint folder" in capsys.readouterr().err
    assert a_file.read_text() == "keep"
    assert jala([*command, "--out", str(tmp_path)]) == 2
    assert "holds files that are not a tokenizer checkpoint (no config.json)" in capsys.readouterr().err
    assert a_file.read_text() == "keep"


def test_training_for_no_steps_is_refused_before_anything_is_saved(trained, tmp_path):
    from jala_ds.config import load_config
    from jala_ds.motion.train_tokenizer import train_tokenizer

    cfg = load_config("tiny_cpu", [f"data.mds_dir={trained['mds']}", "tracking.enabled=false"])
    for steps in (0, -3):
        with pytest.raises(ValueError, match=f"steps={steps}: must be a positive number"):
            train_tokenizer(cfg, steps=steps, out_dir=tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.slow
def test_two_rank_data_parallel_training_keeps_codebooks_in_sync(trained, tmp_path):
    # 2 ranks (torchrun, gloo): training ends with a cross-rank check of the codebooks, which raises on drift.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           "-m", "jala_ds.cli", "tokenizer", "train", "--recipe", "tiny_cpu",
           *overrides(trained["mds"], tmp_path / "mlflow.db"), "--steps", "20", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_grvq_tokenizer(tmp_path / "ddp").encode(held_out_poses(clips=2)).shape == (6, 32)
