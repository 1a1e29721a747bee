"""``jala train`` on 2 ranks under the deepspeed launcher (gloo, CPU, ZeRO-3 with cpu.json), across an epoch end:
a run killed mid-way and resumed (under torchrun) ends with exactly the weights of an uninterrupted run and
continues its MLflow run; ``jala export`` of it loads with ``from_pretrained``, and a ZeRO-3 run can start from the
export. The same job as two "nodes" of one process each (torchrun, each node with its own /dev/shm as on separate
machines) ends with exactly the weights of the single-node run, and so does a run that gathers ZeRO-3 parameters
module by module instead of layer by layer. No job leaves DeepSpeed's CPU all-reduce files in /dev/shm."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from jala_jobs import BIN, JALA, deepspeed_launcher, finish, leftover_allreduce_buffers, run, start, torchrun
from mlflow import MlflowClient
from train_parts import gathered_state, world_of_one

from jala_ds.train.checkpoint_layout import (
    checkpoints_dir,
    latest_checkpoint,
    read_latest,
)
from jala_ds.train.export import HEADS_FILE, RECIPE_FILE, load_heads, merged_state_dict

STEPS = 14  # tiny_corpus: 44 samples, 11 micro-batches of 2 per rank and epoch, so the run crosses an epoch end


def train_args(tmp_path: Path, corpus: Path, out: str) -> list[str]:
    return [JALA, "train", "--recipe", "tiny_cpu", f"data.mds_dir={corpus}", f"train.out_dir={tmp_path / out}",
            f"train.max_steps={STEPS}", "train.save_every=4", "train.log_every=2", "train.keep_last=2"]


def launch_node(tmp_path: Path, corpus: Path, out: str, port: int, node_rank: int) -> subprocess.Popen:
    """One of two single-process "nodes" on this machine. Each gets a private /dev/shm (a mount namespace with
    its own tmpfs), as separate machines have: streaming's per-node shared memory must not be shared."""
    nodes = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node_rank),
             "--master_addr", "127.0.0.1", "--master_port", str(port)]
    # The same canonical node count as the single-node run: the same samples on the same ranks.
    job = [*nodes, *train_args(tmp_path, corpus, out), "data.num_canonical_nodes=1", "tracking.enabled=false"]
    return start(["unshare", "--mount", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "node", *job],
                 tmp_path)


def kill_a_rank_after_first_checkpoint(process: subprocess.Popen, out: Path) -> None:
    """SIGKILL rank 1 as soon as a checkpoint exists, as a node failure would."""
    deadline = time.monotonic() + 600
    while read_latest(checkpoints_dir(out)) is None:
        if process.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint:\n{process.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    ranks = [p for p in psutil.Process(process.pid).children(recursive=True)
             if "--local_rank=1" in " ".join(p.cmdline())]
    assert ranks, "rank 1 not found"
    ranks[0].send_signal(signal.SIGKILL)
    process.communicate(timeout=300)
    assert process.returncode != 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_corpus) -> Path:
    """Where the uninterrupted single-node run (the reference of every test here) has trained."""
    tmp_path = tmp_path_factory.mktemp("end_to_end")
    run([*deepspeed_launcher(29651), *train_args(tmp_path, tiny_corpus.mds, "whole")], tmp_path)
    assert not leftover_allreduce_buffers(29651)
    return tmp_path


@pytest.mark.slow
def test_two_single_process_nodes_end_with_the_weights_of_the_single_node_run(workdir, tiny_corpus):
    nodes = [launch_node(workdir, tiny_corpus.mds, "two_nodes", 29654, rank) for rank in (0, 1)]
    for node in nodes:
        finish(node)
    whole = merged_state_dict(latest_checkpoint(workdir / "whole"))
    two_nodes = merged_state_dict(latest_checkpoint(workdir / "two_nodes"))
    assert latest_checkpoint(workdir / "two_nodes").name == f"step_{STEPS:08d}"
    differ = [name for name in whole if not torch.equal(two_nodes[name], whole[name])]
    assert whole.keys() == two_nodes.keys() and not differ, differ


