"""The blocks ZeRO-3 gathers whole: every repeated layer of the model, each once; and gathered by block, layers
behind a frozen input still train on their real gradients."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from model_batches import tiny_setup
from torch import nn
from train_parts import ds_config_for, gathered_state, world_of_one

from jala_ds.model.build import build_model
from jala_ds.train.zero_leaves import repeated_blocks


def test_the_blocks_are_the_repeated_layers_of_every_part():
    cfg, vocab = tiny_setup()
    model = build_model(cfg, vocab)
    blocks = repeated_blocks(model)
    text, vision = model.backbone.config.text_config, model.backbone.config.vision_config
    assert Counter(type(block).__name__ for block in blocks) == {
        "Qwen2DecoderLayer": text.num_hidden_layers,
        "InternVLVisionLayer": vision.num_hidden_layers,
        "Dinov2Layer": model.visual_encoder.encoder.config.num_hidden_layers,
        "PerceiverLayer": 2 * cfg.model.perceiver_layers,  # LAP and LSP
    }
    assert len({id(block) for block in blocks}) == len(blocks)


def test_a_list_inside_a_chosen_block_is_not_split_again():
    inner = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    outer = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.ModuleDict({"inner": inner})), nn.ReLU()])
    # the ReLU holds no parameters: nothing to gather, so no hook is worth moving
    assert repeated_blocks(nn.Sequential(outer)) == [outer[0]]


class FrozenEmbeddingThenBlocks(nn.Module):
    """A frozen lookup feeding trained blocks: the first block's input carries no gradient (post-training's case)."""

    def __init__(self, width: int = 400):  # 160k-element weights: partitioned under the production threshold
        super().__init__()
        self.embedding = nn.Embedding(16, width).requires_grad_(False)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(2))
        self.head = nn.Linear(width, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x).square().mean()


def train_two_steps(tmp_path, by_block: bool) -> dict[str, torch.Tensor]:
    import deepspeed

    from jala_ds.train.zero_leaves import gather_by_block

    torch.manual_seed(0)
    model = FrozenEmbeddingThenBlocks()
    if by_block:
        gather_by_block(model)
    ds = ds_config_for(tmp_path, stage=3, dtype="fp32")
    engine, *_ = deepspeed.initialize(model=model, config=ds,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    for step in range(2):
        loss = engine(torch.arange(8).view(2, 4) + step)
        engine.backward(loss)
        engine.step()
    return gathered_state(engine.module)


@pytest.mark.slow
def test_blocks_behind_a_frozen_input_get_their_real_gradients(tmp_path):
    with world_of_one():
        by_module = train_two_steps(tmp_path, by_block=False)
        by_block = train_two_steps(tmp_path, by_block=True)
    assert not torch.equal(by_module["blocks.0.0.weight"], FrozenEmbeddingThenBlocks().blocks[0][0].weight)
    for name, value in by_module.items():
        torch.testing.assert_close(by_block[name], value, rtol=1e-5, atol=1e-7, msg=name)
