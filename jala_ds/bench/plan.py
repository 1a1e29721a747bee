"""Step time and memory of ZeRO data-parallel JALA training versus GPU and node count: compute plus collectives.

A step is ``grad_accum`` micro-steps. Each micro-step computes ``micro_batch`` samples at the card's bf16 peak
times a compute MFU (model FLOPs over the time the GPU's kernels run, measured on one GPU, so without
communication), but never faster than the host can issue the work: a host time per micro-step (Python, ZeRO-3's
hooks, kernel launches) plus one per optimiser step (the engine's step over every parameter), measured where the
GPU waited for the host, is a floor no card shortens.

Each micro-step also runs the ds_config's collectives over the full (unsharded) bytes. Under ZeRO-3 there are
three: an all-gather of the parameters before the forward, a re-gather before the backward, a reduce-scatter of
the gradients. Under ZeRO-2 only the reduce-scatter runs per micro-step; the updated parameters are all-gathered
once after the optimiser step, with nothing left to hide behind. A ring collective moves (n - 1) / n of the
buffer through every GPU's link, and as much through every node's network adapters (NCCL's rings enter and leave
each node once, carrying the other nodes' shards and the node's own); the slower of the two sets its time, plus
(n - 1) hop latencies per call. A fraction ``overlap`` of the per-micro-step
communication hides behind compute (DeepSpeed prefetches the next layer's parameters and reduces gradients while
the backward runs); the rest adds to the step, and so does the memory-bound Adam update of each rank's shard.
Memory per GPU is the stage's weights, gradients and optimiser state plus, when their size per sample is known,
one micro-batch's activations. ``docs/performance.md`` lists every constant and why.

    work = Workload.from_recipe(cfg, count, dims)
    rows = scaling_table(work, Cluster(card("a800")), [8, 16, 32], mfu=0.34, host_s=0.944)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jala_ds.bench.cards import Card
from jala_ds.bench.dims import ModelDims
from jala_ds.bench.flops import FlopCount

if TYPE_CHECKING:
    from jala_ds.config import JalaConfig

EPOCH_SAMPLES = 7_500_000
"""UniHand-Mix: one epoch is 7.5M samples (paper, sec. 6.1)."""
PAPER_HOURS, PAPER_GPUS, PAPER_CARD = 68.0, 8, "a800"
"""The paper's budget: one epoch in 68 h on 8 x A800-80GB."""
TARGET_HOURS = 12.0
"""DESIGN.md's target for the same 8 x A800."""
DEFAULT_MFU = 0.40
"""Compute efficiency assumed when nothing was measured: what well-tuned bf16 training of 1-3B models reaches."""
LINK_EFFICIENCY = 0.8
"""NCCL bus bandwidth over nominal NVLink bandwidth for large messages."""
NETWORK_EFFICIENCY = 0.8
"""NCCL bus bandwidth over nominal InfiniBand / RoCE bandwidth for large messages."""
HOP_LATENCY_LINK_S = 2e-6
"""Latency of one ring step between GPUs of a node."""
HOP_LATENCY_NETWORK_S = 6e-6
"""Latency of one ring step across nodes."""
DEEPSPEED_REDUCE_BUCKET = 500_000_000
"""DeepSpeed's default ``reduce_bucket_size`` (elements), used when the recipe's ds_config does not set one."""
WIRE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}
"""Bytes per gradient element for each DeepSpeed ``communication_data_type``."""
ADAM_BYTES_PER_PARAM = 30
"""HBM traffic of one fp32 Adam update: read master, m, v, grad (16 B), write master, m, v (12 B) and bf16 (2 B)."""
HBM_EFFICIENCY = 0.8
"""Achieved over nominal HBM bandwidth in the optimiser step."""
STATE_BYTES = {3: (18, 0), 2: (16, 4)}
"""Per trained parameter under each ZeRO stage: (bytes split across the GPUs, bytes every GPU holds whole), as
DeepSpeed's own estimators count them (``estimate_zero3_model_states_mem_needs``: 18 sharded;
``estimate_zero2_model_states_mem_needs``: 16 sharded, 4 replicated for the 16-bit weights and gradients)."""


@dataclass(frozen=True)
class Cluster:
    """The machines: card, GPUs per node and the network between nodes."""

    card: Card
    gpus_per_node: int = 8
    network_gb_s: float = 100.0
    """Per node, one direction, GB/s: 4 x 200 Gb/s adapters = 100 GB/s."""

    def nodes(self, gpus: int) -> int:
        return math.ceil(gpus / self.gpus_per_node)


