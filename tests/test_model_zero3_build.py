"""build_model inside ``deepspeed.zero.Init`` (how the trainer builds it): partitioned parameters still get the
motion rows' mean init and the EMA targets' initial copy, and a ZeRO-3 engine trains the model.

One rank (gloo on CPU) in a fresh interpreter, so the process group does not leak into other tests.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT={port!r})
import deepspeed, torch
from transformers.integrations.deepspeed import HfDeepSpeedConfig
from jala_ds.model.build import build_model
from model_batches import Doc, make_batch, tiny_setup

from jala_ds.train.engine import init_distributed
init_distributed()
ds = {{"train_micro_batch_size_per_gpu": 1,
      "optimizer": {{"type": "AdamW", "params": {{"lr": 1e-3, "torch_adam": True}}}},
      # threshold 0: every parameter partitioned, none kept whole on the rank
      "zero_optimization": {{"stage": 3, "stage3_param_persistence_threshold": 0}}}}
cfg, vocab = tiny_setup()
hf_config = HfDeepSpeedConfig(ds)
with deepspeed.zero.Init(config_dict_or_path=ds):
    model = build_model(cfg, vocab)
embedding = model.backbone.get_input_embeddings().weight
params = dict(model.named_parameters())
with deepspeed.zero.GatheredParameters(list(params.values())):
    rows = [w.detach().clone() for w in (embedding, model.backbone.lm_head.weight)]
    pairs_equal = all(torch.equal(params[t], params[s]) for t, s in model.ema_pairs())
motion = slice(vocab.mot_start, vocab.size)
mean_rows = all(w.shape[0] == vocab.rows and torch.allclose(w[motion], w[:vocab.mot_start].mean(0).expand_as(w[motion]))
                for w in rows)
engine, *_ = deepspeed.initialize(model=model, config=ds,
                                  model_parameters=[p for p in model.parameters() if p.requires_grad])
losses = []
batch = make_batch(cfg, vocab, [[Doc()]], seed=0)
for _ in range(3):
    out = engine(batch)
    engine.backward(out.loss)
    engine.step()
    losses.append(out.loss.item())
print(json.dumps({{"partitioned": embedding.numel() == 0, "mean_rows": mean_rows,
                  "pairs_equal": pairs_equal, "losses": losses}}))
"""


@pytest.mark.slow
def test_build_under_zero3_init_and_train_a_few_steps():
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port for the one-rank process group
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    script = SCRIPT.format(tests=str(Path(__file__).parent), port=port)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["partitioned"], "zero.Init should have partitioned the embedding"
    assert result["mean_rows"] and result["pairs_equal"], result
    losses = result["losses"]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0], losses
