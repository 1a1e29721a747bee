"""The trainer's optimiser step (``loop.optimizer_step``) under the recipe's ZeRO-2 engine never makes the host wait
for the device: the tiny JALA model on loader batches, two micro-batches per step, the log window's sums and the
EMA. No operator reads a value to the host and nothing calls the accelerator's ``synchronize()``."""
import itertools

import torch
from deepspeed.accelerator import get_accelerator
from host_syncs import HostSyncCensus
from train_parts import world_of_one

from jala_ds.train.loop import build_training, endless, optimizer_step, seed_everything
from jala_ds.train.metrics import StepMetrics
from jala_ds.train.preflight import check_run

MICRO_BATCHES = 2


def test_the_trainers_step_never_waits_for_the_device(tiny_corpus, tmp_path, monkeypatch):
    plan = check_run("tiny_cpu", [f"data.mds_dir={tiny_corpus.mds}", "train.ds_config=ds_configs/zero2.json",
                                  "train.dtype=bf16", "train.micro_batch_size=2", "train.global_batch_size=4",
                                  f"train.grad_accum_steps={MICRO_BATCHES}", f"train.out_dir={tmp_path}",
                                  "tracking.enabled=false", "train.max_steps=8"])
    accelerator = get_accelerator()
    with world_of_one():
        seed_everything(0)
        parts = build_training(plan, 0, 1)
        engine = parts.engine
        assert engine.optimizer.sync_free_step and parts.ema.pairs
        metrics = StepMetrics(engine.device, losses=parts.losses, flops_per_sample=None, peak_flops=None)
        # collated first: the collate reads its CPU tensors in the loader (in its workers, on a GPU machine)
        batches = iter(list(itertools.islice(endless(parts.loader), 5 * MICRO_BATCHES)))
        for _ in range(3):   # the optimiser state, and what DeepSpeed does only once
            optimizer_step(engine, parts.ema, batches, metrics, MICRO_BATCHES, torch.bfloat16)
        synchronised = []
        device_wide = accelerator.synchronize
        monkeypatch.setattr(accelerator, "synchronize",
                            lambda *args, **kwargs: synchronised.append(1) or device_wide(*args, **kwargs))
        with HostSyncCensus() as census:
            for _ in range(2):
                optimizer_step(engine, parts.ema, batches, metrics, MICRO_BATCHES, torch.bfloat16)
        monkeypatch.undo()
        assert (len(synchronised), dict(census.calls)) == (0, {})
        assert metrics.flush(lr=1e-4, grad_norm=None)["skipped_steps"] == 0.0
