"""What ``build_engine`` sets up around DeepSpeed from the train section: torch's attention backends, compiled
layers, and a clear refusal of a compile backend torch does not have."""
from __future__ import annotations

import pytest
import torch
from train_parts import OnlineAndTarget, ds_config_for, world_of_one

from jala_ds.config import load_config
from jala_ds.config_checks import ConfigError
from jala_ds.train.config import TrainConfig
from jala_ds.train.engine import build_engine


@pytest.mark.parametrize("cudnn", [False, True])
def test_cudnn_attention_follows_the_train_section(tmp_path, cudnn):
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        with world_of_one():
            build_engine(OnlineAndTarget(), ds_config_for(tmp_path, 3, "fp32"),
                         TrainConfig(micro_batch_size=2, global_batch_size=2, cudnn_attention=cudnn), total_steps=2)
        assert torch.backends.cuda.cudnn_sdp_enabled() is cudnn
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_an_unknown_compile_backend_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="train.compile_blocks: 'inductr' is not a torch.compile backend"):
        load_config("tiny_cpu", ["train.compile_blocks=inductr"])
    assert load_config("tiny_cpu", ["train.compile_blocks=inductor"]).train.compile_blocks == "inductor"
