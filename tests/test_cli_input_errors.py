"""Commands given a wrong folder or device stop with one stderr line that names the input and the fix, and exit
code 2 (the recipe's own errors are tests/test_train_cli_errors.py's)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jala_ds.cli import main as jala


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_export_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert jala(["export", "--run", str(tmp_path / "no_run"), "--out", str(tmp_path / "out")]) == 2
    assert one_line(capsys).startswith(f"jala export: {tmp_path / 'no_run'} is not a finished run")
    assert not (tmp_path / "out").exists()


def test_serve_of_a_folder_that_is_not_a_policy(tmp_path, capsys):
    assert jala(["serve", "--ckpt", str(tmp_path), "--device", "cpu"]) == 2
    line = one_line(capsys)
    assert line.startswith(f"jala serve: --ckpt {tmp_path}: ") and "pass the export" in line


@pytest.mark.parametrize("broken", ["norm_stats.json", "robot_meta.json"])
def test_serve_of_a_policy_with_unreadable_statistics(broken, tmp_path, capsys):
    from jala_ds.config import load_config
    from jala_ds.data.robot_norm import compute_norm_stats

    cfg = load_config("posttrain_tiny_cpu")
    cfg.dump(tmp_path / "jala_recipe.yaml")
    head = cfg.action_head
    compute_norm_stats(np.zeros((2, head.state_dim)), np.zeros((2, head.action_dim)), "quantile").save(
        tmp_path / "norm_stats.json")
    (tmp_path / "robot_meta.json").write_text('{"unknown_field": 1}')
    (tmp_path / broken).write_text('{"mode": ')
    assert jala(["serve", "--ckpt", str(tmp_path), "--device", "cpu"]) == 2
    line = one_line(capsys)
    assert line.startswith(f"jala serve: --ckpt {tmp_path}: ") and "unreadable" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_serve_on_cuda_without_a_cuda_device(tmp_path, capsys):
    assert jala(["serve", "--ckpt", str(tmp_path), "--device", "cuda"]) == 2
    assert one_line(capsys) == ("jala serve: --device cuda: no CUDA device is visible here: pass --device cpu, "
                                "or leave it out")


def fake_run(folder, module: dict | None) -> None:
    """A run folder whose latest checkpoint holds ``module`` as its only model file (None: the folder is gone)."""
    from jala_ds.config import load_config

    checkpoint = folder / "checkpoints" / "step_00000002"
    checkpoint.parent.mkdir(parents=True)
    load_config("tiny_cpu").dump(folder / "config.yaml")
    (checkpoint.parent / "latest").write_text(checkpoint.name)
    if module is not None:
        checkpoint.mkdir()
        torch.save({"module": module, "step": 2}, checkpoint / "mp_rank_00_model_states.pt")


def test_eval_of_a_post_trained_policy_says_to_serve_it(tmp_path):
    """Its action head made the JalaModel's strict load fail with a traceback listing every action-head weight
    (`jala eval motion | latents` load through ``load_trained_model``; their handlers print a ValueError as one line)."""
    from jala_ds.eval.trained_model import load_trained_model

    fake_run(tmp_path / "run", {"action_head.out.weight": torch.zeros(2, 2)})
    export = tmp_path / "export"
    export.mkdir()
    (export / "jala_recipe.yaml").write_text((tmp_path / "run" / "config.yaml").read_text())
    save_file({"action_head.out.weight": torch.zeros(2, 2)}, str(export / "jala_heads.safetensors"))
    for ckpt in (tmp_path / "run", export):
        with pytest.raises(ValueError) as refused:
            load_trained_model(ckpt, device="cpu")
        assert str(refused.value) == (f"{ckpt} is a post-trained robot policy (it has an action head), not a "
                                      "pretrained JALA: `jala eval` scores pretraining runs and their exports; run "
                                      f"the policy with `jala serve --ckpt {ckpt}`")


def test_a_latest_checkpoint_that_is_gone_is_named(tmp_path, capsys):
    """``latest`` naming a deleted folder gave 'not enough values to unpack' (a traceback under `jala export`)."""
    from jala_ds.eval.trained_model import load_trained_model

    fake_run(tmp_path / "run", None)
    checkpoint = tmp_path / "run" / "checkpoints"
    named = (f"checkpoint {checkpoint / 'step_00000002'} holds no *model_states.pt (missing or incomplete): write the "
             f"tag of a complete step_N folder into {checkpoint / 'latest'}")
    assert jala(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    assert one_line(capsys) == f"jala export: {named}"
    with pytest.raises(FileNotFoundError) as refused:  # `jala eval`'s handlers print it as one line
        load_trained_model(tmp_path / "run", device="cpu")
    assert str(refused.value) == named


@pytest.mark.parametrize("command", [["eval", "motion", "--split", "lab"], ["eval", "latents"]])
@pytest.mark.parametrize("flag, value", [("--limit", "0"), ("--limit", "-1"), ("--batch-size", "0")])
def test_eval_counts_must_be_positive(command, flag, value, tmp_path, capsys):
    """A limit of 0 used to score every clip, and -1 all but the last."""
    with pytest.raises(SystemExit) as stopped:
        jala([*command, "--ckpt", str(tmp_path), "--data", str(tmp_path), flag, value])
    assert stopped.value.code == 2
    assert f"argument {flag}: {value}: give a positive number" in capsys.readouterr().err


def test_export_into_a_folder_that_holds_files_is_refused_before_anything_loads(tmp_path, capsys):
    """A policy's statistics left beside pretraining weights would make the folder load as what it is not."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "norm_stats.json").write_text("{}")
    assert jala(["export", "--run", str(tmp_path / "no_run"), "--out", str(tmp_path / "out")]) == 2
    assert one_line(capsys) == (f"jala export: --out {tmp_path / 'out'} already holds files: choose an empty "
                                "folder, or pass --overwrite to replace its contents")
    assert (tmp_path / "out" / "norm_stats.json").exists()


