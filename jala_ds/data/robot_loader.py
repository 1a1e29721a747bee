"""The post-training loader: a converted robot dataset -> shuffled, rank-partitioned, resumable batches.

    loader = build_robot_loader(cfg, tokenizer, vocab, n_image_tokens, rank=rank, world_size=world_size)
    loader.load_state_dict(state)          # optional: resume mid-epoch
    for batch in loader:                   # one epoch; batch keys: docs/architecture.md section 4 + state, actions,
        ...                                # action_valid (jala_ds.data.robot_batch)

The same machinery as pretraining's loader (:mod:`jala_ds.data.loader`): one ``StreamingDataset`` over
``robot.mds_dir``, its shards hash-checked on first use, ranks disjoint and together covering an epoch, exact
mid-epoch resume from ``state_dict()`` (every micro-batch holds ``train.micro_batch_size`` samples per rank).
Samples are not packed: one observation per row. The dataset's ``robot_meta.json`` and ``norm_stats.json`` are
checked against the recipe before anything is read.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from jala_ds.config import JalaConfig
from jala_ds.config_checks import ConfigError
from jala_ds.data.collate import collate
from jala_ds.data.loader import ExampleStream, JalaLoader, publish_world
from jala_ds.data.robot_batch import RobotExamples, robot_batch  # noqa: F401  (robot_batch re-exported)
from jala_ds.data.robot_norm import NORM_STATS_FILE, NormStats
from jala_ds.data.robot_schema import RobotMeta
from jala_ds.vocab import MotionVocab


def check_robot_dataset(cfg: JalaConfig) -> tuple[RobotMeta, NormStats]:
    """The dataset's shape and statistics, after checking them against ``robot.*`` and ``action_head.*``."""
    root = Path(cfg.robot.mds_dir)
    if not (root / "index.json").is_file():
        raise FileNotFoundError(f"robot.mds_dir={root} holds no MDS dataset (no index.json): run `jala data convert "
                                f"--format lerobot --src <LeRobot folder> --out {root}` or fix robot.mds_dir")
    meta, norm = RobotMeta.load(root), NormStats.load(root / NORM_STATS_FILE)
    robot, head = cfg.robot, cfg.action_head
    if robot.action_horizon > meta.action_horizon:
        raise ConfigError(f"robot.action_horizon: {robot.action_horizon} exceeds the {meta.action_horizon} actions "
                          f"per frame {root} was converted with: lower it, or re-convert with --horizon "
                          f"{robot.action_horizon}")
    for key, wanted, stored in (("action_head.action_horizon", head.action_horizon, robot.action_horizon),
                                ("action_head.state_dim", head.state_dim, meta.state_dim),
                                ("action_head.action_dim", head.action_dim, meta.action_dim)):
        if wanted != stored:
            source = "robot.action_horizon" if key.endswith("horizon") else f"{root}/robot_meta.json"
            raise ConfigError(f"{key}: {wanted} but {source} says {stored}: set {key}={stored}")
    if norm.mode != robot.norm_mode:
        raise ConfigError(f"robot.norm_mode: {robot.norm_mode} but {root}/{NORM_STATS_FILE} is for mode {norm.mode}: "
                          f"set robot.norm_mode={norm.mode}, or re-convert the dataset")
    if (norm.state.dim, norm.action.dim) != (meta.state_dim, meta.action_dim):
        raise ValueError(f"{root}/{NORM_STATS_FILE} is for state/action dims {norm.state.dim}/{norm.action.dim}, "
                         f"robot_meta.json says {meta.state_dim}/{meta.action_dim}: re-run the conversion")
    meta.select_cameras(robot.cameras)
    return meta, norm


def build_robot_loader(cfg: JalaConfig, tokenizer: PreTrainedTokenizerBase, vocab: MotionVocab, n_image_tokens: int,
                       *, rank: int, world_size: int, epoch: int = 0) -> JalaLoader:
    """This rank's loader over ``cfg.robot.mds_dir``, starting at ``epoch`` (see the module docstring)."""
    meta, norm = check_robot_dataset(cfg)
    per_node = publish_world(rank, world_size)
    positions = meta.select_cameras(cfg.robot.cameras)
    examples = RobotExamples(cfg, tokenizer, vocab, n_image_tokens, norm, camera_positions=positions)
    dataset = ExampleStream(examples=examples, validate_hashes=cfg.robot.validate_hashes, local=cfg.robot.mds_dir,
                            batch_size=cfg.train.micro_batch_size, shuffle=cfg.robot.shuffle,
                            shuffle_seed=cfg.train.seed,
                            num_canonical_nodes=cfg.robot.num_canonical_nodes or world_size // per_node)
    batches = partial(collate, pack=False, max_tokens=examples.max_tokens(len(positions)), vocab=vocab)
    return JalaLoader(dataset, batch_size=cfg.train.micro_batch_size, collate_fn=batches,
                      num_workers=cfg.robot.num_workers, prefetch_factor=cfg.robot.prefetch_factor, epoch=epoch,
                      world_size=world_size, num_nodes=world_size // per_node)
