"""Checkpoints with a real DeepSpeed engine (one rank, gloo, CPU): exact resume, keep-last, an atomic ``latest``,
a crash or kill mid-save, and every file loadable with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_parts import EMA_PAIRS, OnlineAndTarget, ds_config_for, gathered_state, train_step, world_of_one
from two_ranks import run_two_ranks

from jala_ds.config_checks import ConfigError
from jala_ds.train import checkpoint_layout
from jala_ds.train.checkpoint import load_checkpoint, save_checkpoint
from jala_ds.train.checkpoint_layout import latest_checkpoint, read_latest, resume_target
from jala_ds.train.engine import build_engine, model_init_context
from jala_ds.train.export import merged_state_dict
from jala_ds.train.rng_state import capture_rng_state, restore_rng_state
from jala_ds.train.zero_ema import ShardedEMA

TOTAL_STEPS = 10


@pytest.fixture(scope="module", autouse=True)
def one_rank():
    with world_of_one():
        yield


def fresh_run(ds: dict, seed: int = 0, world_size: int = 1):
    from jala_ds.train.config import TrainConfig
    torch.manual_seed(seed)
    with model_init_context(ds):
        model = OnlineAndTarget()
    train = TrainConfig(micro_batch_size=2, global_batch_size=2 * world_size, lr=1e-2, warmup_frac=0.2)
    engine = build_engine(model, ds, train, total_steps=TOTAL_STEPS)
    return engine, ShardedEMA(engine.module, EMA_PAIRS, tau=0.9)


def save(engine, ema, out: Path, step: int, keep_last: int = 3) -> Path:
    return save_checkpoint(engine, out, step, run_state={"step": step, "config": {"train.lr": 1e-2}},
                           rank_state={"rng": capture_rng_state(), "ema": ema.state_dict(),
                                       "loader": {"samples_seen": 2 * step}},
                           keep_last=keep_last)


@pytest.mark.parametrize("stage, dtype", [(3, "fp32"), (3, "bf16"), (2, "bf16"), (0, "fp32")])
def test_resume_continues_exactly_and_every_file_loads_weights_only(tmp_path, stage, dtype):
    ds = ds_config_for(tmp_path, stage, dtype)
    engine, ema = fresh_run(ds)
    for _ in range(3):
        train_step(engine, ema)
    folder = save(engine, ema, tmp_path / "run", step=3)
    losses = [train_step(engine, ema) for _ in range(2)]
    expected = gathered_state(engine.module)

    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name.startswith("jala_rank") for p in files)
    assert any("optim_states" in p.name for p in files) == (stage > 0)
    for path in files:   # every file but the JSON record for preflight is a torch file
        if path.name != checkpoint_layout.SAVED_WITH:
            torch.load(path, weights_only=True)

    engine, ema = fresh_run(ds, seed=1)  # different initial weights: everything must come from the checkpoint
    run_state, rank_state = load_checkpoint(engine, latest_checkpoint(tmp_path / "run"))
    ema.load_state_dict(rank_state["ema"])
    restore_rng_state(rank_state["rng"])
    assert run_state["step"] == 3 and rank_state["loader"] == {"samples_seen": 6}
    assert [train_step(engine, ema) for _ in range(2)] == losses
    for name, value in gathered_state(engine.module).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


def test_a_checkpoint_of_another_zero_stage_is_refused_before_deepspeed_reads_it(tmp_path):
    engine, ema = fresh_run(ds_config_for(tmp_path, 3, "bf16"))
    train_step(engine, ema)
    folder = save(engine, ema, tmp_path / "run", step=1)
    engine, _ = fresh_run(ds_config_for(tmp_path, 2, "bf16"))
    with pytest.raises(RuntimeError, match="saved under ZeRO-3 and this run's train.ds_config is ZeRO-2: resume "
                                           "with the ds_config the run started with"):
        load_checkpoint(engine, folder)


def test_a_checkpoint_records_what_saved_it_for_preflight(tmp_path):
    engine, ema = fresh_run(ds_config_for(tmp_path, 3, "bf16"))
    train_step(engine, ema)
    folder = save(engine, ema, tmp_path / "run", step=1)
    assert json.loads((folder / checkpoint_layout.SAVED_WITH).read_text()) == {"world_size": 1, "zero_stage": 3}
    checkpoint_layout.check_resumable(folder, world_size=1, zero_stage=3)
    with pytest.raises(ConfigError, match="saved by 1 ranks and this launch has 2"):
        checkpoint_layout.check_resumable(folder, world_size=2, zero_stage=3)
    with pytest.raises(ConfigError, match="saved under ZeRO-3 and this run's config is ZeRO-2"):
        checkpoint_layout.check_resumable(folder, world_size=1, zero_stage=2)
    # a checkpoint from before saved_with.json: its rank files give the world size
    (folder / checkpoint_layout.SAVED_WITH).unlink()
    checkpoint_layout.check_resumable(folder, world_size=1, zero_stage=2)
    with pytest.raises(ConfigError, match="saved by 1 ranks"):
        checkpoint_layout.check_resumable(folder, world_size=2, zero_stage=3)


def test_a_folder_without_a_checkpoint_or_with_half_of_one_is_refused_by_name(tmp_path):
    """An empty step folder read as "saved by 0 ranks: relaunch with 0 ranks"; one whose save was killed after rank
    0 wrote passed preflight and stopped rank 1 inside DeepSpeed's load."""
    folder = tmp_path / "checkpoints" / "step_00000010"
    folder.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"step_00000010 holds no checkpoint \(no saved_with.json, no jala_rank"):
        checkpoint_layout.check_resumable(folder, world_size=1, zero_stage=3)
    checkpoint_layout.record_saved_with(folder, world_size=2, zero_stage=3)
    (folder / checkpoint_layout.rank_file(0)).touch()
    with pytest.raises(ConfigError, match=r"is incomplete \(the files of 1 of its 2 ranks.*train.resume=auto"):
        checkpoint_layout.check_resumable(folder, world_size=2, zero_stage=3)
    (folder / checkpoint_layout.rank_file(1)).touch()
    checkpoint_layout.check_resumable(folder, world_size=2, zero_stage=3)


