"""`python -m benchmarks.host_variants`: each of our host-side changes undone in place gives DeepSpeed's own path
for its steps and is restored exactly afterwards; the benchmark times every variant of a real training run and
writes the table."""
import torch
from deepspeed.accelerator import get_accelerator
from host_syncs import HostSyncCensus
from test_train_zero_sync_free_step import engine_for, step
from train_parts import world_of_one

from benchmarks import host_variants


def waits_in_one_step(engine, monkeypatch) -> tuple[int, int]:
    """(the accelerator's synchronize() calls, operators that read a value to the host) in one training step."""
    accelerator = get_accelerator()
    synchronised = []
    device_wide = accelerator.synchronize
    monkeypatch.setattr(accelerator, "synchronize",
                        lambda *args, **kwargs: synchronised.append(1) or device_wide(*args, **kwargs))
    with HostSyncCensus() as census:
        step(engine, torch.randn(2, 8))
    monkeypatch.undo()
    return len(synchronised), sum(census.calls.values())


def test_undoing_all_changes_gives_deepspeeds_path_and_restores_ours(tmp_path, monkeypatch):
    engine = engine_for(tmp_path, 2, sync_free=True)
    for _ in range(2):       # DeepSpeed's timer synchronises from the third step on
        step(engine, torch.randn(2, 8))
    variants = host_variants.variants_of(engine)
    assert list(variants) == [host_variants.SHIPPED, "DeepSpeed's throughput timer", "the skip decided on the host",
                              "DeepSpeed's gradient checks", "DeepSpeed's re-pointing", host_variants.ALL]
    holders = [engine.optimizer, engine.optimizer.optimizer, engine.tput_timer, engine.tput_timer.config]
    before = [dict(vars(holder)) for holder in holders]
    with host_variants.undone(variants[host_variants.ALL]):
        assert waits_in_one_step(engine, monkeypatch) == (2, 4)   # the timer twice; the verdict, the norm, 2 clips
        assert "get_grad_norm_direct" not in vars(engine.optimizer)   # DeepSpeed's class method shows again
    after = [dict(vars(holder)) for holder in holders]
    for was, now in zip(before, after, strict=True):
        assert set(was) == set(now)
        changed = [name for name in was if name in {name for _, name, _ in variants[host_variants.ALL]}]
        assert all(now[name] is was[name] for name in changed), changed
    assert waits_in_one_step(engine, monkeypatch) == (0, 0)


def test_every_variant_of_a_training_run_is_timed(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)   # MLflow puts artifacts under ./mlruns
    overrides = [f"data.mds_dir={tiny_corpus.mds}", "train.ds_config=ds_configs/zero2.json", "train.dtype=bf16",
                 "train.global_batch_size=2",
                 f"train.out_dir={tmp_path / 'run'}", "tracking.enabled=false"]
    with world_of_one():
        rows = host_variants.run("tiny_cpu", overrides, rounds=1, steps=1, warmup=3, out_dir=tmp_path / "results")
    assert [row["step"] for row in rows] == [host_variants.SHIPPED, "DeepSpeed's throughput timer",
                                             "the skip decided on the host", "DeepSpeed's gradient checks",
                                             "DeepSpeed's re-pointing", host_variants.ALL]
    assert all(row["ms per step"] > 0 and row["samples/s"] > 0 for row in rows) and rows[0]["this / shipped"] == 1
    (md,) = (tmp_path / "results").glob("*_host_variants_*.md")
    assert "ZeRO stage 2, bf16" in md.read_text()
