"""`jala eval motion` and `jala eval latents` on a tiny checkpoint trained for a few steps on 2 ranks (whose
periodic evaluation runs on both ranks under ZeRO-3): the metrics table, the pictures, the latent-space picture
and its alignment number, logged to MLflow next to (and tagged with) the training run."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from jala_jobs import JALA, run, torchrun
from mlflow import MlflowClient

from jala_ds.config import load_config
from jala_ds.data.convert import convert_corpus
from jala_ds.eval.motion_eval import EVAL_TAG


def jala(tmp_path: Path, *args: str, launcher: Sequence[str] = ()) -> str:
    return run([*launcher, JALA, *args], tmp_path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_corpus):
    """A corpus with a quarter of its labelled clips held out, and a 4-step 2-rank run on the rest."""
    tmp_path = tmp_path_factory.mktemp("eval")
    data = load_config("tiny_cpu", ["data.heldout_fraction=0.25"]).data
    convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, shard_bytes=1 << 16)
    jala(tmp_path, "train", "--recipe", "tiny_cpu", f"data.mds_dir={tmp_path / 'mds'}",
         f"train.out_dir={tmp_path / 'run'}", "train.max_steps=4", "train.micro_batch_size=1",
         "train.global_batch_size=2", "train.save_every=4", "train.log_every=2", "train.eval_every=4",
         "train.eval_limit=2", launcher=torchrun(29681))
    return tmp_path


def test_eval_motion_writes_the_table_and_pictures_and_links_the_training_run(trained_run):
    tmp_path = trained_run
    out = tmp_path / "eval_lab"
    printed = jala(tmp_path, "eval", "motion", "--ckpt", str(tmp_path / "run"), "--data", str(tmp_path / "mds"),
                   "--split", "lab", "--limit", "3", "--ensemble", "2", "--fraction", "0.25", "--procrustes", "rigid",
                   "--out", str(out))
    assert "| hand | chunks | MPJPE (cm) | PA-MPJPE (cm) | MWTE (cm) | MDE (deg) |" in printed
    assert "PA-MPJPE after rigid alignment" in printed
    result = json.loads((out / "metrics.json").read_text())
    assert result["clips"] == 3 and result["step"] == 4 and result["procrustes"] == "rigid"
    assert {"both", "mpjpe_cm"} <= set(result["metrics"]) | set(result["metrics"]["both"])
    assert result["metrics"]["both"]["mpjpe_cm"] >= result["metrics"]["both"]["pa_mpjpe_cm"] >= 0
    for picture in ("wrist_trajectories.png", "hand_skeletons.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("jala-tiny")
    runs = client.search_runs([experiment.experiment_id])
    (training,) = [r for r in runs if EVAL_TAG not in r.data.tags]
    (evaluation,) = [r for r in runs if r.data.tags.get(EVAL_TAG) == training.info.run_id]
    assert evaluation.data.tags["mlflow.parentRunId"] == training.info.run_id
    assert "lab_both_mpjpe_cm" in evaluation.data.metrics
    assert "eval_lab_both_mpjpe_cm" in training.data.metrics  # train.eval_every: the trainer's own evaluation
    logged = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"metrics.md", "wrist_trajectories.png", "hand_skeletons.png"} <= logged


def test_eval_latents_plots_both_spaces_and_measures_their_alignment(trained_run):
    tmp_path = trained_run
    out = tmp_path / "latents"
    jala(tmp_path, "eval", "latents", "--ckpt", str(tmp_path / "run"), "--data", str(tmp_path / "mds"),
         "--limit", "6", "--out", str(out), "--no-mlflow")
    measured = json.loads((out / "alignment.json").read_text())
    assert set(measured["chunks"]) == {"lab", "wild"}
    assert -1 <= measured["shuffled_cosine"] <= 1 and -1 <= measured["paired_cosine"] <= 1
    assert measured["gap"] == pytest.approx(measured["paired_cosine"] - measured["shuffled_cosine"])
    assert (out / "latent_space.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_corpus_without_heldout_clips_is_refused_with_the_fix(trained_run, tiny_corpus, capsys):
    from jala_ds.cli import main

    code = main(["eval", "motion", "--ckpt", str(trained_run / "run"), "--data", str(tiny_corpus.mds), "--split", "lab"])
    assert code == 2 and "data.heldout_fraction" in capsys.readouterr().err
