"""The post-training loader: batch contract, normalised targets, the tiny model's hidden states, resume, two ranks."""
import json

import numpy as np
import pytest
import torch
from two_ranks import run_two_ranks

from jala_ds.config import ConfigError, load_config
from jala_ds.data.lerobot_convert import convert_lerobot
from jala_ds.data.lerobot_synth import CAMERA_KEYS, synthesize_lerobot
from jala_ds.data.orphaned_memory import remove_orphaned_streaming_memory
from jala_ds.data.robot_loader import build_robot_loader, robot_batch
from jala_ds.data.robot_norm import NORM_STATS_FILE, NormStats
from jala_ds.data.robot_schema import RobotSample, robot_sample
from jala_ds.data.sequence import IGNORE
from jala_ds.model.backbone import image_token_count
from jala_ds.model.build import build_model
from jala_ds.motion.pose_corpus import open_mds
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer

WORLD_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE")
HORIZON = 4


@pytest.fixture(autouse=True)
def single_process_world(monkeypatch):
    for name in WORLD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    remove_orphaned_streaming_memory()


@pytest.fixture(scope="module")
def robot_mds(tmp_path_factory):
    """3 two-camera episodes converted into several small shards."""
    root = tmp_path_factory.mktemp("robot_loader")
    src = synthesize_lerobot(root / "lerobot", episodes=3, cameras=2, seed=1, frame_size=32)
    report = convert_lerobot(src, root / "mds", action_horizon=6, frame_size=32, shard_bytes=1 << 15)
    return root / "mds", report


def setup(mds, *overrides):
    cfg = load_config("tiny_cpu", [f"robot.mds_dir={mds}", f"robot.action_horizon={HORIZON}",
                                   f"action_head.action_horizon={HORIZON}", "action_head.state_dim=8",
                                   "action_head.action_dim=7", "train.micro_batch_size=4",
                                   "train.global_batch_size=4", *overrides])
    tok = byte_level_tokenizer()
    return cfg, tok, add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)


def make_loader(mds, *overrides, rank=0, world_size=1):
    cfg, tok, vocab = setup(mds, *overrides)
    return build_robot_loader(cfg, tok, vocab, image_token_count(cfg.model), rank=rank, world_size=world_size)


