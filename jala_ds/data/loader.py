"""The training loader: MDS shards -> shuffled, rank-partitioned, resumable batches of the model's format.

    loader = build_loader(cfg, tokenizer, vocab, n_image_tokens, rank=rank, world_size=world_size)
    loader.load_state_dict(state)          # optional: resume mid-epoch
    for batch in loader:                   # one epoch; the next iteration runs the next epoch
        ...
        state = loader.state_dict()        # save with the checkpoint

Built on ``streaming.StreamingDataset`` with one ``Stream`` per subset (``<mds_dir>/lab``, ``<mds_dir>/wild``),
mixed by ``data.lab_proportion`` (natural sizes when null); ``data.labeled_only`` leaves the wild stream out.
Each sample becomes an :class:`~jala_ds.data.example.Example` in the loader worker (masking seeded by
train.seed, the epoch and the sample's index) and ``data.pack``/padding makes the batch.

Ranks: streaming reads the world from RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE, which :func:`build_loader`
sets from its arguments (LOCAL_WORLD_SIZE from torchrun, or LOCAL_SIZE from the deepspeed launcher). One epoch's
global order is split so that rank ``r`` takes every ``world_size``-th sample: ranks are disjoint and together cover
the epoch; when the epoch does not divide evenly, streaming repeats a few samples so that every canonical node and
every rank gets the same number; ``len(loader)`` and the state count them (:func:`epoch_samples_taken`). On one node
(two ranks, say) the ranks share the epoch's partition through shared memory, created by local rank 0. Across nodes
every node runs the same arithmetic: the partition is over ``num_canonical_nodes`` (``data.num_canonical_nodes``,
else the number of nodes of the first run; kept in the state), so a run resumed on another node count (a divisor or
multiple) keeps the same sample order. ``mds_dir`` must be readable at the same path on every node.

Resume: the state is (epoch, samples consumed by all ranks so far). Every micro-batch consumes exactly
``train.micro_batch_size`` samples on every rank (packing changes rows, not samples), so the count is
exact, and a loader given the state yields exactly the samples, and documents, the uninterrupted one
would have. (``streaming.StreamingDataLoader`` counts rows, which packing breaks, hence our own count.)

Every shard is checked against its index.json hash the first time the node reads it
(:mod:`jala_ds.data.shard_check`). Shared memory left by a dead job is removed once per node at job start,
before any loader exists (:mod:`jala_ds.data.orphaned_memory`), and only that: other jobs on the node keep theirs.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from streaming import Stream, StreamingDataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from jala_ds.config import JalaConfig
from jala_ds.config_checks import ConfigError
from jala_ds.data.collate import collate
from jala_ds.data.config import DataConfig
from jala_ds.data.example import Example, ExampleBuilder
from jala_ds.data.motion_tokens import build_motion_tokenizer
from jala_ds.data.registration_turn import registration_turn
from jala_ds.data.schema import SUBSETS
from jala_ds.data.sequence import SequenceBuilder
from jala_ds.data.shard_check import NodeShardChecks
from jala_ds.vocab import MotionVocab


class BuildsExamples(Protocol):
    """Turns a record into an :class:`Example` (pretraining's :class:`ExampleBuilder`, the robot loader's)."""

    def build(self, record: Mapping, sample_index: int, epoch: int) -> Example: ...


class ExampleStream(StreamingDataset):
    """A StreamingDataset whose items are training examples; shards are hash-checked on the node's first use."""

    def __init__(self, *, examples: BuildsExamples, validate_hashes: bool, **kwargs: Any) -> None:
        with registration_turn():  # other jobs on the node must not register between our ranks' scans and ours
            super().__init__(**kwargs)
        self.examples = examples
        self.shard_checks = NodeShardChecks(self) if validate_hashes else None
        self.epoch = 0
        """Epoch the examples are built for; set by :class:`JalaLoader` before each iteration starts workers."""

    def get_item(self, sample_id: int, retry: int = 7) -> Example:
        if self.shard_checks is not None:
            shard_id, _ = self.spanner[sample_id]
            self.shard_checks.check_once(shard_id, self.shards[shard_id])
        return self.examples.build(super().get_item(sample_id, retry), sample_id, self.epoch)