@pytest.mark.slow
def test_gathering_by_block_trains_exactly_like_gathering_by_module(workdir, tiny_corpus):
    # The reference run gathers each repeated layer whole (the default); per-module gathers are DeepSpeed's own.
    run([*torchrun(29655), *train_args(workdir, tiny_corpus.mds, "by_module"), "train.zero3_gather_by_block=false",
         "tracking.enabled=false"], workdir)
    whole = merged_state_dict(latest_checkpoint(workdir / "whole"))
    by_module = merged_state_dict(latest_checkpoint(workdir / "by_module"))
    assert whole.keys() == by_module.keys()
    # Not bit-equal: DeepSpeed wraps each hooked module's outputs in an identity autograd node, so the two runs
    # sum a tensor's gradient branches in another order (1e-8 after one step). Same math: 14 steps of AdamW
    # leave every tensor within 2e-4 of the other, relative to its norm; a missed gather would not be close.
    drift = {name: float((by_module[name] - whole[name]).norm() / whole[name].norm().clamp_min(1e-12))
             for name in whole}
    assert max(drift.values()) < 1e-3, sorted(drift.items(), key=lambda item: -item[1])[:5]


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run_and_exports(workdir, tiny_corpus):
    tmp_path = workdir

    interrupted = start([*deepspeed_launcher(29652), *train_args(tmp_path, tiny_corpus.mds, "resumed")], tmp_path)
    kill_a_rank_after_first_checkpoint(interrupted, tmp_path / "resumed")
    killed_at = latest_checkpoint(tmp_path / "resumed").name
    assert killed_at != f"step_{STEPS:08d}"
    assert not leftover_allreduce_buffers(29652)  # never mapped: a killed job leaves none either
    # Resumed under the other launcher: nothing a run saves may depend on which one started it.
    log = run([*torchrun(29653), *train_args(tmp_path, tiny_corpus.mds, "resumed")], tmp_path)
    assert f"resumed from {tmp_path / 'resumed'}" in log

    whole = merged_state_dict(latest_checkpoint(tmp_path / "whole"))
    resumed = merged_state_dict(latest_checkpoint(tmp_path / "resumed"))
    assert latest_checkpoint(tmp_path / "resumed").name == f"step_{STEPS:08d}"
    assert whole.keys() == resumed.keys()
    differ = {name: float((resumed[name] - whole[name]).abs().max()) for name in whole
              if not torch.equal(resumed[name], whole[name])}
    assert not differ, f"killed at {killed_at}, resumed weights differ: {differ}"
    assert len([p for p in checkpoints_dir(tmp_path / "resumed").iterdir() if p.is_dir()]) == 2  # keep_last
    for rank in (0, 1):  # the resumed loader ends where the uninterrupted one does: each sample consumed once
        states = [torch.load(latest_checkpoint(tmp_path / run) / f"jala_rank_{rank:05d}.pt", weights_only=True)
                  for run in ("whole", "resumed")]
        assert states[0]["loader"] == states[1]["loader"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("jala-tiny").experiment_id])
    assert len(runs) == 2  # one per out_dir: the resumed job continued its run
    for mlflow_run in runs:
        steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "loss")]
        assert steps[-1] == STEPS and set(range(2, STEPS + 1, 2)) <= set(steps)
        logged = mlflow_run.data.metrics.keys()
        assert {"mcp_loss", "align_loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"} <= logged
        peaks = [m.value for m in client.get_metric_history(mlflow_run.info.run_id, "peak_memory_gb")]
        assert 0 < max(peaks) < 4, peaks  # DESIGN.md: the tiny CPU recipe trains in under 4 GB per rank
        assert mlflow_run.data.params["train.max_steps"] == str(STEPS)

    exported = tmp_path / "export"
    run([JALA, "export", "--run", str(tmp_path / "whole"), "--out", str(exported)], tmp_path)
    check_export(exported, whole)
    check_pretrained_load_under_zero3(exported, whole)


def check_export(exported: Path, weights: dict[str, torch.Tensor]) -> None:
    """The folder loads with from_pretrained and, with its heads, rebuilds the trained JalaModel exactly (bf16)."""
    from transformers import InternVLForConditionalGeneration

    from jala_ds.config import load_config
    from jala_ds.model.build import build_model
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    def differing(state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
        return [name for name, value in state.items()
                if not torch.equal(value.to(torch.bfloat16), weights[prefix + name].to(torch.bfloat16))]

    backbone = InternVLForConditionalGeneration.from_pretrained(exported, local_files_only=True)
    assert not differing(backbone.state_dict(), "backbone.")
    cfg = load_config(exported / RECIPE_FILE)
    assert cfg.model.pretrained == str(exported.resolve()) and (exported / HEADS_FILE).is_file()
    tokenizer = load_text_tokenizer(cfg.model.pretrained)
    model = build_model(cfg, add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part))
    load_heads(model, exported)
    assert model.state_dict().keys() == weights.keys() and not differing(model.state_dict())


def check_pretrained_load_under_zero3(exported: Path, weights: dict[str, torch.Tensor]) -> None:
    """A run that starts from the export (model.pretrained) under ZeRO-3: born partitioned, weights all there."""
    from jala_ds.config import load_config
    from jala_ds.model.build import build_model
    from jala_ds.train.ds_config import build_ds_config
    from jala_ds.train.engine import model_init_context
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    cfg = load_config(exported / RECIPE_FILE, ["train.global_batch_size=2"])
    vocab = add_motion_vocab(load_text_tokenizer(cfg.model.pretrained), cfg.motion_tokenizer.vocab_per_part)
    with world_of_one():
        with model_init_context(build_ds_config(cfg.train, world_size=1)):
            model = build_model(cfg, vocab)
        assert all(hasattr(p, "ds_id") for p in model.parameters())
        loaded = gathered_state(model)
    differ = [name for name, value in loaded.items() if name.startswith("backbone.")
              and not torch.equal(value.to(torch.bfloat16), weights[name].to(torch.bfloat16))]
    assert not differ, differ