def test_export_overwrite_never_deletes_a_folder_that_is_not_an_export(tmp_path, capsys):
    """--out given the run's own folder (or its checkpoints, or a folder above it), with --overwrite, deleted the
    run, checkpoints and all, before failing."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000004")
    (run / "config.yaml").write_text("name: x\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("mine")
    for out in (run, run / "checkpoints", tmp_path, tmp_path / "notes"):
        assert jala(["export", "--run", str(run), "--out", str(out), "--overwrite"]) == 2
        assert one_line(capsys) == (f"jala export: --out {out} holds files that are not a `jala export` (no "
                                    "jala_heads.safetensors), which --overwrite would delete: choose a new or empty "
                                    "folder for --out")
    assert (run / "checkpoints" / "step_00000004").is_dir() and (run / "config.yaml").is_file()
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "mine"


def test_a_failed_export_leaves_the_earlier_export_in_place(tmp_path, capsys):
    """--overwrite emptied --out first, so an export that then failed (here: no run) lost the earlier one."""
    earlier = tmp_path / "export"
    earlier.mkdir()
    for name in ("jala_heads.safetensors", "jala_recipe.yaml"):
        (earlier / name).write_text("earlier")
    assert jala(["export", "--run", str(tmp_path / "no_run"), "--out", str(earlier), "--overwrite"]) == 2
    assert one_line(capsys).startswith(f"jala export: {tmp_path / 'no_run'} is not a finished run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (earlier / "jala_heads.safetensors").read_text() == "earlier"


@pytest.mark.parametrize("command, bad", [
    (["serve", "--ckpt", "x", "--port", "70000"], "argument --port: 70000 is not a port"),
    (["serve", "--ckpt", "x", "--device", "gpu"], "argument --device: 'gpu' is not a device: use cpu, cuda or cuda:N"),
    (["data", "tokenize", "--tokenizer", "t", "--src", "s", "--out", "o", "--device", "gpu"],
     "argument --device: invalid choice: 'gpu'"),
    (["plan", "--text-tokens", "-5"], "--text-tokens -5: must be at least 0"),
    (["plan", "--global-batch", "0"], "--global-batch 0: must be at least 1"),
    (["plan", "--gpu", "a100-40gb"], "unknown GPU 'a100-40gb'"),
    (["plan", "--network-gbps", "nan"], "--network-gbps be positive"),
    (["plan", "--host-ms", "nan"], "--host-ms nan: give 0 or more"),
])
def test_bad_flags_are_refused_before_any_work(command, bad, capsys):
    try:
        code = jala(command)
    except SystemExit as stopped:   # argparse's own refusal
        code = stopped.code
    assert code == 2 and bad in capsys.readouterr().err


def test_compare_against_a_store_that_does_not_answer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # MLflow's default backs off for minutes
    assert jala(["compare", "--experiment", "e", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    line = one_line(capsys)
    assert line.startswith("jala compare: --tracking-uri http://127.0.0.1:9: ") and "running server" in line


def test_overrides_may_follow_an_option(monkeypatch):
    """``jala posttrain --recipe R robot.mds_dir=X --init Y train.out_dir=Z``: argparse ends the overrides at
    --init; the one after it still counts."""
    from jala_ds.train import posttrain

    class Checked(Exception):
        pass

    def check_posttrain(recipe, overrides, init):
        raise Checked(recipe, overrides, init)

    monkeypatch.setattr(posttrain, "check_posttrain", check_posttrain)
    with pytest.raises(Checked) as checked:
        jala(["posttrain", "--recipe", "r", "robot.mds_dir=X", "--init", "Y", "train.out_dir=Z"])
    assert checked.value.args == ("r", ["robot.mds_dir=X", "train.out_dir=Z"], "Y")
    with pytest.raises(SystemExit):   # an unknown option is still refused
        jala(["posttrain", "--recipe", "r", "--init", "Y", "train.out_dir=Z", "--bogus"])


@pytest.mark.parametrize("command", [["eval", "motion", "--split", "lab"], ["eval", "latents"]])
@pytest.mark.parametrize("under", [False, True], ids=["a file", "a folder under a file"])
def test_eval_out_that_is_a_file_is_named_before_anything_loads(command, under, tmp_path, capsys):
    """mkdir's FileExistsError came as a traceback after the whole evaluation had run."""
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "eval" if under else tmp_path / "notes.txt"
    assert jala([*command, "--ckpt", str(tmp_path / "no_run"), "--data", str(tmp_path), "--out", str(out)]) == 2
    assert one_line(capsys) == (f"jala {' '.join(command[:2])}: --out {out}: {tmp_path / 'notes.txt'} is a file, not "
                                "a folder: pass a folder (created when missing), or leave --out out for the default "
                                "under the checkpoint")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_eval_latents_of_data_without_generation_clips_is_named(tiny_corpus, tmp_path, capsys):
    """lab/ and wild/ holding only description and continuation clips gave torch.cat's 'expected a non-empty list
    of Tensors' after the model had loaded."""
    from streaming import LocalDataset, MDSWriter

    from jala_ds.data.schema import MDS_COLUMNS

    for subset in ("lab", "wild"):
        source = LocalDataset(local=str(tiny_corpus.mds / subset))
        with MDSWriter(out=str(tmp_path / "data" / subset), columns=MDS_COLUMNS) as writer:
            for record in map(source.__getitem__, range(len(source))):
                if record["task"] != "generation":
                    writer.write({key: record[key] for key in MDS_COLUMNS})
    assert jala(["eval", "latents", "--ckpt", str(tmp_path / "no_run"), "--data", str(tmp_path / "data")]) == 2
    assert one_line(capsys).startswith(f"jala eval latents: {tmp_path / 'data'}: no generation-task clip in lab/ or "
                                       "wild/ (only description or continuation clips)")
