"""ZeRO-1/2's step-end re-pointing (``jala_ds/train/zero_weight_views.py``): skipped while every weight views its
slice of the flat buffer, done when one has moved, and training lands where DeepSpeed's always-re-pointing step
does."""
from __future__ import annotations

import pytest
import torch
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
from train_parts import OnlineAndTarget, ds_config_for, gathered_state, world_of_one

from jala_ds.train.config import TrainConfig
from jala_ds.train.engine import build_engine
from jala_ds.train.zero_weight_views import repoint_moved_weights_only


def engine_for(tmp_path, stage: int = 2):
    torch.manual_seed(0)
    train = TrainConfig(micro_batch_size=2, global_batch_size=2, dtype="bf16")
    with world_of_one():
        return build_engine(OnlineAndTarget(), ds_config_for(tmp_path, stage, "bf16"), train, total_steps=8)


def views_its_slice(optimizer, param) -> bool:
    for group, flat in enumerate(optimizer.bit16_groups_flat):
        for candidate, offset in zip(optimizer.round_robin_bit16_groups[group], optimizer.round_robin_bit16_offsets[group]):
            if candidate is param:
                return param.data_ptr() == flat.data_ptr() + offset * flat.element_size()
    raise AssertionError("not a trained parameter")


def step(engine, x: torch.Tensor) -> None:
    engine.backward(engine(x.to(engine.device, torch.bfloat16)))
    engine.step()


def test_only_a_moved_weight_is_re_pointed_and_training_matches_deepspeeds(tmp_path, monkeypatch):
    calls = []
    stock_update = DeepSpeedZeroOptimizer._update_model_bit16_weights

    def counted(self, group_index):
        calls.append(group_index)
        stock_update(self, group_index)

    monkeypatch.setattr(DeepSpeedZeroOptimizer, "_update_model_bit16_weights", counted)
    stock, ours = engine_for(tmp_path), engine_for(tmp_path)
    del stock.optimizer._update_model_bit16_weights      # DeepSpeed's: re-points every group after every step
    weight = ours.module.online.weight
    torch.manual_seed(1)
    for i in range(4):
        x = torch.randn(2, 8)
        if i == 2:   # give one weight storage of its own in both engines, as offloading or a careless load would
            for engine in (stock, ours):
                engine.module.online.weight.data = engine.module.online.weight.data.clone()
        calls.clear()
        step(ours, x)
        assert calls == ([0] if i == 2 else [])       # the moved weight's group (matrices), only once it moved
        step(stock, x)
        assert views_its_slice(ours.optimizer, weight)
        torch.testing.assert_close(gathered_state(ours.module), gathered_state(stock.module), rtol=0, atol=0)
    assert all(views_its_slice(ours.optimizer, p) for group in ours.optimizer.bit16_groups for p in group)


@pytest.mark.parametrize("stage", [1, 3])
def test_zero_1_takes_it_and_zero_3_keeps_its_own(tmp_path, stage):
    engine = engine_for(tmp_path, stage)
    assert repoint_moved_weights_only(engine.optimizer) is (stage == 1)