class JalaLoader:
    """One rank's batches, epoch after epoch, with an exact mid-epoch ``state_dict``."""

    def __init__(self, dataset: ExampleStream, *, batch_size: int, collate_fn: Callable[[list[Example]], dict],
                 num_workers: int, prefetch_factor: int, epoch: int, world_size: int, num_nodes: int) -> None:
        self.dataset, self.batch_size, self.world_size = dataset, batch_size, world_size
        self.epoch, self.sample_in_epoch = epoch, 0
        self.num_canonical_nodes, self.initial_physical_nodes = dataset.num_canonical_nodes, num_nodes
        self.physical_nodes = num_nodes
        self.shuffle_seed = dataset.shuffle_seed
        workers = {"prefetch_factor": prefetch_factor} if num_workers else {}
        # Its own generator: each new iterator (every epoch, and a resumed run's first) draws a worker seed from
        # it; drawn from torch's global one, a resumed run's later draws (post-training's flow-matching times)
        # would each be one off from the uninterrupted run's. Streaming's order does not depend on it.
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                                 pin_memory=torch.cuda.is_available(), generator=torch.Generator(), **workers)

    @property
    def samples_per_epoch(self) -> int:
        """Samples in one epoch over all ranks (after the lab/wild mix)."""
        return int(self.dataset.epoch_size)

    @property
    def samples_per_rank(self) -> int:
        """Samples this rank sees in one epoch (the same on every rank)."""
        return self.samples_per_pass // self.world_size

    @property
    def samples_per_pass(self) -> int:
        """Samples all ranks together take in one epoch: the mix's size plus the repeats streaming's partition adds.

        Not ``len(dataset) * world_size``: streaming's length counts only the repeats that even out the ranks, but
        with several canonical nodes each one's share is rounded up too, so an epoch of 44 samples over 3 canonical
        nodes runs 45. Counted short, a checkpoint taken before the last batches would call the epoch over and a
        resumed run would skip them.
        """
        ranks_per_node = self.world_size // self.physical_nodes
        nodes = self.physical_nodes
        canonical = self.num_canonical_nodes
        if max(canonical, nodes) % min(canonical, nodes):  # streaming's relaxed partition uses the first run's nodes
            nodes = self.initial_physical_nodes
        return epoch_samples_taken(self.samples_per_epoch, canonical, nodes, ranks_per_node)

    def __len__(self) -> int:
        """Micro-batches of one full epoch on this rank."""
        return math.ceil(self.samples_per_rank / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch (all of it unless resumed mid-way); then the epoch advances."""
        self.dataset.epoch = self.epoch
        # Streaming ignores a state older than its own epoch counter, which every iteration it starts advances: a
        # loop left mid-epoch would make the next one run streaming's next epoch, one ahead of ours from then on.
        self.dataset.next_epoch = self.epoch
        self.dataset.load_state_dict(self.stream_state())
        for batch in self.loader:
            self.sample_in_epoch += len(batch["sample_ids"]) * self.world_size
            yield batch
        self.epoch, self.sample_in_epoch = self.epoch + 1, 0

    def stream_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "sample_in_epoch": self.sample_in_epoch,
                "num_canonical_nodes": self.num_canonical_nodes, "shuffle_seed": self.shuffle_seed,
                "initial_physical_nodes": self.initial_physical_nodes}

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands (JSON-serialisable; the same on every rank after the same number of steps)."""
        if self.sample_in_epoch >= self.samples_per_pass:  # the last batch was yielded: next is a new epoch
            return {**self.stream_state(), "epoch": self.epoch + 1, "sample_in_epoch": 0}
        return self.stream_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.sample_in_epoch = int(state["epoch"]), int(state["sample_in_epoch"])
        self.num_canonical_nodes, self.shuffle_seed = state["num_canonical_nodes"], state["shuffle_seed"]
        self.initial_physical_nodes = state["initial_physical_nodes"]


def epoch_samples_taken(num_samples: int, canonical_nodes: int, nodes: int, ranks_per_node: int) -> int:
    """Samples every rank together takes in one epoch of ``num_samples`` under streaming's partition
    (``streaming.base.partition.orig``): each canonical node's share rounded up (and up to a multiple of the
    physical nodes per canonical node), then each node's share rounded up to a multiple of its ranks."""
    per_canonical = -(-num_samples // canonical_nodes)
    if canonical_nodes < nodes:
        per_canonical += -per_canonical % (nodes // canonical_nodes)
    per_node = canonical_nodes * per_canonical // nodes
    return nodes * ranks_per_node * -(-per_node // ranks_per_node)


def publish_world(rank: int, world_size: int) -> int:
    """Export the rank layout streaming reads from the environment; return the ranks per node."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    for name, value in (("RANK", rank), ("WORLD_SIZE", world_size)):
        if os.environ.get(name) not in (None, str(value)):
            raise ValueError(f"build_loader(rank={rank}, world_size={world_size}) disagrees with {name}="
                             f"{os.environ[name]} in the environment: pass the launcher's rank and world size")
    per_node = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or (None if world_size > 1 else "1")
    if per_node is None:
        raise ValueError(f"world_size={world_size} but neither LOCAL_WORLD_SIZE (torchrun) nor LOCAL_SIZE (deepspeed) "
                         "is set: export LOCAL_WORLD_SIZE=<processes per node> before building the loader")
    per_node_count = int(per_node)
    if world_size % per_node_count:
        raise ValueError(f"world_size={world_size} is not a multiple of {per_node_count} processes per node")
    local_rank = os.environ.get("LOCAL_RANK", str(rank % per_node_count))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=local_rank,
                      LOCAL_WORLD_SIZE=str(per_node_count))
    return per_node_count


def subset_streams(data: DataConfig) -> list[Stream]:
    """One Stream per subset in the mix, weighted by ``data.lab_proportion`` when it is set."""
    root = Path(data.mds_dir)
    found = [subset for subset in SUBSETS if (root / subset / "index.json").is_file()]
    if not found:
        raise FileNotFoundError(f"data.mds_dir={root} holds no MDS dataset ({root}/lab/index.json or "
                                f"{root}/wild/index.json): run `jala data convert --out {root}` or fix data.mds_dir")
    if data.labeled_only or data.lab_proportion == 1.0:
        wanted = ["lab"]
    elif data.lab_proportion == 0.0:
        wanted = ["wild"]
    else:
        wanted = list(SUBSETS)
    if data.lab_proportion is None and not data.labeled_only:
        wanted = found  # natural mix: whatever subsets the corpus has
    missing = [subset for subset in wanted if subset not in found]
    if missing:
        raise FileNotFoundError(f"the recipe needs the {', '.join(missing)} subset but {root} has none: convert it, "
                                "or set data.lab_proportion=null and data.labeled_only=false to use what is there")
    proportions = {"lab": data.lab_proportion, "wild": 1.0 - (data.lab_proportion or 0.0)}
    weighted = data.lab_proportion is not None and len(wanted) == 2
    return [Stream(local=str(root / s), **({"proportion": proportions[s]} if weighted else {})) for s in wanted]


def build_loader(cfg: JalaConfig, tokenizer: PreTrainedTokenizerBase, vocab: MotionVocab, n_image_tokens: int, *,
                 rank: int, world_size: int, epoch: int = 0) -> JalaLoader:
    """This rank's loader over ``cfg.data.mds_dir``, starting at ``epoch`` (see the module docstring)."""
    per_node = publish_world(rank, world_size)
    sequences = SequenceBuilder(cfg.data, objective=cfg.model.objective, tokenizer=tokenizer, vocab=vocab,
                                motion_tokenizer=build_motion_tokenizer(cfg.motion_tokenizer),
                                n_image_tokens=n_image_tokens, seed=cfg.train.seed)
    if sequences.longest > cfg.data.max_tokens:   # refused now, not at the first long sample hours in
        raise ConfigError(f"data.max_tokens={cfg.data.max_tokens}: a sample can have {sequences.longest} tokens "
                          f"({len(sequences.image_block)} of the image, up to data.max_text_tokens="
                          f"{cfg.data.max_text_tokens} of instruction, and both hands' data.max_chunks="
                          f"{cfg.data.max_chunks} chunks): raise data.max_tokens to {sequences.longest}, or lower "
                          "data.max_chunks or data.max_text_tokens")
    examples = ExampleBuilder(sequences, image_size=cfg.model.image_size,
                              encoder_image_size=cfg.model.visual_encoder_image_size)
    dataset = ExampleStream(examples=examples, validate_hashes=cfg.data.validate_hashes,
                            streams=subset_streams(cfg.data), batch_size=cfg.train.micro_batch_size,
                            shuffle=cfg.data.shuffle, shuffle_seed=cfg.train.seed,
                            num_canonical_nodes=cfg.data.num_canonical_nodes or world_size // per_node)
    batches = partial(collate, pack=cfg.data.pack, max_tokens=cfg.data.max_tokens, vocab=vocab)
    return JalaLoader(dataset, batch_size=cfg.train.micro_batch_size, collate_fn=batches,
                      num_workers=cfg.data.num_workers, prefetch_factor=cfg.data.prefetch_factor, epoch=epoch,
                      world_size=world_size, num_nodes=world_size // per_node)
