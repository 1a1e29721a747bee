"""The decoupled EMA ``target <- tau * target + (1 - tau) * source`` under ZeRO-3: shard-local, fp32, no gathers.

Each rank keeps an fp32 shadow of its own piece of every target and updates it from its own piece of the
source. LAP and LSP tensors have equal shapes, so DeepSpeed cuts them at the same offsets on every rank and
the pieces line up with no communication. What a rank's "piece" is depends on how DeepSpeed holds the
parameter (``deepspeed/runtime/zero/partition_parameters.py``, 0.19.8):

- partitioned (ZeRO-3, ``param.ds_persist`` False): the flat shard ``param.ds_tensor`` (padded at the end of
  the last rank); the forward all-gathers it, so writing the shard is enough.
- persistent (ZeRO-3, ``ds_persist`` True: at most ``stage3_param_persistence_threshold`` elements): the full
  tensor lives in ``param.data`` on every rank and the forward reads it without a gather. After each
  optimiser step DeepSpeed re-gathers persistent parameters from their shards, so the EMA writes both: the
  full ``param.data`` (identically on every rank, from identical inputs) and this rank's slice into
  ``param.ds_tensor``.
- plain (no ZeRO, ZeRO-1/2): the full ``param.data``.

A target and its source are usually held alike, but not always: ``stage3_model_persistence_threshold`` caps the
elements kept persistent in all, handed out in parameter order, so it can run out between the two. A partitioned
target then takes its slice of the persistent source, and a persistent target gathers its partitioned source
for the update (every rank, the same parameters).

Source values are read from the same piece of the source parameter (its low-precision copy, the weights the
forward used), not from the optimiser's fp32 master: the master exists only for the partitioned shard layout
(persistent parameters would need a gather) and is swapped out under NVMe offload. In fp32 training both are
the same numbers; in bf16 the source's rounding is unbiased noise the fp32 average smooths, whereas a bf16
shadow would stall: with tau near 1 each step's increment is below bf16's resolution and rounds away.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus


def is_partitioned(param: torch.nn.Parameter) -> bool:
    return getattr(param, "ds_tensor", None) is not None


def local_piece(param: torch.nn.Parameter) -> torch.Tensor:
    """The part of ``param`` this rank owns and the forward reads (see the module docstring)."""
    if is_partitioned(param) and not param.ds_persist:
        return param.ds_tensor.data
    return param.data


def is_whole(param: torch.nn.Parameter) -> bool:
    """Whether ``local_piece(param)`` is the whole tensor (plain or persistent) rather than a ZeRO-3 shard."""
    return not is_partitioned(param) or param.ds_persist


def gathered(params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
    """ZeRO-3 parameters whole in ``param.data`` inside the block (nothing to do for none)."""
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def gather_persistent(params: list[torch.nn.Parameter]) -> None:
    """Materialise persistent parameters DeepSpeed has released (before the first forward, after a load).

    After every optimiser step DeepSpeed gathers them itself, so in the training loop this finds nothing to
    do; it is the same call DeepSpeed makes (``stage3._post_step``), and every rank makes it for the same list.
    """
    released = [p for p in params
                if is_partitioned(p) and p.ds_persist and p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    if released:
        released[0].all_gather(released)


def shard_slice(param: torch.nn.Parameter, full: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This rank's slice of ``full`` (flattened) in ``param.ds_tensor``'s layout, and how many elements are real."""
    shard_numel = param.ds_tensor.ds_numel
    start = shard_numel * dist.get_rank(group=param.ds_process_group)
    valid = max(0, min(shard_numel, param.ds_numel - start))
    return full.reshape(-1)[start:start + valid], valid


class ShardedEMA:
    """fp32 shadows of the EMA targets' local pieces; ``update()`` after every optimiser step.

    ``pairs`` are ``(target_name, source_name)`` parameter names of ``model`` (``JalaModel.ema_pairs()``);
    targets must be frozen (``requires_grad`` False) so the optimiser never writes them.
    """

    def __init__(self, model: torch.nn.Module, pairs: list[tuple[str, str]], tau: float):
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"EMA tau={tau} must lie in [0, 1): set model.ema_tau")
        params = dict(model.named_parameters())
        self.tau = tau
        self.pairs: list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]] = []
        for target_name, source_name in pairs:
            target, source = params.get(target_name), params.get(source_name)
            if target is None or source is None:
                missing = target_name if target is None else source_name
                raise ValueError(f"EMA pair ({target_name}, {source_name}): the model has no parameter "
                                 f"'{missing}': fix JalaModel.ema_pairs()")
            if target.requires_grad:
                raise ValueError(f"EMA target '{target_name}' requires grad, so the optimiser would also "
                                 "write it: freeze it (requires_grad=False) in the model")
            shape = getattr(target, "ds_shape", target.shape)
            if shape != getattr(source, "ds_shape", source.shape):
                raise ValueError(f"EMA pair ({target_name}, {source_name}) has different shapes: the shards "
                                 "would not line up; pair parameters of equal shape")
            self.pairs.append((target_name, target, source))
        self.params = [p for _, target, source in self.pairs for p in (target, source)]
        self.sources_to_gather = [source for _, target, source in self.pairs
                                  if is_whole(target) and not is_whole(source)]
        gather_persistent(self.params)
        self.shadows = {name: local_piece(target).detach().float().clone() for name, target, _ in self.pairs}

    @torch.no_grad()
    def update(self) -> None:
        gather_persistent(self.params)
        with gathered(self.sources_to_gather):
            for name, target, source in self.pairs:
                shadow = self.shadows[name]
                if is_whole(target):                   # the source whole too: plain, persistent or gathered
                    shadow.mul_(self.tau).add_(source.data.float(), alpha=1.0 - self.tau)
                elif not is_whole(source):             # shards of both, cut at the same offsets
                    shadow.mul_(self.tau).add_(local_piece(source).float(), alpha=1.0 - self.tau)
                else:                                  # a shard of the target, the source whole
                    piece, valid = shard_slice(target, source.data)
                    shadow[:valid].mul_(self.tau).add_(piece.float(), alpha=1.0 - self.tau)
                self.write_target(target, shadow)

    @staticmethod
    def write_target(target: torch.nn.Parameter, shadow: torch.Tensor) -> None:
        """Copy the shadow into every copy of the target the forward (or DeepSpeed's re-gather) reads."""
        local_piece(target).copy_(shadow)
        if is_partitioned(target) and target.ds_persist:
            piece, valid = shard_slice(target, shadow)
            target.ds_tensor.data[:valid].copy_(piece)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's shadows (fp32, on CPU), keyed by target name; saved per rank with each checkpoint."""
        return {name: shadow.detach().cpu().clone() for name, shadow in self.shadows.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadows and write them into the targets (so targets match even if the engine did not)."""
        if set(state) != set(self.shadows):
            raise ValueError(f"EMA state has targets {sorted(state)}, the model {sorted(self.shadows)}: "
                             "resume with the same model.decoupled_ema setting and model")
        gather_persistent(self.params)
        for name, target, _ in self.pairs:
            if state[name].shape != self.shadows[name].shape:
                raise ValueError(f"EMA shadow '{name}' has shape {tuple(state[name].shape)}, this rank holds "
                                 f"{tuple(self.shadows[name].shape)}: resume with the same world size and ds_config")
            self.shadows[name].copy_(state[name])
            self.write_target(target, self.shadows[name])