@dataclass(frozen=True)
class Workload:
    """What one training sample and one ZeRO-3 micro-step cost, independent of the GPU count."""

    flops_per_sample: float
    params_forward: int
    """Parameters all-gathered before the forward: all of them, the frozen ones included."""
    params_backward: int
    """Parameters re-gathered before the backward: those a gradient flows through."""
    params_trained: int
    """Parameters whose gradients are reduce-scattered and which Adam updates."""
    gather_calls: int
    """All-gather calls per pass: one coalesced call per transformer layer (plus embeddings and heads)."""
    micro_batch: int
    grad_accum: int
    param_bytes: int = 2
    """Parameter bytes gathered: the training dtype's (bf16: 2)."""
    grad_bytes: int = 2
    """Gradient bytes on the wire: bf16 unless the ds_config sets ``communication_data_type``."""
    reduce_bucket_params: int = DEEPSPEED_REDUCE_BUCKET
    """Gradients are reduce-scattered in buckets of this many elements (ds_config ``reduce_bucket_size``)."""
    epoch_samples: int = EPOCH_SAMPLES
    zero_stage: int = 3
    """The ds_config's ZeRO stage: 3 gathers parameters for every pass; 2 keeps them whole on every GPU and
    all-gathers the updated ones once per step."""

    def state_gb(self, gpus: int) -> float:
        """Per-GPU weights, gradients and optimiser state (``STATE_BYTES``); frozen parameters hold only their
        16-bit weights, split across the GPUs under ZeRO-3, whole under ZeRO-2."""
        sharded, whole = STATE_BYTES[self.zero_stage]
        frozen = (self.params_forward - self.params_trained) * self.param_bytes
        frozen_per_gpu = frozen / gpus if self.zero_stage == 3 else frozen
        return (self.params_trained * (sharded / gpus + whole) + frozen_per_gpu) / 1e9

    @classmethod
    def from_recipe(cls, cfg: JalaConfig, count: FlopCount, dims: ModelDims, epoch_samples: int = EPOCH_SAMPLES,
                    vision_trained: bool = True) -> Workload:
        """The workload of recipe ``cfg`` (batch sizes, which perceivers exist, its ds_config's bucket size and
        communication dtype) with the FLOPs in ``count``."""
        from jala_ds.train.ds_config import read_ds_config

        ds = read_ds_config(cfg.train.ds_config)
        stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        if stage not in STATE_BYTES:
            raise ValueError(f"{cfg.train.ds_config}: ZeRO stage {stage}: jala plan models stages 2 and 3 (set "
                             "train.ds_config to ds_configs/zero2.json or zero3_bf16.json)")
        wire = str(ds.get("communication_data_type", cfg.train.dtype)).lower()
        if wire not in WIRE_BYTES:
            raise ValueError(f"{cfg.train.ds_config}: communication_data_type {wire!r} is not one of "
                             f"{', '.join(WIRE_BYTES)}: fix the DeepSpeed config")
        parts = dims.params_by_part()
        perceiver = dims.perceiver.params
        lap_trunk = perceiver - dims.perceiver.queries * dims.perceiver.width
        n_perceivers = int(cfg.model.align) + int(cfg.model.lsp_context)
        perceivers = perceiver * n_perceivers
        frozen = parts["frame_encoder"] + (0 if vision_trained else parts["vision_tower"])
        untrained_lap = lap_trunk if cfg.model.align and cfg.model.decoupled_ema else 0
        total = sum(parts.values()) - parts["perceivers"] + perceivers
        trained = total - frozen - untrained_lap
        layers = (dims.lm.layers + dims.vision.vit.encoder.layers + dims.frame_encoder.encoder.layers
                  + dims.perceiver.layers * n_perceivers)
        return cls(flops_per_sample=count.per_sample, params_forward=total, params_backward=trained + untrained_lap,
                   params_trained=trained, gather_calls=layers + 4, micro_batch=cfg.train.micro_batch_size,
                   grad_accum=cfg.train.grad_accum_steps, param_bytes=WIRE_BYTES[cfg.train.dtype],
                   grad_bytes=WIRE_BYTES[wire],
                   reduce_bucket_params=int(ds.get("zero_optimization", {}).get("reduce_bucket_size",
                                                                                DEEPSPEED_REDUCE_BUCKET)),
                   epoch_samples=epoch_samples, zero_stage=stage)


