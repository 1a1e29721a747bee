"""Broken recipes and invocations of ``jala train``: each stops with one stderr line and exit code 2, before any
process group starts. Each runs as the deepspeed launcher would start a rank of a 2-rank job (WORLD_SIZE=2,
tiny_cpu's batch arithmetic) but with no rendezvous to join: only the preflight may run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jala_ds.train.ds_config import PROJECT_ROOT

JALA = str(Path(sys.executable).with_name("jala"))
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def write_ds_config(folder: Path, name: str, **changes) -> str:
    tree = json.loads((PROJECT_ROOT / "ds_configs" / "cpu.json").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = folder / f"{name}.json"
    path.write_text(json.dumps(tree))
    return f"train.ds_config={path}"


CASES = {
    # name: (extra arguments, environment changes, words the one line must contain)
    "unknown key": (["train.lrr=1"], {}, ["train.lrr", "did you mean train.lr"]),
    "bad type": (["train.micro_batch_size=two"], {}, ["train.micro_batch_size", "must be int"]),
    "value out of range": (["train.warmup_frac=1.5"], {}, ["train.warmup_frac", "[0, 1)"]),
    "fp16 dtype": (["train.dtype=fp16"], {}, ["train.dtype", "'bf16', 'fp32'"]),
    "bad override syntax": (["train.lr"], {}, ["section.key=value"]),
    "unknown recipe": (["--recipe", "no_such_recipe"], {}, ["no_such_recipe", "tiny_cpu"]),
    "batch vs WORLD_SIZE": ([], {"WORLD_SIZE": "3"}, ["train.global_batch_size", "world size 3"]),
    "WORLD_SIZE not a number": ([], {"WORLD_SIZE": "two"}, ["WORLD_SIZE", "positive integer"]),
    "missing data": (["data.mds_dir=/nonexistent/mds"], {}, ["data.mds_dir", "jala data convert"]),
    "a subset, not the corpus": (["data.mds_dir={corpus}/lab"], {}, ["holds no converted corpus (lab/index.json",
                                                                   "jala data convert --recipe tiny_cpu --src"]),
    "log_every 0": (["train.log_every=0"], {}, ["train.log_every", "must be positive"]),
    "min_lr_ratio": (["train.min_lr_ratio=2"], {}, ["train.min_lr_ratio", "[0, 1]"]),
    "missing pretrained": (["model.pretrained=/nonexistent/InternVL3-2B-hf"], {},
                           ["model.pretrained: folder '/nonexistent/InternVL3-2B-hf' not found", "local"]),
    "missing tokenizer": (["motion_tokenizer.kind=grvq", "motion_tokenizer.checkpoint=/nonexistent/grvq"], {},
                          ["motion_tokenizer.checkpoint: folder '/nonexistent/grvq' not found"]),
    "missing ds_config": (["train.ds_config=ds_configs/nope.json"], {}, ["train.ds_config", "ds_configs/cpu.json"]),
    "ds_config contradicts recipe": ("micro", {}, ["train_micro_batch_size_per_gpu=8", "train.micro_batch_size"]),
    "ds_config bf16 vs fp32 recipe": ("bf16", {}, ["bf16.enabled=true", "train.dtype"]),
    "ds_config has a scheduler": ("scheduler", {}, ["scheduler", "train.warmup_frac"]),
    "ds_config asks for fp16": ("fp16", {}, ["fp16.enabled=true", "train.dtype=bf16"]),
    "resume folder missing": (["train.resume=/nonexistent/step_00000010"], {}, ["train.resume", "auto or none"]),
    # a file where the run's folder goes: the run failed writing its config.yaml, after every rank built the model
    "out_dir a file": (["train.out_dir={corpus}/lab/index.json"], {}, ["train.out_dir: '", "index.json' is a file"]),
    "out_dir under a file": (["train.out_dir={corpus}/lab/index.json/run"], {}, ["index.json' is a file"]),
    "out_dir empty": (["train.out_dir="], {}, ["train.out_dir: must name a folder", "working directory"]),
    # an unclosed list ended in PyYAML's multi-line traceback
    "override not YAML": (["train.betas=[0.9, 0.95"], {}, ["train.betas=[0.9, 0.95", "not valid YAML", "[a, b]"]),
    "key of another section": (["train.chunk_frames=10"], {}, ["train.chunk_frames", "another section",
                                                                "data.chunk_frames"]),
    # inf passed "must be positive" and trained on NaN
    "infinite learning rate": (["train.lr=inf"], {}, ["train.lr must be a finite number"]),
    # a ZeroDivisionError traceback in the config check itself
    "zero perceiver heads": (["model.perceiver_heads=0"], {}, ["model.perceiver_heads: must be positive"]),
}
DS_CHANGES = {
    "micro": {"train_micro_batch_size_per_gpu": 8},
    "bf16": {"bf16__enabled": True},
    "scheduler": {"scheduler__type": "WarmupLR"},
    "fp16": {"fp16__enabled": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_invocation_fails_in_one_line_with_exit_code_2(case, tmp_path):
    extra, env_changes, words = CASES[case]
    if isinstance(extra, str):
        extra = [write_ds_config(tmp_path, extra, **DS_CHANGES[extra])]
    assert_one_line_error(extra, env_changes, words, tmp_path)


@pytest.mark.parametrize("saved_with, words", [
    ({"world_size": 4, "zero_stage": 3}, ["train.resume", "saved by 4 ranks and this launch has 2",
                                          "relaunch with 4 ranks", "a new train.out_dir"]),
    ({"world_size": 2, "zero_stage": 2}, ["train.ds_config", "saved under ZeRO-2", "is ZeRO-3", "ds_config.json"]),
])
def test_a_checkpoint_this_launch_cannot_load_is_refused_before_any_process_group(saved_with, words, tmp_path):
    """What the checkpoint's saved_with.json records against the launch (2 ranks, cpu.json's ZeRO-3): DeepSpeed
    would otherwise fail part-way through loading its shards, on every rank."""
    root = tmp_path / "run" / "checkpoints"
    (root / "step_00000005").mkdir(parents=True)
    (root / "step_00000005" / "saved_with.json").write_text(json.dumps(saved_with))
    (root / "latest").write_text("step_00000005")
    assert_one_line_error([f"train.out_dir={tmp_path / 'run'}"], {}, words, tmp_path)


def test_under_a_launcher_only_the_first_local_rank_prints_the_error(tmp_path):
    """Every rank of a node finds the same error; one line per node says it."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS} | {"WORLD_SIZE": "2"}
    for local_rank, printed in (("0", True), ("1", False)):
        done = subprocess.run([JALA, "train", "--recipe", "tiny_cpu", f"data.mds_dir={tmp_path}", "train.lrr=1"],
                              cwd=tmp_path, env=env | {"RANK": local_rank, "LOCAL_RANK": local_rank},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert ("train.lrr" in done.stderr) == printed and len(done.stderr.strip().splitlines()) == int(printed)


def assert_one_line_error(extra: list[str], env_changes: dict[str, str], words: list[str], tmp_path: Path) -> None:
    """``jala train`` with ``extra`` as rank 0 of a 2-rank launch stops with exit code 2 and one stderr line, a
    config error holding each of ``words``. ``data.mds_dir`` is ``tmp_path``, a corpus as far as preflight looks
    (``{corpus}`` in ``extra`` names it)."""
    (tmp_path / "lab").mkdir(exist_ok=True)
    (tmp_path / "lab" / "index.json").write_text("{}")
    extra = [arg.replace("{corpus}", str(tmp_path)) for arg in extra]
    recipe = [] if "--recipe" in extra else ["--recipe", "tiny_cpu"]
    args = [JALA, "train", *recipe, f"data.mds_dir={tmp_path}", "train.dtype=fp32", *extra]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS} | {"WORLD_SIZE": "2"} | env_changes
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jala: config error:")
    for word in words:
        assert word in lines[0], f"{word!r} missing from: {lines[0]}"