def test_keeps_the_last_n_and_latest_names_the_newest(tmp_path):
    engine, ema = fresh_run(ds_config_for(tmp_path, 3, "fp32"))
    for step in range(1, 5):
        train_step(engine, ema)
        save(engine, ema, tmp_path / "run", step, keep_last=2)
    root = checkpoint_layout.checkpoints_dir(tmp_path / "run")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000003", "step_00000004"]
    assert read_latest(root) == "step_00000004"
    with pytest.raises(ValueError, match="latest"):
        save(engine, ema, tmp_path / "run", 4)


def test_a_crash_before_latest_moves_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    ds = ds_config_for(tmp_path, 3, "fp32")
    engine, ema = fresh_run(ds)
    train_step(engine, ema)
    save(engine, ema, tmp_path / "run", 1)
    at_step_1 = gathered_state(engine.module)
    train_step(engine, ema)

    def crash(*_):
        raise RuntimeError("injected crash after the engine wrote")
    monkeypatch.setattr(checkpoint_layout, "publish_latest", crash)
    with pytest.raises(RuntimeError, match="injected"):
        save(engine, ema, tmp_path / "run", 2)
    assert (tmp_path / "run/checkpoints/step_00000002").is_dir()
    assert latest_checkpoint(tmp_path / "run").name == "step_00000001"

    engine, ema = fresh_run(ds, seed=1)
    run_state, _ = load_checkpoint(engine, latest_checkpoint(tmp_path / "run"))
    assert run_state["step"] == 1
    for name, value in gathered_state(engine.module).items():
        torch.testing.assert_close(value, at_step_1[name], rtol=0, atol=0, msg=name)
    monkeypatch.undo()
    train_step(engine, ema)
    save(engine, ema, tmp_path / "run", 2)  # the crashed save's leftovers are replaced
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"


