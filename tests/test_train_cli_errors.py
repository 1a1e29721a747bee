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
    "missing ds_config": (["train.ds_config=ds_configs/nope.json"], {}, ["train.ds_config", "ds_configs/cpu.json"]),
    "ds_config contradicts recipe": ("micro", {}, ["train_micro_batch_size_per_gpu=8", "train.micro_batch_size"]),
    "ds_config bf16 vs fp32 recipe": ("bf16", {}, ["bf16.enabled=true", "train.dtype"]),
    "ds_config has a scheduler": ("scheduler", {}, ["scheduler", "train.warmup_frac"]),
    "ds_config asks for fp16": ("fp16", {}, ["fp16.enabled=true", "train.dtype=bf16"]),
    "resume folder missing": (["train.resume=/nonexistent/step_00000010"], {}, ["train.resume", "auto or none"]),
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
    recipe = [] if "--recipe" in extra else ["--recipe", "tiny_cpu"]
    args = [JALA, "train", *recipe, f"data.mds_dir={tmp_path}", "train.dtype=fp32", *extra]
    launcher_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars} | {"WORLD_SIZE": "2"} | env_changes
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jala: config error:")
    for word in words:
        assert word in lines[0], f"{word!r} missing from: {lines[0]}"