def saved_run(out_dir: Path, steps: tuple[int, ...]) -> None:
    """A run's checkpoint folders (2 ranks, cpu.json's ZeRO-3), ``latest`` naming the last."""
    root = out_dir / "checkpoints"
    for step in steps:
        (root / f"step_{step:08d}").mkdir(parents=True)
        (root / f"step_{step:08d}" / "saved_with.json").write_text(json.dumps({"world_size": 2, "zero_stage": 3}))
        for rank in (0, 1):
            (root / f"step_{step:08d}" / f"jala_rank_{rank:05d}.pt").touch()
    (root / "latest").write_text(f"step_{steps[-1]:08d}")


@pytest.mark.parametrize("resume, words", [
    ("none", ["train.resume=none", "holds a run (latest: step_00000008)", "new train.out_dir", "train.resume=auto"]),
    ("older", ["train.resume: step_00000004 is older than", "(step_00000008)", "new train.out_dir"]),
])
def test_a_start_that_would_overwrite_a_runs_newer_checkpoints_is_refused(resume, words, tmp_path):
    """Saving from step 0 or 4 into the folder of a run at step 8 would replace its step folders one by one
    and move ``latest`` backwards: the old run would be lost with nothing said."""
    saved_run(tmp_path / "run", (4, 8))
    target = "none" if resume == "none" else str(tmp_path / "run" / "checkpoints" / "step_00000004")
    assert_one_line_error([f"train.out_dir={tmp_path / 'run'}", f"train.resume={target}"], {}, words, tmp_path)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "latest", "step_00000004", "step_00000008"]


