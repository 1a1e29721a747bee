"""The text ``jala plan`` prints: FLOP breakdown, scaling tables, the planned cluster next to the paper's 68 h and
the 12 h target, and every assumption behind the numbers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jala_ds.bench import plan
from jala_ds.bench.calibrate import Calibration, host_floor_text
from jala_ds.bench.cards import Card, card
from jala_ds.bench.flops import FlopCount
from jala_ds.bench.tables import markdown_table

if TYPE_CHECKING:
    from jala_ds.config import JalaConfig

DESIGN_TFLOP = 6.4
"""DESIGN.md's estimate: 6 x 1.85B (all parameters but the untied head) x 576 tokens."""


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for: the cluster, the planned size and the scaling choices."""

    cluster: plan.Cluster
    nodes: int
    overlap: float
    max_gpus: int
    global_batch: int
    """Held fixed in the strong-scaling table (the recipe's, 128 in the paper's)."""


def mfu_for_target(work: plan.Workload, cluster: plan.Cluster, gpus: int, hours: float, overlap: float) -> float | None:
    """Compute MFU at which ``gpus`` GPUs finish an epoch in ``hours`` with no host floor (None: not even at 100 %)."""
    def epoch_hours(mfu: float) -> float:
        return plan.estimate_step(work, cluster, gpus, mfu, overlap).epoch_hours

    low, high = 1e-4, 1.0
    if epoch_hours(high) > hours:
        return None
    for _ in range(60):  # bisection: epoch hours fall as MFU rises
        mid = (low + high) / 2
        low, high = (mid, high) if epoch_hours(mid) > hours else (low, mid)
    return high


def dominance_line(rows: list[plan.StepEstimate]) -> str:
    first = plan.comm_dominates_from(rows)
    if first is None:
        worst = max(row.comm_s / row.compute_s for row in rows)
        line = f"Compute-bound at every size: communication is at most {worst:.2f}x the compute time."
    else:
        line = (f"Communication takes longer than compute from {first.gpus} GPUs ({first.nodes} nodes) on: "
                "past that point more GPUs mostly add collective time.")
    host = next((row for row in rows if row.host_bound), None)
    if host is not None:
        line += (f" From {host.gpus} GPUs ({host.micro_batch} samples per micro-step) on, the host sets the pace: "
                 "the GPUs wait for it.")
    return line


def memory_line(step: plan.StepEstimate, card: Card) -> str:
    if step.memory_gb is None:
        return (f"{step.state_gb:.1f} GB per GPU of weights, gradients and optimiser state, plus activations (not "
                "measured: give --activation-gb, or calibrate from a GPU result with resident memory)")
    verdict = "fits" if step.memory_gb <= card.memory_gb else "does NOT fit"
    return (f"{step.memory_gb:.1f} GB per GPU ({step.state_gb:.1f} GB of state, the rest activations): {verdict} "
            f"in the {card.name}'s {card.memory_gb} GB")


def host_floor_line(calibration: Calibration) -> str:
    if calibration.host_s == 0 and calibration.host_note is not None:
        return f"no host floor: {calibration.host_note}"
    if calibration.host_s == 0:
        return ("no host floor: the GPU sets the pace (give --host-ms, or calibrate from a result profiled with "
                "`jala bench throughput --profile`, which measures how long the GPU was busy)")
    per_step = ("; the optimiser step's part is taken as measured at every size, though its per-parameter work "
                "covers only a rank's shard on several GPUs (an upper bound there)" if calibration.host_step_s else "")
    return (f"host floor {host_floor_text(calibration)}: the compute takes at least this long on any card, because "
            "the host's Python, hooks and kernel launches do not speed up with the GPU (the measuring machine's CPU "
            f"speed is assumed everywhere){per_step}; compute is the longer of GPU and host time, as if the host "
            "always queued work ahead of the GPU; synchronisations inside a step stretch it towards their sum")


def compute_mfu_line(calibration: Calibration, target: Card) -> str:
    ref = calibration.measured_on
    if ref is None or calibration.bandwidth_share == 0:
        return f"compute MFU {calibration.mfu:.1%} ({calibration.source}); it is taken to hold on every card and size"
    if ref == target:
        return f"compute MFU {calibration.mfu:.1%} ({calibration.source}), measured on this card; it holds at every size"
    return (f"compute MFU {calibration.mfu:.1%} on the {ref.name} ({calibration.source}), "
            f"{calibration.mfu_on(target):.1%} on the {target.name}: the {calibration.bandwidth_share:.0%} of the "
            f"kernel time outside matrix multiplies and attention is taken to scale with HBM bandwidth "
            f"({ref.hbm_tb_s:g} -> {target.hbm_tb_s:g} TB/s), the rest with peak FLOP/s ({ref.bf16_tflops:g} -> "
            f"{target.bf16_tflops:g} TFLOP/s); it holds at every size")


def assumptions(request: PlanRequest, work: plan.Workload, calibration: Calibration) -> list[str]:
    c = request.cluster
    return [
        (f"card: {c.card.name}, {c.card.bf16_tflops:g} TFLOP/s dense bf16, NVLink {c.card.link_gb_s:g} GB/s per "
         f"GPU per direction at {plan.LINK_EFFICIENCY:.0%} efficiency, HBM {c.card.hbm_tb_s:g} TB/s"),
        (f"nodes of {c.gpus_per_node} GPUs joined by {c.network_gb_s:g} GB/s per node per direction "
         f"({c.network_gb_s * 8:g} Gb/s) at {plan.NETWORK_EFFICIENCY:.0%} efficiency"),
        compute_mfu_line(calibration, c.card),
        host_floor_line(calibration),
        collectives_line(work),
        (f"ring collectives: (n-1)/n of the bytes through each GPU's link and through each node's network; "
         f"{calls_text(work)}, each call paying (n-1) hop latencies of "
         f"{plan.HOP_LATENCY_LINK_S * 1e6:g} us (NVLink) or {plan.HOP_LATENCY_NETWORK_S * 1e6:g} us (network)"),
        f"{request.overlap:.0%} of the communication can hide behind compute; the rest adds to the step",
        f"Adam update: {plan.ADAM_BYTES_PER_PARAM} B of HBM traffic per trained parameter of each rank's shard",
        (f"memory: ZeRO-{work.zero_stage} state of {plan.STATE_BYTES[work.zero_stage][0]} B per trained parameter "
         f"split across the GPUs and {plan.STATE_BYTES[work.zero_stage][1]} B held whole (DeepSpeed's estimators), "
         "frozen parameters' 16-bit weights; "
         + ("activations not counted" if calibration.activation_gb is None else
            f"activations {calibration.activation_gb:.3g} GB per sample of a micro-batch")
         + "; no allocator fragmentation or gathered working set"),
        f"epoch: {work.epoch_samples:,} samples; data loading keeps up (DESIGN.md's loader target)",
    ]


def collectives_line(work: plan.Workload) -> str:
    """What the plan's communication term moves, for the recipe's ZeRO stage."""
    reduce = f"reduce-scatter {work.params_trained / 1e9:.2f}B gradients ({work.grad_bytes} B each)"
    if work.zero_stage == 2:
        return (f"ZeRO-2: per micro-step, {reduce}; per step, after the optimiser, all-gather the "
                f"{work.params_trained / 1e9:.2f}B updated parameters ({work.param_bytes} B each), exposed")
    return (f"ZeRO-3, per micro-step: all-gather {work.params_forward / 1e9:.2f}B params before the forward, "
            f"{work.params_backward / 1e9:.2f}B before the backward ({work.param_bytes} B each), {reduce}; "
            "parameters below DeepSpeed's persistence threshold are ignored")


def calls_text(work: plan.Workload) -> str:
    """The collective calls that pay hop latency: ZeRO-3 gathers layer by layer, ZeRO-2 in buckets."""
    bucket = f"{work.reduce_bucket_params / 1e6:g}M"
    if work.zero_stage == 2:
        return (f"one reduce-scatter per {bucket} gradients and one all-gather per {bucket} parameters (the "
                "ds_config's reduce_bucket_size)")
    return (f"{work.gather_calls} all-gather calls per pass and one reduce-scatter per {bucket} gradients (the "
            "ds_config's reduce_bucket_size)")


def flop_text(value: float) -> str:
    return f"{value / 1e12:.2f} TFLOP" if value >= 1e11 else f"{value / 1e9:.3g} GFLOP"


def paper_lines(work: plan.Workload, request: PlanRequest, count: FlopCount, planned_gpus: int,
                compute_mfu: float, calibration: Calibration) -> list[str]:
    """The InternVL3-2B recipe next to DESIGN.md's count, the paper's 68 h and the 12 h target."""
    paper_card = card(plan.PAPER_CARD)
    paper_mfu = plan.mfu_for_hours(work, plan.PAPER_HOURS, plan.PAPER_GPUS, paper_card)
    target_mfu = plan.mfu_for_hours(work, plan.TARGET_HOURS, plan.PAPER_GPUS, paper_card)
    needed = mfu_for_target(work, request.cluster, planned_gpus, plan.TARGET_HOURS, request.overlap)
    if needed is None:
        at_full = plan.estimate_step(work, request.cluster, planned_gpus, 1.0, request.overlap)
        reachable = f"above 100 %: even at 100 % an epoch on {planned_gpus} GPU(s) takes {at_full.epoch_hours:.1f} h"
    else:
        reachable = f"{needed:.1%} (this plan's: {compute_mfu:.1%})"
        if calibration.host_s > 0:  # the host must then keep up with that compute time
            budget = plan.estimate_step(work, request.cluster, planned_gpus, needed, request.overlap).compute_s
            per_micro_step = (budget - calibration.host_step_s) / work.grad_accum
            reachable += (f", and a host that issues a micro-step in {per_micro_step * 1e3:.0f} ms or less "
                          f"(measured: {host_floor_text(calibration)})")
    return [
        (f"- FLOPs: DESIGN.md's {DESIGN_TFLOP} TFLOP per sample is 6 x 1.85B params x 576 tokens; this count "
         f"({flop_text(count.per_sample)}) differs by {count.per_sample / 1e12 / DESIGN_TFLOP - 1:+.0%}: the ViT "
         "runs on its 1025 patches, not 576 tokens, the embedding is a lookup, and the head, attention, frame "
         "encoder and perceivers are added (docs/performance.md)"),
        f"- paper: {plan.PAPER_HOURS:g} h on {plan.PAPER_GPUS} x A800 = {paper_mfu:.1%} end-to-end MFU by this count",
        f"- target: {plan.TARGET_HOURS:g} h on {plan.PAPER_GPUS} x A800 needs {target_mfu:.1%} end-to-end MFU",
        f"- {plan.TARGET_HOURS:g} h on this plan needs compute MFU {reachable}",
    ]


def plan_report(cfg: JalaConfig, count: FlopCount, work: plan.Workload, request: PlanRequest,
                calibration: Calibration) -> str:
    """The whole report for recipe ``cfg`` as one string (the paper comparison only for the InternVL3-2B shape)."""
    c = request.cluster
    counts = plan.gpu_counts(c.gpus_per_node, request.max_gpus, c.gpus_per_node * request.nodes)
    measured = {"host_s": calibration.host_s, "host_step_s": calibration.host_step_s,
                "activation_gb": calibration.activation_gb}
    compute_mfu = calibration.mfu_on(c.card)
    weak = plan.scaling_table(work, c, counts, compute_mfu, request.overlap, **measured)
    strong = plan.scaling_table(work, c, counts, compute_mfu, request.overlap, request.global_batch, **measured)
    planned_gpus = c.gpus_per_node * request.nodes
    planned = plan.estimate_step(work, c, planned_gpus, compute_mfu, request.overlap, **measured)
    whose_batch = " (the recipe's)" if request.global_batch == cfg.train.global_batch_size else ""
    lines = [
        f"# jala plan: {cfg.name} on {c.card.name}, {c.gpus_per_node} GPUs per node", "",
        f"## Model FLOPs per sample: {flop_text(count.per_sample)} ({count.shape.lm_tokens} LM tokens)", "",
        markdown_table(count.rows()), "",
        f"## Weak scaling: {work.micro_batch} x {work.grad_accum} samples per GPU per step, global batch grows", "",
        markdown_table([row.row() for row in weak]), "", dominance_line(weak), "",
        f"## Strong scaling: global batch {request.global_batch} fixed{whose_batch}", "",
        markdown_table([row.row() for row in strong]) if strong else "no GPU count divides the global batch", "",
        dominance_line(strong) if strong else "", "",
        f"## Planned: {planned_gpus} x {c.card.name} ({request.nodes} node{'s' if request.nodes > 1 else ''})", "",
        (f"- this plan: {planned.epoch_hours:.3g} h per epoch, {planned.samples_per_s:.4g} samples/s at global "
         f"batch {planned.global_batch}, {planned.mfu:.1%} end-to-end MFU (compute MFU {compute_mfu:.1%}; "
         f"paced by the {'host' if planned.host_bound else 'GPU'})"),
        f"- memory: {memory_line(planned, c.card)}",
        *(paper_lines(work, request, count, planned_gpus, compute_mfu, calibration)
          if cfg.model.arch == "internvl3_2b" else []), "",
        "## Assumptions", "",
        *[f"- {line}" for line in assumptions(request, work, calibration)],
    ]
    return "\n".join(lines) + "\n"
