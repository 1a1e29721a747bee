"""The streaming loader: whole epochs, exact mid-epoch resume, stream mixing, hash checks, two ranks."""
import itertools
import json
import shutil

import pytest
import torch
from streaming.base.partition.orig import get_partitions_orig
from two_ranks import run_two_ranks

from jala_ds.config import load_config
from jala_ds.config_checks import ConfigError
from jala_ds.data import shard_check
from jala_ds.data.loader import build_loader, epoch_samples_taken
from jala_ds.data.orphaned_memory import remove_orphaned_streaming_memory
from jala_ds.data.shard_check import CorruptShardError
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer

WORLD_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE")


@pytest.fixture(autouse=True)
def single_process_world(monkeypatch):
    """No launcher variables in this process (build_loader sets them; monkeypatch restores them), no stale shm."""
    for name in WORLD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    remove_orphaned_streaming_memory()


def make_loader(mds, *overrides, rank=0, world_size=1, epoch=0):
    cfg = load_config("tiny_cpu", [f"data.mds_dir={mds}", *overrides])
    tok = byte_level_tokenizer()
    vocab = add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)
    return build_loader(cfg, tok, vocab, 4, rank=rank, world_size=world_size, epoch=epoch)


def clip_ids(batches):
    return [sample.split("@")[0] for batch in batches for sample in batch["sample_ids"]]


def corpus_clip_ids(tiny_corpus, subsets=("lab", "wild")):
    lines = [json.loads(line) for line in (tiny_corpus.raw / "manifest.jsonl").read_text().splitlines()]
    return sorted(line["clip_id"] for line in lines if line["subset"] in subsets)


def test_an_epoch_yields_every_sample_once_then_the_next_epoch_reshuffles(tiny_corpus):
    loader = make_loader(tiny_corpus.mds)
    first = list(loader)
    assert loader.samples_per_epoch == loader.samples_per_rank == 44 and len(first) == len(loader) == 22
    assert sorted(clip_ids(first)) == corpus_clip_ids(tiny_corpus)
    assert loader.state_dict()["epoch"] == 1
    second = list(loader)
    assert sorted(clip_ids(second)) == corpus_clip_ids(tiny_corpus) and clip_ids(second) != clip_ids(first)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_yields_exactly_the_remaining_batches(tiny_corpus, workers):
    overrides = (f"data.num_workers={workers}", "data.pack=true", "train.micro_batch_size=3", "train.global_batch_size=3")
    reference = list(make_loader(tiny_corpus.mds, *overrides))
    interrupted = make_loader(tiny_corpus.mds, *overrides)
    consumed = []
    for batch in interrupted:
        consumed.append(batch)
        if len(consumed) == 5:
            break
    state = json.loads(json.dumps(interrupted.state_dict()))
    assert state["sample_in_epoch"] == 15
    resumed = make_loader(tiny_corpus.mds, *overrides)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b["sample_ids"] for b in consumed + rest] == [b["sample_ids"] for b in reference]
    for got, want in zip(rest, reference[5:]):
        for key in ("input_ids", "labels", "chunk_ids", "encoder_frames", "chunk_frame_index", "pixel_values"):
            assert torch.equal(got[key], want[key]), key
    assert resumed.state_dict()["epoch"] == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loop_left_mid_epoch_is_continued_by_the_next_one(tiny_corpus, workers):
    """Streaming advances its own epoch counter each time iteration starts: left unchecked, the loop after a
    ``break`` ran streaming's next epoch as the rest of ours, and every later epoch one ahead."""
    overrides = (f"data.num_workers={workers}", "train.micro_batch_size=4", "train.global_batch_size=4")
    reference = make_loader(tiny_corpus.mds, *overrides)
    epochs = [clip_ids(reference), clip_ids(reference)]
    loader = make_loader(tiny_corpus.mds, *overrides)
    for taken, batch in enumerate(loader, start=1):
        if taken == 2:
            break
    assert loader.state_dict()["sample_in_epoch"] == 8
    assert epochs[0][:8] + clip_ids(loader) == epochs[0]
    assert clip_ids(loader) == epochs[1]


def test_an_epoch_that_canonical_nodes_round_up_resumes_before_its_last_batch(tiny_corpus):
    """44 samples over 3 canonical nodes: streaming's partition gives each 15, an epoch of 45. A checkpoint after
    the 44th sample is still inside the epoch: the resumed run takes the 45th, as the uninterrupted one does."""
    overrides = ("data.num_canonical_nodes=3", "train.micro_batch_size=4", "train.global_batch_size=4")
    reference = list(make_loader(tiny_corpus.mds, *overrides))
    assert [len(b["sample_ids"]) for b in reference] == [4] * 11 + [1]
    interrupted = make_loader(tiny_corpus.mds, *overrides)
    assert len(interrupted) == 12 and interrupted.samples_per_rank == 45
    for taken, _ in enumerate(interrupted, start=1):
        if taken == 11:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["sample_in_epoch"]) == (0, 44)
    resumed = make_loader(tiny_corpus.mds, *overrides)
    resumed.load_state_dict(state)
    assert [b["sample_ids"] for b in resumed] == [reference[-1]["sample_ids"]]


# Node counts that divide each other: streaming refuses the others.
NODE_LAYOUTS = [(canonical, nodes, ranks) for canonical, nodes, ranks in itertools.product((1, 2, 3, 4, 8), (1, 2, 4, 8),
                                                                                           (1, 3, 8))
                if max(canonical, nodes) % min(canonical, nodes) == 0]


@pytest.mark.parametrize("canonical,nodes,ranks", NODE_LAYOUTS)
def test_the_epoch_length_counts_streamings_partition(canonical, nodes, ranks):
    for samples in (canonical * nodes * ranks, 45, 1001):
        ids = get_partitions_orig(samples, canonical, nodes, ranks, 1, 1)
        assert epoch_samples_taken(samples, canonical, nodes, ranks) == int((ids >= 0).sum())