def test_a_request_to_stop_left_by_an_earlier_launch_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "STOP").touch()
    assert_one_line_error([f"train.out_dir={tmp_path / 'run'}"], {}, [str(tmp_path / "run" / "STOP"),
                                                                      "delete the file"], tmp_path)


def test_the_binning_tokenizer_refuses_other_chunk_lengths_before_the_run(tmp_path):
    """A corpus converted with 16-frame chunks, read with 16, passed every check, and the sequence builder then
    refused it at the first batch, a traceback on every rank after the process group started."""
    (tmp_path / "pieces").mkdir()
    (tmp_path / "pieces" / "plan.json").write_text(json.dumps({"build": "convert", "settings": {"chunk_frames": 16}}))
    assert_one_line_error(["data.chunk_frames=16"], {}, ["data.chunk_frames: 16", "binning encodes 15-frame chunks",
                                                         "set data.chunk_frames=15"], tmp_path)


def test_a_corpus_read_with_another_chunk_length_or_tokenizer_is_refused(tmp_path):
    """A clip cut into 10-frame chunks, read as 15-frame ones, stops the run at its first sample, hours in. Codes
    stored by `jala data tokenize` or `jala token-predictor label`, read with the binning tokenizer or another
    GRVQ checkpoint, would be trained on, and evaluated, as other motions, with nothing said."""
    (tmp_path / "pieces").mkdir()
    plan = tmp_path / "pieces" / "plan.json"
    plan.write_text(json.dumps({"build": "tokenize", "tokenizer": "0" * 64, "converted": {"chunk_frames": 10}}))
    assert_one_line_error([], {}, ["data.chunk_frames=15 but", "converted with chunk_frames=10",
                                   "set data.chunk_frames=10"], tmp_path)
    plan.write_text(json.dumps({"build": "pseudo-label", "tokenizer": "0" * 64, "converted": {"chunk_frames": 15}}))
    words = ["data.mds_dir: ", "holds the codes of another motion tokenizer than",
             "set motion_tokenizer (kind and checkpoint) to the tokenizer the corpus was tokenized or labelled with"]
    assert_one_line_error([], {}, [*words, "binning steps=4 groups=1"], tmp_path)
    other = tmp_path / "other_grvq"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert_one_line_error(["motion_tokenizer.kind=grvq", f"motion_tokenizer.checkpoint={other}"], {},
                          [*words, f"kind=grvq checkpoint={other}"], tmp_path)


def test_a_resume_with_another_architecture_is_refused_by_key(tmp_path):
    """DeepSpeed would fail part-way through loading, on a tensor size deep in its state dict."""
    saved_run(tmp_path / "run", (4,))
    (tmp_path / "run" / "config.yaml").write_text("model:\n  perceiver_width: 12345\n")
    assert_one_line_error([f"train.out_dir={tmp_path / 'run'}"], {},
                          ["model.perceiver_width=", "was saved with 12345", "resume with model.perceiver_width=12345",
                           "new train.out_dir"], tmp_path)
