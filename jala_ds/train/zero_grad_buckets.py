"""ZeRO-2's gradient reduction a bucket at a time instead of a parameter at a time.

DeepSpeed's ZeRO-2 (``DeepSpeedZeroOptimizer`` with partitioned gradients) runs a hook for every parameter as its
gradient arrives in the backward. The hook copies the gradient into a bucket; when the bucket is full it reduces
it and copies this rank's part again, one parameter at a time, into a partition buffer, with a few dozen Python
look-ups around each copy. On the CPU proxy of the full recipe (847 trained tensors) that is ~40 us per parameter:
``python -m benchmarks.zero_grad_buckets``. On a GPU each copy is also a kernel launch, in a step whose pace the
host sets. With ``overlap_comm`` every bucket's reduction synchronises the whole device first
(``allreduce_and_copy``), even on one GPU, which stops the host from running ahead of the GPU a dozen times per
backward.

``use_gradient_buckets`` replaces that on one optimiser. The buckets are fixed once, as runs of consecutive
parameters in the optimiser's flat layout of up to ``reduce_bucket_size`` elements, so each is one contiguous range
of that layout and of the ranks' partitions:

- each parameter's hook only counts arrivals; when a bucket's last gradient arrives, its gradients are joined into
  one slab by a single ``torch.cat`` (a bucket of one parameter reduces its gradient as it is) and released;
- the slab is averaged over the ranks and reduced to the rank that owns each piece, the ``dist.reduce`` calls
  DeepSpeed makes, on DeepSpeed's reduction stream; each owner adds its piece to a buffer of its partition, in the
  dtype DeepSpeed sums micro-batches in (on the first micro-batch of a step it copies instead, so the buffer is
  never zeroed);
- at the end of the backward the buckets that did not fill (parameters that got no gradient) are reduced with
  zeros in their place, and at the accumulation boundary the optimiser is handed the buffer as its pre-flattened
  gradient partition, which ``step`` reads as it reads DeepSpeed's own.

Streams are ordered by events; nothing synchronises the device. The optimiser sees the same gradients as with
DeepSpeed's reduction, bit for bit, on one rank and on two, with and without gradient accumulation
(``tests/test_train_zero_grad_buckets.py``). Memory differs in two ways. The partition buffer is kept from step
to step, where DeepSpeed allocates its own at the backward's first reduction and drops it after the step. And a
gradient waits for the rest of its bucket before it is released, so if the backward reaches a bucket's parameters
far apart, more gradient memory is live at once than with DeepSpeed's copy on arrival. Configurations it does not
cover (CPU offload, mixture of experts, model or sequence parallelism, a communication dtype other than the
parameters') keep DeepSpeed's path.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch
from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer, GradPartitionBufferGroup


@dataclass
class Bucket:
    """A run of consecutive parameters of one group, ``length`` elements of the flat layout from ``start``
    (the alignment padding between them included, the last one's excluded)."""
    group: int
    params: list[torch.nn.Parameter]
    paddings: list[int]
    start: int
    length: int
    pieces: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(offset in the bucket, elements, owner's rank in the data-parallel group, its global rank) for each rank's
    partition the bucket overlaps."""
    arrived: int = 0


def supported(optimizer: object) -> bool:
    """Whether ``optimizer`` is a ZeRO-2 optimiser in the configuration ``GradientBuckets`` reproduces."""
    if not isinstance(optimizer, DeepSpeedZeroOptimizer) or not optimizer.partition_gradients:
        return False
    dtypes = {param.dtype for group in optimizer.bit16_groups for param in group}
    return (not optimizer.cpu_offload and not optimizer.zenflow and not optimizer.has_moe_layers
            and optimizer.mpu is None and optimizer.sequence_parallel_size == 1
            and optimizer.gradient_predivide_factor == 1.0 and optimizer.postscale_gradients
            and dtypes == {optimizer.communication_data_type}
            and all(group is optimizer.dp_process_group for group in optimizer.real_dp_process_group)
            and not any(getattr(param, "use_muon", False) for group in optimizer.bit16_groups for param in group))


class GradientBuckets:
    """The reduction of one ZeRO-2 optimiser's gradients; see the module's docstring."""

    def __init__(self, optimizer: DeepSpeedZeroOptimizer):
        self.optimizer = optimizer
        self.process_group = optimizer.dp_process_group
        self.world = dist.get_world_size(group=self.process_group)
        self.rank = dist.get_rank(group=self.process_group)
        self.average = optimizer.gradient_average and self.world > 1
        self.stream = optimizer.reduction_stream if optimizer.overlap_comm else None
        device = get_accelerator().current_device_name()
        # In the dtype DeepSpeed sums micro-batches in: the gradients' own for one micro-batch per step, fp32 for
        # several (ds_config.accumulate_in_fp32); step() turns it into fp32 as it does DeepSpeed's.
        self.partitions = [torch.zeros(int(size), dtype=optimizer.gradient_accumulation_dtype, device=device)
                           for size in optimizer.partition_size]
        self.views = [self._partition_views(i) for i in range(len(self.partitions))]
        self.buckets = [bucket for i in range(len(self.partitions)) for bucket in self._group_buckets(i)]
        # Two buffers for joined gradients, used in turn, sized for the largest bucket of several parameters, and
        # the events that say the reduction stream is done with each.
        joined = [bucket for bucket in self.buckets if len(bucket.params) > 1]
        dtype = optimizer.communication_data_type
        self.slabs = [torch.empty(max((b.length for b in joined), default=0), dtype=dtype, device=device)
                      for _ in range(2)]
        self.slab_free: list[object | None] = [None, None]
        self.slab_turn = 0
        self.pad_zeros = torch.zeros(max((max(b.paddings[:-1], default=0) for b in joined), default=0), dtype=dtype,
                                     device=device)
        self.open = False           # a backward has reached a hook and its epilogue has not run yet
        self.window_fresh = True    # the partition buffers hold nothing of the current optimiser step yet
        self.copy_into_partition = True
        self.handles = [param.register_post_accumulate_grad_hook(functools.partial(self._arrived, bucket))
                        for bucket in self.buckets for param in bucket.params]

    def _group_buckets(self, i: int) -> list[Bucket]:
        opt = self.optimizer
        limit = int(opt.reduce_bucket_size)
        buckets: list[Bucket] = []
        for param, offset, padding in zip(opt.round_robin_bit16_groups[i], opt.round_robin_bit16_offsets[i],
                                          opt.round_robin_bit16_padding[i]):
            if not param.requires_grad:
                continue
            last = buckets[-1] if buckets else None
            contiguous = last is not None and last.start + last.length + last.paddings[-1] == offset
            if contiguous and last.length + last.paddings[-1] + param.numel() <= limit:
                last.length += last.paddings[-1] + param.numel()
                last.params.append(param)
                last.paddings.append(padding)
            else:
                buckets.append(Bucket(i, [param], [padding], offset, param.numel()))
        size = int(opt.partition_size[i])
        for bucket in buckets:
            for owner in range(self.world):
                lo, hi = max(bucket.start, owner * size), min(bucket.start + bucket.length, (owner + 1) * size)
                if lo < hi:
                    bucket.pieces.append((lo - bucket.start, hi - lo, owner,
                                          dist.get_global_rank(self.process_group, owner)))
        return buckets

    def _partition_views(self, i: int) -> GradPartitionBufferGroup:
        """This rank's gradient partition as the list DeepSpeed's ``step``, overflow check and norm read:
        one view per parameter piece in ``params_in_partition`` order, alignment padding flagged
        ``_zero_padding``, and the whole buffer as ``flat_partition``."""
        opt, flat = self.optimizer, self.partitions[i]
        size, views, filled = flat.numel(), [], 0

        def padding(upto: int) -> None:
            nonlocal filled
            if upto > filled:
                pad = flat.narrow(0, filled, upto - filled)
                pad._zero_padding = True
                views.append(pad)
                filled = upto

        for param in opt.params_in_partition[i]:
            param_id = opt.get_param_id(param)
            source = int(opt.grad_start_offset[i][self.rank][param_id])
            dest = int(opt.grad_partition_insertion_offset[i][self.rank][param_id])
            count = min(param.numel() - source, size - dest)
            padding(dest)
            view = flat.narrow(0, dest, count)
            views.append(view.view(param.shape) if count == param.numel() else view)
            filled = dest + count
        padding(size)
        return GradPartitionBufferGroup(views, flat)

    def _arrived(self, bucket: Bucket, param: torch.nn.Parameter) -> None:
        if not self.open:
            self._begin_backward()
        bucket.arrived += 1
        if bucket.arrived == len(bucket.params):
            self._reduce(bucket)
        elif bucket.arrived > len(bucket.params):
            raise RuntimeError(f"a gradient of shape {tuple(param.shape)} arrived twice in one backward (a parameter "
                               "used in two re-entrant checkpointed regions?); ZeRO-2 reduces each gradient once per "
                               "backward: use non-reentrant checkpointing, or set train.bucketed_grad_reduction=false")

    def _begin_backward(self) -> None:
        if self.optimizer._coalesce_grad_reduction:
            raise RuntimeError("engine.coalesce_grad_reduction() defers DeepSpeed's per-parameter reduction, which "
                               "train.bucketed_grad_reduction replaces: set it false to use the context")
        for bucket in self.buckets:
            bucket.arrived = 0
        self.open = True
        self.copy_into_partition = self.window_fresh

    def _slab(self, bucket: Bucket) -> tuple[torch.Tensor, int]:
        """The next slab, once the reduction stream is done with its last use, and which one it is."""
        turn, self.slab_turn = self.slab_turn, 1 - self.slab_turn
        if self.slab_free[turn] is not None:
            get_accelerator().current_stream().wait_event(self.slab_free[turn])
        return self.slabs[turn].narrow(0, 0, bucket.length), turn

    def _joined(self, bucket: Bucket) -> tuple[torch.Tensor, int | None]:
        """The bucket's gradients as one flat tensor (zeros for a parameter that got none), and which slab holds
        it (None: a lone parameter's own gradient)."""
        grads = [param.grad if param.grad is not None else torch.zeros_like(param) for param in bucket.params]
        if len(grads) == 1:
            return grads[0].reshape(-1), None
        slab, turn = self._slab(bucket)
        parts = []
        for grad, padding in zip(grads, bucket.paddings[:-1]):
            parts.append(grad.reshape(-1))
            if padding:
                parts.append(self.pad_zeros.narrow(0, 0, padding))
        parts.append(grads[-1].reshape(-1))
        torch.cat(parts, out=slab)
        return slab, turn

    def _reduce(self, bucket: Bucket) -> None:
        flat, turn = self._joined(bucket)
        for param in bucket.params:
            param.grad = None
        accelerator = get_accelerator()
        context = contextlib.nullcontext()
        if self.stream is not None:
            self.stream.wait_stream(accelerator.current_stream())
            if turn is None:
                flat.record_stream(self.stream)
            context = accelerator.stream(self.stream)
        with context:
            if self.average:
                flat.div_(self.world)
            for offset, count, owner, destination in bucket.pieces:
                piece = flat.narrow(0, offset, count)
                if self.world > 1:
                    dist.reduce(piece, destination, group=self.process_group)
                if owner == self.rank:
                    partition = self.partitions[bucket.group]
                    mine = partition.narrow(0, bucket.start + offset - owner * partition.numel(), count)
                    if self.copy_into_partition:
                        mine.copy_(piece)
                    else:
                        mine.add_(piece)
            if self.stream is not None and turn is not None:
                event = accelerator.Event()
                event.record(self.stream)
                self.slab_free[turn] = event

    def epilogue(self) -> None:
        """Stands in for ``independent_gradient_partition_epilogue``, which the engine calls after each
        backward: reduce the buckets that did not fill, then at the accumulation boundary hand the partition
        buffers to ``step``."""
        if self.open:
            for bucket in self.buckets:          # the same order on every rank: the reductions pair up
                if bucket.arrived < len(bucket.params):
                    self._reduce(bucket)
            self.open = False
            self.window_fresh = False
        elif self.window_fresh:                  # a first micro-batch whose backward reached no trained parameter
            for partition in self.partitions:
                partition.zero_()
            self.window_fresh = False
        if self.stream is not None:
            get_accelerator().current_stream().wait_stream(self.stream)
        if self.optimizer.is_gradient_accumulation_boundary():
            for i, views in enumerate(self.views):
                self.optimizer.averaged_gradients[i] = views

    def step(self, stock_step, *args, **kwargs):
        """The optimiser's step; afterwards the next backward starts a new accumulation (skipped steps too)."""
        try:
            return stock_step(*args, **kwargs)
        finally:
            self.window_fresh = True


def use_gradient_buckets(optimizer: object) -> bool:
    """Replace ZeRO-2's per-parameter gradient reduction on ``optimizer`` (the engine's) with
    ``GradientBuckets``; returns whether it did (not for ZeRO-1 or -3, a plain optimiser, or a configuration
    ``supported`` leaves to DeepSpeed). Call it before the first backward."""
    if not supported(optimizer):
        return False
    for handle in optimizer._grad_acc_hooks:
        handle.remove()
    buckets = GradientBuckets(optimizer)
    optimizer._grad_acc_hooks = buckets.handles    # removed by the optimiser's destroy(), as its own were
    optimizer.gradient_buckets = buckets
    optimizer.independent_gradient_partition_epilogue = buckets.epilogue
    optimizer.step = functools.partial(buckets.step, optimizer.step)
    return True