def test_a_batch_has_the_pretraining_keys_plus_normalised_state_and_actions(robot_mds):
    mds, report = robot_mds
    cfg, tok, vocab = setup(mds)
    loader = make_loader(mds)
    assert loader.samples_per_epoch == report["frames_written"] and len(loader) == -(-report["frames_written"] // 4)
    batch = next(iter(loader))
    n_img = image_token_count(cfg.model)
    rows, width = batch["input_ids"].shape
    tokens_per_chunk = cfg.motion_tokenizer.tokens_per_chunk
    assert rows == 4 and batch["pixel_values"].shape == (8, 3, cfg.model.image_size, cfg.model.image_size)
    s = cfg.model.visual_encoder_image_size
    assert batch["encoder_frames"].shape == (4, 3, s, s)  # one frame per observation
    assert batch["chunk_frame_index"].tolist() == [[i, i] for i in range(4)]  # (o_t, o_t)
    assert batch["chunk_hand"].tolist() == [1] * 4 and not batch["chunk_labeled"].any()
    assert (batch["labels"] == IGNORE).all()
    assert ((batch["input_ids"] == vocab.img_context).sum(1) == 2 * n_img).all()  # two cameras
    in_chunk = batch["motion_chunk"] >= 0
    assert (in_chunk.sum(1) == tokens_per_chunk).all() and (batch["input_ids"][in_chunk] == vocab.mask).all()
    assert torch.equal(batch["chunk_ids"] >= 0, in_chunk)
    assert batch["state"].shape == (4, 8) and batch["state"].dtype == torch.float32
    assert batch["actions"].shape == (4, HORIZON, 7) and batch["action_valid"].shape == (4, HORIZON)
    assert batch["action_valid"].dtype == torch.bool
    assert batch["actions"].abs().max() <= 1.0 and batch["state"].abs().max() <= 1.0  # quantile mode
    assert width == batch["position_ids"].max() + 1


def test_targets_are_the_stored_values_normalised_with_the_dataset_statistics(robot_mds):
    mds, _ = robot_mds
    stats = NormStats.load(mds / NORM_STATS_FILE)
    batches = list(make_loader(mds, "robot.shuffle=false"))
    first = batches[0]
    stored = robot_sample(open_mds(mds)[0], HORIZON)
    assert first["sample_ids"][0] == stored.sample_id
    np.testing.assert_allclose(first["state"][0].numpy(), stats.normalize_state(stored.state), atol=1e-6)
    np.testing.assert_allclose(first["actions"][0].numpy(), stats.normalize_action(stored.actions), atol=1e-6)
    clipped = stored.actions.clip(stats.action.q01, stats.action.q99)  # quantile mode clips to [q01, q99]
    np.testing.assert_allclose(stats.unnormalize_action(first["actions"][0].numpy()), clipped, atol=1e-5)
    ids = [s for b in batches for s in b["sample_ids"]]
    assert len(ids) == len(set(ids))


def test_the_tiny_model_reads_the_batch_and_gives_one_predictive_chunk_per_sample(robot_mds):
    mds, _ = robot_mds
    cfg, tok, vocab = setup(mds)
    batch = next(iter(make_loader(mds)))
    model = build_model(cfg, vocab).eval()
    with torch.no_grad():
        final, predictive = model.hidden_states(batch, model.encode_frames(batch))
    tokens_per_chunk = cfg.motion_tokenizer.tokens_per_chunk
    assert final.shape[:2] == batch["input_ids"].shape
    assert predictive.shape[:2] == (4, tokens_per_chunk) and torch.isfinite(predictive).all()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("attention", ["reference", "triton", "flex"])
def test_an_ntp_backbone_reads_the_robot_chunk_causally(robot_mds, attention, monkeypatch):
    """Being-H0 (ntp) was pretrained without bidirectional chunks: its robot chunk must not be one either."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton kernel on CPU tensors
    mds, _ = robot_mds
    ntp = ("model.objective=ntp", "model.align=false", "model.decoupled_ema=false", f"model.attention={attention}")
    cfg, _, vocab = setup(mds, *ntp)
    batch = next(iter(make_loader(mds, *ntp)))
    assert (batch["chunk_ids"] == -1).all() and (batch["motion_chunk"] >= 0).any()
    chunk = (batch["motion_chunk"][0] >= 0).nonzero().squeeze(1)
    edited = dict(batch, input_ids=batch["input_ids"].clone())
    edited["input_ids"][0, chunk[-1]] = 65  # the chunk's last token
    model = build_model(cfg, vocab).eval()
    with torch.no_grad():
        before = model.hidden_states(batch, model.encode_frames(batch))[0]
        after = model.hidden_states(edited, model.encode_frames(edited))[0]
    torch.testing.assert_close(after[0, :chunk[-1]], before[0, :chunk[-1]], rtol=0, atol=1e-6)
    assert not torch.equal(after[0, chunk[-1]], before[0, chunk[-1]])


def test_robot_batch_builds_the_same_batch_from_live_observations(robot_mds):
    mds, _ = robot_mds
    cfg, tok, vocab = setup(mds, "robot.shuffle=false", f"robot.cameras=[{CAMERA_KEYS[0]}]")
    stats = NormStats.load(mds / NORM_STATS_FILE)
    n_img = image_token_count(cfg.model)
    loader_batch = next(iter(build_robot_loader(cfg, tok, vocab, n_img, rank=0, world_size=1)))
    records = open_mds(mds)
    live = [RobotSample(images=s.images[:1], state=s.state, actions=None, action_valid=None,
                        instruction=s.instruction, sample_id=s.sample_id)
            for s in (robot_sample(records[i], HORIZON) for i in range(4))]
    batch = robot_batch(live, cfg, tok, vocab, n_img, stats)
    assert "actions" not in batch and "action_valid" not in batch
    for key in ("input_ids", "labels", "position_ids", "doc_ids", "chunk_ids", "motion_chunk", "pixel_values",
                "encoder_frames", "chunk_frame_index", "chunk_hand", "chunk_labeled", "state"):
        assert torch.equal(batch[key], loader_batch[key]), key
    with pytest.raises(ValueError, match="camera images"):
        robot_batch([RobotSample(live[0].images.repeat(2, 0), live[0].state, None, None, "x")], cfg, tok, vocab,
                    n_img, stats)
    with pytest.raises(ValueError, match="state has shape"):
        robot_batch([RobotSample(live[0].images, live[0].state[:3], None, None, "x")], cfg, tok, vocab, n_img, stats)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_yields_exactly_the_remaining_batches(robot_mds, workers):
    mds, _ = robot_mds
    reference = [b["sample_ids"] for b in make_loader(mds, f"robot.num_workers={workers}")]
    interrupted = make_loader(mds, f"robot.num_workers={workers}")
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    state = json.loads(json.dumps(interrupted.state_dict()))
    resumed = make_loader(mds, f"robot.num_workers={workers}")
    resumed.load_state_dict(state)
    assert [b["sample_ids"] for b in resumed] == reference[3:]


def test_recipe_and_dataset_mismatches_are_clear_errors(robot_mds, tmp_path):
    mds, _ = robot_mds
    with pytest.raises(ConfigError, match="action_head.action_dim: 5 .* set action_head.action_dim=7"):
        make_loader(mds, "action_head.action_dim=5")
    with pytest.raises(ConfigError, match="robot.action_horizon: 9 exceeds the 6"):
        make_loader(mds, "robot.action_horizon=9", "action_head.action_horizon=9")
    with pytest.raises(ValueError, match="robot.cameras asks for observation.images.top"):
        make_loader(mds, "robot.cameras=[observation.images.top]")
    with pytest.raises(ConfigError, match="robot.norm_mode: meanstd but .* set robot.norm_mode=quantile"):
        make_loader(mds, "robot.norm_mode=meanstd")
    with pytest.raises(FileNotFoundError, match="no index.json.*--format lerobot"):
        make_loader(tmp_path)
    with pytest.raises(ConfigError, match="robot.hand"):
        load_config("tiny_cpu", ["robot.hand=2"])


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from jala_ds.config import load_config
from jala_ds.data.robot_loader import build_robot_loader
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = load_config("tiny_cpu", [f"robot.mds_dir={sys.argv[1]}", "robot.action_horizon=4", "action_head.action_horizon=4",
                               "action_head.state_dim=8", "action_head.action_dim=7", "train.micro_batch_size=4",
                               "train.global_batch_size=8"])
tok = byte_level_tokenizer()
loader = build_robot_loader(cfg, tok, add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part), 4, rank=rank,
                            world_size=world)
samples = [s for batch in loader for s in batch["sample_ids"]]
with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:
    json.dump({"samples": samples, "per_rank": loader.samples_per_rank}, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_see_disjoint_samples_that_cover_the_epoch(robot_mds, tmp_path):
    """2 ranks on one node, separate processes (gloo)."""
    mds, report = robot_mds
    results = run_two_ranks(RANK_SCRIPT, [str(mds)], tmp_path)
    total = report["frames_written"]
    assert results[0]["per_rank"] == results[1]["per_rank"] == -(-total // 2)
    # An odd epoch repeats at most one sample so that both ranks run the same number of steps.
    everything = results[0]["samples"] + results[1]["samples"]
    assert len(set(everything)) == total and len(everything) - total <= 1