KILLED_MID_SAVE = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from jala_ds.train import checkpoint_layout
from train_parts import world_of_one, ds_config_for, train_step
from test_train_checkpoint import fresh_run, save
from pathlib import Path
out = Path({out!r})
with world_of_one():
    engine, ema = fresh_run(ds_config_for(out, 3, "fp32"))
    train_step(engine, ema)
    save(engine, ema, out / "run", 1)
    train_step(engine, ema)
    checkpoint_layout.publish_latest = lambda *_: os._exit(137)  # killed: no exception handling, no clean-up runs
    save(engine, ema, out / "run", 2)
"""


@pytest.mark.slow
def test_a_process_killed_mid_save_leaves_latest_on_the_previous_checkpoint(tmp_path):
    code = KILLED_MID_SAVE.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr[-3000:]
    assert latest_checkpoint(tmp_path / "run").name == "step_00000001"
    engine, _ = fresh_run(ds_config_for(tmp_path, 3, "fp32"), seed=1)
    run_state, rank_state = load_checkpoint(engine, latest_checkpoint(tmp_path / "run"))
    assert run_state["step"] == 1 and set(rank_state) == {"rng", "ema", "loader"}


TWO_RANK_RESUME = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch.distributed as dist
from jala_ds.train.checkpoint import load_checkpoint
from jala_ds.train.checkpoint_layout import latest_checkpoint
from jala_ds.train.engine import init_distributed
from jala_ds.train.rng_state import restore_rng_state
from train_parts import ds_config_for, gathered_state, train_step
from test_train_checkpoint import fresh_run, save

init_distributed()
rank, out = dist.get_rank(), Path(sys.argv[2])
(out / f"config{rank}").mkdir()
ds = ds_config_for(out / f"config{rank}", 2, "bf16", world_size=2)
engine, ema = fresh_run(ds, world_size=2)
for _ in range(3):
    train_step(engine, ema)
save(engine, ema, out / "run", step=3)
saved = {name: value.tolist() for name, value in gathered_state(engine.module).items()}
losses = [train_step(engine, ema) for _ in range(2)]
expected = gathered_state(engine.module)
engine, ema = fresh_run(ds, seed=1, world_size=2)
_, rank_state = load_checkpoint(engine, latest_checkpoint(out / "run"))
ema.load_state_dict(rank_state["ema"])
restore_rng_state(rank_state["rng"])
resumed = [train_step(engine, ema) for _ in range(2)]
differ = [name for name, value in gathered_state(engine.module).items() if not value.equal(expected[name])]
(out / f"rank{rank}.json").write_text(json.dumps({"losses": losses, "resumed": resumed, "differ": differ,
                                                  "saved": saved}))
"""


@pytest.mark.slow
def test_zero2_optimizer_state_split_over_two_ranks_resumes_exactly_and_merges_for_export(tmp_path):
    """The full recipe's ZeRO-2: each rank saves and reloads its half of the fp32 weights and Adam moments, and
    ``jala export``'s merge puts the halves back together: the fp32 masters round to the bf16 weights trained."""
    results = run_two_ranks(TWO_RANK_RESUME, [str(Path(__file__).parent)], tmp_path)
    for result in results:
        assert result["resumed"] == result["losses"] and result["differ"] == []
    assert results[0]["losses"] == results[1]["losses"]
    saved = latest_checkpoint(tmp_path / "run")
    assert sorted(p.name for p in saved.rglob("*optim_states.pt")) == [
        f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
    merged = merged_state_dict(saved)
    assert merged.keys() == results[0]["saved"].keys()
    for name, weights in results[0]["saved"].items():
        assert torch.equal(merged[name].to(torch.bfloat16).float(), torch.tensor(weights)), name


def test_resume_target_reads_auto_none_and_folders(tmp_path):
    assert resume_target("auto", str(tmp_path)) is None
    assert resume_target("none", str(tmp_path)) is None
    root = checkpoint_layout.checkpoints_dir(tmp_path)
    (root / "step_00000007").mkdir(parents=True)
    checkpoint_layout.publish_latest(root, "step_00000007")
    assert resume_target("auto", str(tmp_path)) == root / "step_00000007"
    assert resume_target(str(root / "step_00000007"), "elsewhere") == root / "step_00000007"
    with pytest.raises(ConfigError, match="train.resume"):
        resume_target(str(tmp_path / "missing"), str(tmp_path))