def test_iterating_draws_nothing_from_torchs_global_generator(tiny_corpus):
    """A resumed run starts an iterator mid-epoch where the uninterrupted one did not: a seed drawn from the global
    generator then would shift every later draw (post-training's flow-matching times) by one."""
    loader = make_loader(tiny_corpus.mds, "data.num_workers=0")  # the draw happens in this process either way
    torch.manual_seed(0)
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_the_epoch_argument_and_state_select_the_epoch(tiny_corpus):
    loader = make_loader(tiny_corpus.mds)
    list(loader)
    epoch_one = [(b["sample_ids"], b["input_ids"]) for b in loader]
    started_at_one = [(b["sample_ids"], b["input_ids"]) for b in make_loader(tiny_corpus.mds, epoch=1)]
    restored = make_loader(tiny_corpus.mds)
    restored.load_state_dict({**restored.state_dict(), "epoch": 1})
    for other in (started_at_one, [(b["sample_ids"], b["input_ids"]) for b in restored]):
        assert [ids for ids, _ in other] == [ids for ids, _ in epoch_one]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(other, epoch_one))


def test_stream_mixing_and_label_options(tiny_corpus):
    mixed = make_loader(tiny_corpus.mds, "data.lab_proportion=0.75")
    ids = clip_ids(mixed)
    assert mixed.samples_per_epoch == 44 and sum(i.startswith("lab") for i in ids) == 33
    labeled_only = make_loader(tiny_corpus.mds, "data.labeled_only=true")
    batches = list(labeled_only)
    assert sorted(clip_ids(batches)) == corpus_clip_ids(tiny_corpus, ("lab",))
    assert all(b["chunk_labeled"].all() for b in batches)
    pseudo_off = make_loader(tiny_corpus.mds, "data.pseudo_labels_as_unlabeled=true")
    for batch in pseudo_off:
        for sample, labeled in zip(batch["sample_ids"], chunk_labels_per_sample(batch)):
            assert labeled == sample.startswith("lab")


def chunk_labels_per_sample(batch):
    """Whether each document of the batch is labelled, read from its chunks."""
    chunk_doc = []
    for row in range(batch["input_ids"].shape[0]):
        positions = batch["motion_chunk"][row] >= 0
        seen = {}
        for doc, chunk in zip(batch["doc_ids"][row][positions].tolist(), batch["motion_chunk"][row][positions].tolist()):
            seen.setdefault(doc, chunk)
        chunk_doc += [seen[d] for d in sorted(seen)]
    return [bool(batch["chunk_labeled"][c]) for c in chunk_doc]


def test_a_flipped_byte_in_a_shard_is_reported_with_the_shard_name(tiny_corpus, tmp_path):
    shutil.copytree(tiny_corpus.mds, tmp_path / "mds")
    shard = tmp_path / "mds/lab/piece00000/shard.00001.mds"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=r"lab/piece00000/shard\.00001\.mds is corrupted"):
        list(make_loader(tmp_path / "mds"))


def test_each_shard_is_hashed_once_per_node_across_workers_and_epochs(tiny_corpus, tmp_path, monkeypatch):
    hashed = tmp_path / "hashed.txt"
    check = shard_check.verify_shard

    def recorded(shard):  # the loader's forked workers append here too
        with open(hashed, "a") as record:
            record.write(f"{shard.dirname}/{shard.split}/{shard.file_pairs[0][0].basename}\n")
        check(shard)

    monkeypatch.setattr(shard_check, "verify_shard", recorded)
    loader = make_loader(tiny_corpus.mds, "data.num_workers=2")
    list(loader), list(loader)
    shards = hashed.read_text().splitlines()
    assert len(shards) == len(set(shards)) == loader.dataset.num_shards > 2


def test_bad_world_and_missing_corpus_are_clear_errors(tiny_corpus, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE"):
        make_loader(tiny_corpus.mds, rank=0, world_size=2)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="disagrees with RANK=1"):
        make_loader(tiny_corpus.mds)
    monkeypatch.delenv("RANK")
    with pytest.raises(FileNotFoundError, match="jala data convert"):
        make_loader(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"data.max_tokens=16: a sample can have \d+ tokens .*: raise "
                                          r"data.max_tokens to \d+, or lower data.max_chunks"):
        make_loader(tiny_corpus.mds, "data.max_tokens=16")


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from jala_ds.config import load_config
from jala_ds.config_checks import ConfigError
from jala_ds.data.loader import build_loader, epoch_samples_taken
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer

dist.init_process_group("gloo")
cfg = load_config("tiny_cpu", [f"data.mds_dir={sys.argv[1]}", "data.num_workers=1"])
tok = byte_level_tokenizer()
vocab = add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)
rank = int(os.environ["RANK"])
loader = build_loader(cfg, tok, vocab, 4, rank=rank, world_size=2)
samples = [s for batch in loader for s in batch["sample_ids"]]
with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:
    json.dump({"samples": samples, "batches": len(loader), "per_rank": loader.samples_per_rank}, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_see_disjoint_samples_that_cover_the_epoch(tiny_corpus, tmp_path):
    """2 ranks on one node, separate processes (gloo), as under torchrun or the deepspeed launcher."""
    results = run_two_ranks(RANK_SCRIPT, [str(tiny_corpus.mds)], tmp_path)
    ranks = [[s.split("@")[0] for s in r["samples"]] for r in results]
    assert set(ranks[0]).isdisjoint(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == corpus_clip_ids(tiny_corpus)
    assert results[0]["batches"] == results[1]["batches"] == 11 and results[0]["per_rank"] == 22
