"""Commands given a wrong folder or device stop with one stderr line that names the input and the fix, and exit
code 2 (the recipe's own errors are tests/test_train_cli_errors.py's)."""
from __future__ import annotations

import pytest
import torch

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


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_serve_on_cuda_without_a_cuda_device(tmp_path, capsys):
    assert jala(["serve", "--ckpt", str(tmp_path), "--device", "cuda"]) == 2
    assert one_line(capsys) == ("jala serve: --device cuda: no CUDA device is visible here: pass --device cpu, "
                                "or leave it out")


@pytest.mark.parametrize("command", [["eval", "motion", "--split", "lab"], ["eval", "latents"]])
@pytest.mark.parametrize("flag, value", [("--limit", "0"), ("--limit", "-1"), ("--batch-size", "0")])
def test_eval_counts_must_be_positive(command, flag, value, tmp_path, capsys):
    """A limit of 0 used to score every clip, and -1 all but the last."""
    with pytest.raises(SystemExit) as stopped:
        jala([*command, "--ckpt", str(tmp_path), "--data", str(tmp_path), flag, value])
    assert stopped.value.code == 2
    assert f"argument {flag}: {value}: give a positive number" in capsys.readouterr().err
