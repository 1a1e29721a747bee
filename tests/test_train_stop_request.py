"""A request to stop (``jala_ds/train/stop_request.py``): the trainer saves at its next log step and returns, the
request left in place is refused at the next launch, and once it is gone the run resumes from that checkpoint.
The trainer runs in this process, a world of one rank (the 2-rank path of the same loop is the end-to-end tests')."""
from __future__ import annotations

import pytest
from train_parts import world_of_one

from jala_ds.config_checks import ConfigError
from jala_ds.train.checkpoint_layout import checkpoints_dir, latest_checkpoint
from jala_ds.train.loop import train
from jala_ds.train.preflight import check_run
from jala_ds.train.stop_request import STOP_FILE_ENV, stop_file


@pytest.mark.parametrize("where", ["out_dir", "environment"])
def test_a_run_asked_to_stop_saves_at_its_next_log_step_and_resumes_from_there(where, tiny_corpus, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "run"
    if where == "environment":
        monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "job.stop"))
    overrides = [f"data.mds_dir={tiny_corpus.mds}", f"train.out_dir={out}", "train.micro_batch_size=2",
                 "train.global_batch_size=2", "train.max_steps=6", "train.log_every=2", "train.save_every=100",
                 "data.num_workers=0", "tracking.enabled=false"]
    plan = check_run("tiny_cpu", overrides)
    request = stop_file(out)
    assert request == (out / "STOP" if where == "out_dir" else tmp_path / "job.stop")
    request.parent.mkdir(parents=True, exist_ok=True)
    request.touch()
    with world_of_one():
        train(plan)
    assert [p.name for p in checkpoints_dir(out).iterdir() if p.is_dir()] == ["step_00000002"]
    assert latest_checkpoint(out).name == "step_00000002"
    with pytest.raises(ConfigError, match="an earlier launch was asked to stop"):
        check_run("tiny_cpu", overrides)
    request.unlink()
    assert check_run("tiny_cpu", overrides).resume_from == latest_checkpoint(out)