@dataclass(frozen=True)
class StepEstimate:
    """One row of the scaling table."""

    gpus: int
    nodes: int
    global_batch: int
    micro_batch: int
    grad_accum: int
    compute_s: float
    """The longer of the GPU's compute time and the host's time to issue it."""
    host_bound: bool
    """True when the host time sets ``compute_s``: a faster card would not shorten the step."""
    comm_s: float
    exposed_comm_s: float
    optimizer_s: float
    step_s: float
    samples_per_s: float
    mfu: float
    """End to end: model FLOPs achieved over the cluster's peak, communication included."""
    epoch_hours: float
    state_gb: float
    """Per-GPU weights, gradients and optimiser state (``Workload.state_gb``)."""
    memory_gb: float | None
    """``state_gb`` plus the activations of one micro-batch, when their size per sample is known."""

    @property
    def comm_bound(self) -> bool:
        return self.comm_s >= self.compute_s

    def row(self) -> dict[str, object]:
        return {"gpus": self.gpus, "nodes": self.nodes, "global batch": self.global_batch,
                "micro x accum": f"{self.micro_batch} x {self.grad_accum}", "compute s": self.compute_s,
                "paced by": "host" if self.host_bound else "GPU",
                "comm s": self.comm_s, "exposed comm s": self.exposed_comm_s, "step s": self.step_s,
                "samples/s": self.samples_per_s, "MFU": f"{self.mfu:.1%}", "h/epoch": self.epoch_hours,
                "comm/compute": self.comm_s / self.compute_s,
                "GB per GPU": f"{self.state_gb:.0f} + activations" if self.memory_gb is None else self.memory_gb}


def collective_seconds(nbytes: float, gpus: int, cluster: Cluster, calls: int) -> float:
    """Ring all-gather or reduce-scatter of ``nbytes`` (unsharded) over ``gpus`` ranks, issued as ``calls`` calls."""
    if gpus == 1:
        return 0.0
    nodes = cluster.nodes(gpus)
    through_link = (gpus - 1) / gpus * nbytes / (cluster.card.link_gb_s * 1e9 * LINK_EFFICIENCY)
    # Not (nodes - 1) / nodes, the least any algorithm could send: a flat ring (NCCL's all-gather and
    # reduce-scatter without SHARP) passes (n - 1) / n of the buffer over each of its edges, the edge that leaves a
    # node included, and the node's rings share its adapters. Hierarchical ZeRO++ would send less; it is not used.
    through_network = ((gpus - 1) / gpus * nbytes / (cluster.network_gb_s * 1e9 * NETWORK_EFFICIENCY)
                       if nodes > 1 else 0.0)
    network_hops = nodes if nodes > 1 else 0
    latency = (gpus - 1 - network_hops) * HOP_LATENCY_LINK_S + network_hops * HOP_LATENCY_NETWORK_S
    return max(through_link, through_network) + calls * latency


def micro_step_comm_seconds(work: Workload, gpus: int, cluster: Cluster) -> float:
    """The collectives of one micro-step: the gradients' reduce-scatter; under ZeRO-3 also the parameters'
    all-gathers before the forward and the backward."""
    buckets = math.ceil(work.params_trained / work.reduce_bucket_params)
    reduce = collective_seconds(work.params_trained * work.grad_bytes, gpus, cluster, buckets)
    if work.zero_stage == 2:
        return reduce
    return (reduce + collective_seconds(work.params_forward * work.param_bytes, gpus, cluster, work.gather_calls)
            + collective_seconds(work.params_backward * work.param_bytes, gpus, cluster, work.gather_calls))


def step_end_comm_seconds(work: Workload, gpus: int, cluster: Cluster) -> float:
    """ZeRO-2's all-gather of the updated parameters after the optimiser step (ZeRO-3 gathers them as it goes):
    nothing is left to overlap it with."""
    if work.zero_stage == 3:
        return 0.0
    buckets = math.ceil(work.params_trained / work.reduce_bucket_params)
    return collective_seconds(work.params_trained * work.param_bytes, gpus, cluster, buckets)


