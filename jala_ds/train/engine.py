"""The DeepSpeed side of a run: process group, where the model is born, and the engine around it.

Order matters under ZeRO-3: the process group first, then the model built inside ``deepspeed.zero.Init`` (so
a 2B model is born partitioned instead of whole on every rank), then ``deepspeed.initialize``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator

from jala_ds.train.checkpoint import install_safe_engine
from jala_ds.train.compiled_blocks import compile_blocks
from jala_ds.train.config import TrainConfig
from jala_ds.train.ds_config import zero_stage
from jala_ds.train.optim import build_scheduler, optimizer_param_groups
from jala_ds.train.zero_grad_buckets import use_gradient_buckets
from jala_ds.train.zero_grad_checks import use_multi_tensor_grad_checks
from jala_ds.train.zero_leaves import gather_by_block
from jala_ds.train.zero_sync_free_step import use_sync_free_step
from jala_ds.train.zero_weight_views import repoint_moved_weights_only


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> None:
    """Join the launcher's process group (deepspeed, torchrun, srun+torchrun), or make a one-rank group."""
    launched = all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if not launched:
        if int(os.environ.get("WORLD_SIZE", "1")) != 1:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but RANK, MASTER_ADDR or MASTER_PORT is not set: "
                               "start the job with the deepspeed launcher, torchrun or srun + torchrun")
        # A plain `jala train`: a world of one, so the same ZeRO code path runs without a launcher.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    skip_cpu_inference_allreduce()
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))


def skip_cpu_inference_allreduce() -> None:
    """Keep DeepSpeed's CPU backend from building its shared-memory all-reduce when the process group starts.

    On the CPU accelerator DeepSpeed compiles that C++ op with gcc (74 s on our 2-core machine, and again for every
    new virtual environment: the build depends on its path), and each rank then maps a 69 MB file in /dev/shm that
    it never removes. The op serves only ``inference_all_reduce``, which DeepSpeed-Inference's tensor-parallel
    layers call; training reduces through torch.distributed (gloo on a CPU) either way. Other accelerators have no
    such op, so this changes nothing there.
    """
    if get_accelerator().device_name() == "cpu":
        # By module name: the attribute deepspeed.comm.torch is the torch package, which deepspeed.comm imports.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


@contextlib.contextmanager
def model_init_context(ds_config: dict[str, Any]) -> Iterator[None]:
    """Under ZeRO-3: parameters partitioned as they are created (``deepspeed.zero.Init``), and transformers
    told so (``HfDeepSpeedConfig``) so that its ``from_pretrained`` and ``resize_token_embeddings`` gather
    partitioned weights instead of reading empty placeholders. Otherwise nothing."""
    if zero_stage(ds_config) != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(ds_config)  # transformers keeps only a weak reference: hold it here
    try:
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            yield
    finally:
        del hf_config
        unset_hf_deepspeed_config()


def build_engine(model: torch.nn.Module, ds_config: dict[str, Any], train: TrainConfig, total_steps: int) -> Any:
    """``deepspeed.initialize`` with our parameter groups and schedule, writing weights_only-safe checkpoints.
    Under ZeRO-3 with ``train.zero3_gather_by_block`` each repeated layer is gathered whole (``zero_leaves.py``);
    with ``train.compile_blocks`` each is compiled (``compiled_blocks.py``). ``train.cudnn_attention`` sets
    whether torch's SDPA may use cuDNN in this process. Under ZeRO-1/2 with ``train.multi_tensor_grad_checks``
    the optimiser checks its gradients in a few launches (``zero_grad_checks.py``); under ZeRO-2 with
    ``train.bucketed_grad_reduction`` it reduces them a bucket at a time (``zero_grad_buckets.py``). Under ZeRO-1/2
    the step re-points only weights that have moved (``zero_weight_views.py``), and with ``train.sync_free_step``
    (bf16, fused AdamW) it decides a skip on the device (``zero_sync_free_step.py``)."""
    if zero_stage(ds_config) == 3 and train.zero3_gather_by_block:
        gather_by_block(model)
    if train.compile_blocks:
        compile_blocks(model, train.compile_blocks)
    torch.backends.cuda.enable_cudnn_sdp(train.cudnn_attention)
    engine, *_ = deepspeed.initialize(
        model=model, config=ds_config,
        model_parameters=optimizer_param_groups(model, train.weight_decay),
        lr_scheduler=lambda optimizer: build_scheduler(optimizer, train, total_steps))
    install_safe_engine(engine)
    if train.multi_tensor_grad_checks:
        use_multi_tensor_grad_checks(engine.optimizer)
    if train.bucketed_grad_reduction:
        use_gradient_buckets(engine.optimizer)
    if train.sync_free_step:
        use_sync_free_step(engine.optimizer)
    repoint_moved_weights_only(engine.optimizer)
    return engine
