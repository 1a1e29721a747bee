"""JalaPolicy: a post-trained JALA as a robot policy, observation in, un-normalised action chunk out.

    policy = JalaPolicy.from_checkpoint("runs/libero/export")       # a `jala export` folder or a run's out_dir
    actions = policy.predict({
        "images": {"observation.images.image": rgb,                  # uint8 [B, h, w, 3] per camera (any h, w)
                   "observation.images.wrist_image": wrist},
        "state": state,                                              # float [B, S], raw robot units
        "instruction": ["put the bowl on the plate"] * B,            # one instruction per sample
    })                                                               # float32 [B, H, A], raw robot units

Unbatched input (images ``[h, w, 3]``, state ``[S]``, instruction a string) returns ``[H, A]``.
``policy.schema`` lists the cameras, dims and horizon the checkpoint expects.

The state is normalised and the actions un-normalised with the ``norm_stats.json`` the checkpoint carries (the
dataset's, copied at every save): the same statistics as in training, applied symmetrically. A checkpoint
without them, or with statistics whose dims differ from the action head's, refuses to load: silently
mismatched normalisation is the most common cause of a policy that runs and never succeeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jala_ds.config import JalaConfig, load_config
from jala_ds.data.robot_norm import NORM_STATS_FILE, NormStats
from jala_ds.data.robot_schema import ROBOT_META_FILE, RobotMeta, RobotSample
from jala_ds.train.export import RECIPE_FILE


class ObservationError(ValueError):
    """An observation that does not follow the schema; the message names the field and what was expected."""


class PolicyLoadError(ValueError):
    """A checkpoint that cannot serve as a policy; the message says how to fix it."""


@dataclass(frozen=True)
class PolicySchema:
    """What ``predict`` expects and returns (``GET /health`` of the policy server answers with it)."""

    cameras: list[str]
    state_dim: int
    action_dim: int
    action_horizon: int

    def to_json(self) -> dict[str, Any]:
        return {"cameras": self.cameras, "state_dim": self.state_dim, "action_dim": self.action_dim,
                "action_horizon": self.action_horizon,
                "observation": {"images": {camera: "uint8 [B, h, w, 3]" for camera in self.cameras},
                                "state": f"float [B, {self.state_dim}]", "instruction": "list of B strings"},
                "actions": f"float32 [B, {self.action_horizon}, {self.action_dim}]"}


class JalaPolicy:
    """A post-trained ``JalaPolicyModel`` with its tokenizer and statistics; ``predict`` is thread-compatible but
    not concurrent (the server serialises calls)."""

    def __init__(self, cfg: JalaConfig, model: torch.nn.Module, tokenizer: Any, norm: NormStats,
                 cameras: list[str], *, seed: int = 0):
        from jala_ds.model.backbone import image_token_count
        from jala_ds.vocab import add_motion_vocab

        self.cfg = cfg
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
        self.n_image_tokens = image_token_count(cfg.model)
        self.norm = norm
        self.device = next(model.parameters()).device
        head = cfg.action_head
        self.schema = PolicySchema(cameras=cameras, state_dim=head.state_dim, action_dim=head.action_dim,
                                   action_horizon=head.action_horizon)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | None = None, seed: int = 0) -> JalaPolicy:
        """Load a ``jala export`` folder of a post-training run, or the run's ``train.out_dir`` (its latest
        checkpoint). Refuses (``PolicyLoadError``) when the normalisation statistics are missing or do not fit."""
        from jala_ds.train.checkpoint_layout import latest_checkpoint

        path = Path(path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # The reference attention runs anywhere; on a GPU the recipe's backend (triton, flex) is kept.
        overrides = [] if device.startswith("cuda") else ["model.attention=reference"]
        if (path / RECIPE_FILE).is_file():
            stats_dir, recipe = path, path / RECIPE_FILE
        elif (checkpoint := latest_checkpoint(path)) is not None and (path / "config.yaml").is_file():
            stats_dir, recipe = checkpoint, path / "config.yaml"
        else:
            raise PolicyLoadError(f"{path} is neither a `jala export` folder ({RECIPE_FILE}) nor a run with "
                                  "checkpoints/latest: pass the export or the post-training run's train.out_dir")
        cfg = load_config(recipe, overrides)
        norm, meta = read_policy_files(stats_dir, cfg)
        model, tokenizer = (load_export(path, cfg) if stats_dir == path else load_run_model(path, overrides))
        cameras = list(cfg.robot.cameras or meta.cameras)
        return cls(cfg, model.to(device), tokenizer, norm, cameras, seed=seed)

    @torch.no_grad()
    def predict(self, observation: dict[str, Any]) -> np.ndarray:
        """Action chunks in robot units: float32 ``[B, H, A]`` (``[H, A]`` for an unbatched observation)."""
        from jala_ds.data.robot_loader import robot_batch
        from jala_ds.train.loop import to_device

        samples, batched = self.samples(observation)
        batch = robot_batch(samples, self.cfg, self.tokenizer, self.vocab, self.n_image_tokens, self.norm)
        dtype = next(self.model.parameters()).dtype
        actions = self.model.predict_actions(to_device(batch, self.device, dtype), generator=self.generator)
        raw = self.norm.unnormalize_action(actions.float().cpu().numpy()).astype(np.float32)
        return raw if batched else raw[0]

    def samples(self, observation: dict[str, Any]) -> tuple[list[Any], bool]:
        """The observation checked against the schema, as one ``RobotSample`` per batch entry."""
        if not isinstance(observation, dict) or not {"images", "state", "instruction"} <= observation.keys():
            raise ObservationError("an observation is a dict with keys 'images' ({camera: uint8 [B, h, w, 3]}), "
                                   "'state' (float [B, S]) and 'instruction' (list of B strings)")
        state = np.asarray(observation["state"])
        batched = state.ndim == 2
        states = check_state(state if batched else state[None], self.schema.state_dim, list(state.shape))
        size = states.shape[0]
        if size == 0:
            raise ObservationError("'state' holds no sample (shape [0, S]): send at least one observation")
        instructions = observation["instruction"]
        instructions = instructions if batched else [instructions]
        if not (isinstance(instructions, list) and len(instructions) == size
                and all(isinstance(text, str) for text in instructions)):
            wanted = f"a list of {size} strings (one per sample)" if batched else "a string"
            raise ObservationError(f"'instruction' must be {wanted}, got {observation['instruction']!r:.80}")
        views = check_images(observation["images"], self.schema.cameras, size, batched, self.cfg.model.image_size)
        return [RobotSample(images=np.stack([view[b] for view in views]), state=states[b], actions=None,
                            action_valid=None, instruction=instructions[b]) for b in range(size)], batched


def check_state(state: np.ndarray, state_dim: int, sent: list[int]) -> np.ndarray:
    """``state`` ``[B, S]`` as float32; ``sent`` is the shape the caller gave (before an unbatched one got its B)."""
    if state.ndim != 2 or state.shape[1] != state_dim or not np.issubdtype(state.dtype, np.number):
        raise ObservationError(f"'state' must be numbers of shape [B, {state_dim}] (or [{state_dim}] unbatched), "
                               f"got {state.dtype} {sent}")
    if not np.isfinite(state).all():
        raise ObservationError("'state' holds NaN or infinite values: send the robot's measured state")
    return state.astype(np.float32)


def check_images(images: Any, cameras: list[str], size: int, batched: bool, side: int) -> list[np.ndarray]:
    """Each camera's frames as uint8 ``[B, side, side, 3]``, in the schema's camera order (cameras may differ
    in resolution; the model reads every view at ``model.image_size`` anyway)."""
    from jala_ds.data.frames import resized

    if not isinstance(images, dict) or not set(cameras) <= images.keys():
        got = sorted(images) if isinstance(images, dict) else type(images).__name__
        raise ObservationError(f"'images' must map every camera {cameras} to uint8 frames, got {got}")
    views = []
    for camera in cameras:
        frames = np.asarray(images[camera])
        frames = frames if batched else frames[None]
        if (frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != size or frames.shape[-1] != 3
                or 0 in frames.shape[1:3]):   # an empty frame has nothing to resize
            raise ObservationError(f"images['{camera}'] must be uint8 RGB of shape [{size}, h, w, 3]"
                                   f"{'' if batched else ' ([h, w, 3] unbatched)'}, got {frames.dtype} "
                                   f"{list(np.asarray(images[camera]).shape)}")
        views.append(resized(torch.from_numpy(frames).permute(0, 3, 1, 2), side).permute(0, 2, 3, 1).numpy())
    return views


def read_policy_files(folder: Path, cfg: JalaConfig) -> tuple[NormStats, RobotMeta]:
    """The statistics and robot description a checkpoint carries, checked against its action head."""
    fix = (f"post-train with `jala posttrain` (every checkpoint carries them), or copy {NORM_STATS_FILE} and "
           f"{ROBOT_META_FILE} of the dataset the policy was trained on (robot.mds_dir) into {folder}")
    for name in (NORM_STATS_FILE, ROBOT_META_FILE):
        if not (folder / name).is_file():
            raise PolicyLoadError(f"{folder} has no {name}, so actions could not be un-normalised as in training: "
                                  f"{fix}")
    try:
        norm, meta = NormStats.load(folder / NORM_STATS_FILE), RobotMeta.load(folder)
    except ValueError as err:  # unreadable or incomplete: the message names the file and how to get a good one
        raise PolicyLoadError(str(err)) from None
    head = cfg.action_head
    if (norm.state.dim, norm.action.dim) != (head.state_dim, head.action_dim):
        raise PolicyLoadError(f"{folder / NORM_STATS_FILE} has state/action dims ({norm.state.dim}, "
                              f"{norm.action.dim}) but the action head was trained for ({head.state_dim}, "
                              f"{head.action_dim}): {fix}")
    return norm, meta


def load_export(folder: Path, cfg: JalaConfig) -> tuple[torch.nn.Module, Any]:
    """A post-training export: the backbone by ``from_pretrained`` (``model.pretrained`` is the folder), the
    perceiver, frame encoder and action head from its heads file."""
    from jala_ds.model.policy_model import build_policy_model
    from jala_ds.train.export import load_heads
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    # The recipe names the folder the export was written to; the backbone is this one's, wherever it is now.
    cfg.model.pretrained = str(folder.resolve())
    tokenizer = load_text_tokenizer(cfg.model.pretrained, cfg.model.arch)
    model = build_policy_model(cfg, add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part), init=None)
    load_heads(model, folder)
    return model.float(), tokenizer


def load_run_model(run_dir: Path, overrides: list[str]) -> tuple[torch.nn.Module, Any]:
    from jala_ds.train.export import load_run

    _, tokenizer, model, _ = load_run(run_dir, overrides)
    return model, tokenizer
