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


PRETRAINED_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT={port!r})
import deepspeed, torch
from transformers import InternVLForConditionalGeneration
from jala_ds.model.backbone import backbone_config
from jala_ds.model.build import build_model
from jala_ds.train.engine import init_distributed, model_init_context
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer, load_text_tokenizer
from model_batches import tiny_setup

init_distributed()
folder = {folder!r}
tok = byte_level_tokenizer()
vlm = backbone_config("tiny", 56, len(tok), tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
vlm.tie_word_embeddings = vlm.text_config.tie_word_embeddings = {tied!r}
torch.manual_seed(0)
InternVLForConditionalGeneration(vlm).save_pretrained(folder)
tok.save_pretrained(folder)
ds = {{"train_micro_batch_size_per_gpu": 1, "zero_optimization": {{"stage": 3, "stage3_param_persistence_threshold": 0}}}}
cfg, _ = tiny_setup(f"model.pretrained={{folder}}")
vocab = add_motion_vocab(load_text_tokenizer(folder), cfg.motion_tokenizer.vocab_per_part)
with model_init_context(ds):
    sharded = build_model(cfg, vocab).backbone
whole = build_model(cfg, vocab).backbone
with deepspeed.zero.GatheredParameters(list(sharded.parameters())):
    # rows past vocab.size stand for no token (random padding): every other value must match the plain build
    differ = [name for name, p in sharded.named_parameters()
              if not torch.equal(p[:vocab.size], dict(whole.named_parameters())[name][:vocab.size])]
print(json.dumps({{"partitioned": sharded.get_input_embeddings().weight.numel() == 0, "differ": differ}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True])
def test_a_pretrained_folder_loads_under_zero3_init_as_without_it(tied, tmp_path):
    """from_pretrained inside zero.Init (HfDeepSpeedConfig set) fills the shards with the folder's weights, and the
    motion rows get the same mean as in a plain build, for an untied and a tied LM head."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    script = PRETRAINED_SCRIPT.format(tests=str(Path(__file__).parent), port=port, folder=str(tmp_path / "vlm"),
                                      tied=tied)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"partitioned": True, "differ": []}