def estimate_step(work: Workload, cluster: Cluster, gpus: int, mfu: float, overlap: float,
                  micro_batch: int | None = None, grad_accum: int | None = None, host_s: float = 0.0,
                  activation_gb: float | None = None, host_step_s: float = 0.0) -> StepEstimate:
    """Time and per-GPU memory of one optimiser step on ``gpus`` GPUs at compute efficiency ``mfu``, each
    micro-step taking at least ``host_s`` seconds of host time and the optimiser step ``host_step_s`` more,
    hiding ``overlap`` of the comm; activations of ``activation_gb`` per sample of a micro-batch, when known."""
    micro = micro_batch or work.micro_batch
    accum = grad_accum or work.grad_accum
    peak = cluster.card.bf16_tflops * 1e12
    gpu_compute = micro * accum * work.flops_per_sample / (peak * mfu)
    # The host's cost is per module and kernel call, not per sample: a smaller micro-batch does not shorten it,
    # and accumulation repeats the micro-steps' part, not the optimiser step's.
    compute = max(gpu_compute, accum * host_s + host_step_s)
    overlappable = accum * micro_step_comm_seconds(work, gpus, cluster)
    step_end = step_end_comm_seconds(work, gpus, cluster)
    comm = overlappable + step_end
    exposed = (1 - overlap) * overlappable + max(0.0, overlap * overlappable - compute) + step_end
    optimizer = (work.params_trained / gpus * ADAM_BYTES_PER_PARAM
                 / (cluster.card.hbm_tb_s * 1e12 * HBM_EFFICIENCY))
    step = compute + exposed + optimizer
    state = work.state_gb(gpus)
    global_batch = micro * accum * gpus
    samples_per_s = global_batch / step
    return StepEstimate(gpus=gpus, nodes=cluster.nodes(gpus), global_batch=global_batch, micro_batch=micro,
                        grad_accum=accum, compute_s=compute, host_bound=compute > gpu_compute, comm_s=comm,
                        exposed_comm_s=exposed, optimizer_s=optimizer, step_s=step, samples_per_s=samples_per_s,
                        mfu=work.flops_per_sample * samples_per_s / (gpus * peak),
                        epoch_hours=work.epoch_samples / samples_per_s / 3600, state_gb=state,
                        memory_gb=None if activation_gb is None else state + activation_gb * micro)


def scaling_table(work: Workload, cluster: Cluster, gpu_counts: list[int], mfu: float, overlap: float = 0.7,
                  global_batch: int | None = None, host_s: float = 0.0,
                  activation_gb: float | None = None, host_step_s: float = 0.0) -> list[StepEstimate]:
    """Estimates for each GPU count (``estimate_step``).

    ``global_batch=None`` is weak scaling: every GPU keeps the recipe's micro-batch and accumulation, so the
    global batch grows with the GPUs. A fixed ``global_batch`` is strong scaling: each GPU gets
    ``global_batch / gpus`` samples per step (micro-batches up to the recipe's size, then accumulation), and
    counts that do not divide it, or exceed it, are left out.
    """
    rows = []
    for gpus in gpu_counts:
        if global_batch is None:
            rows.append(estimate_step(work, cluster, gpus, mfu, overlap, host_s=host_s, activation_gb=activation_gb,
                                      host_step_s=host_step_s))
            continue
        per_gpu, remainder = divmod(global_batch, gpus)
        if per_gpu == 0 or remainder:
            continue
        micro = math.gcd(per_gpu, work.micro_batch)
        rows.append(estimate_step(work, cluster, gpus, mfu, overlap, micro_batch=micro, grad_accum=per_gpu // micro,
                                  host_s=host_s, activation_gb=activation_gb, host_step_s=host_step_s))
    return rows


def comm_dominates_from(rows: list[StepEstimate]) -> StepEstimate | None:
    """The first row (fewest GPUs) from which communication takes at least as long as compute, if any."""
    return next((row for row in rows if row.comm_bound), None)


def gpu_counts(gpus_per_node: int, max_gpus: int, extra: int | None = None) -> list[int]:
    """One node, then doubling up to ``max_gpus`` (the planned ``extra`` count added if it is not among them)."""
    counts = {gpus_per_node * 2 ** k for k in range(32) if gpus_per_node * 2 ** k <= max_gpus}
    if extra is not None:
        counts.add(extra)
    return sorted(counts)


def mfu_for_hours(work: Workload, hours: float, gpus: int, card: Card) -> float:
    """End-to-end MFU that finishes one epoch in ``hours`` on ``gpus`` cards."""
    return work.flops_per_sample * work.epoch_samples / (hours * 3600 * gpus * card.bf16_tflops * 1e12)
