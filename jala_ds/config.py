"""Typed run configuration: YAML recipes, dotted overrides, validation before anything starts.

A recipe is a YAML file whose top-level sections mirror :class:`JalaConfig`. Every component owns its
dataclass (``DataConfig`` in ``jala_ds/data/config.py`` and so on); fields carry their documentation as
a string literal right below them. Loading checks every key and type and runs each section's
``validate``; any problem is one :class:`ConfigError` line that names the key and the fix.

    cfg = load_config("tiny_cpu", ["train.lr=3e-4", "train.micro_batch_size=2"])
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jala_ds.config_checks import ConfigError, require  # noqa: F401  (re-exported)
from jala_ds.data.config import DataConfig
from jala_ds.data.robot_config import RobotDataConfig
from jala_ds.model.action_head_config import ActionHeadConfig
from jala_ds.model.config import ModelConfig
from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.token_predictor_config import TokenPredictorConfig
from jala_ds.train.config import TrackingConfig, TrainConfig
from jala_ds.train.posttrain_config import PosttrainConfig

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class JalaConfig:
    name: str = "jala"
    """Run name; MLflow run names and output folders start with it."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    motion_tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    token_predictor: TokenPredictorConfig = field(default_factory=TokenPredictorConfig)
    """The action-token predictor of the "JALA w/o latent" baseline (``jala token-predictor``); unused otherwise."""
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    robot: RobotDataConfig = field(default_factory=RobotDataConfig)
    """The robot dataset of post-training (``jala posttrain``); unused by pretraining."""
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    """The flow-matching DiT of post-training (``jala posttrain``); unused by pretraining."""
    posttrain: PosttrainConfig = field(default_factory=PosttrainConfig)
    """Where post-training starts from and what it trains; unused by pretraining."""

    def validate(self) -> None:
        for section in (self.data, self.model, self.motion_tokenizer, self.token_predictor, self.train, self.tracking,
                        self.robot, self.action_head, self.posttrain):
            section.validate()
        self.model.check_tokens_per_chunk(self.motion_tokenizer.tokens_per_chunk)
        self.motion_tokenizer.check_chunk_frames(self.data.chunk_frames)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 1e-4, ...}``: the form MLflow params and run comparisons use."""
        return flatten(self.to_dict())

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_path(recipe: str | Path) -> Path:
    """A recipe by file path, or by name from ``jala_ds/recipes`` (``tiny_cpu`` or ``tiny_cpu.yaml``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    named = RECIPES_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"recipe '{recipe}' not found: pass a YAML path or one of: {known}")


def load_config(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JalaConfig:
    """Read a recipe, apply ``key.sub=value`` overrides, build the typed config and validate it."""
    path = recipe_path(recipe)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML ({err.__class__.__name__}): fix the file") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (data:, model:, train:, ...)")
    for override in overrides:
        apply_override(tree, override)
    cfg = build(JalaConfig, tree, "")
    cfg.validate()
    return cfg


def apply_override(tree: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{override}' must look like section.key=value (e.g. train.lr=3e-4)")
    node = tree
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is a value, not a section")
    try:
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        # An unclosed [ or { would otherwise end the run in a PyYAML traceback.
        raise ConfigError(f"override '{override}': the value is not valid YAML: write lists as [a, b], and quote "
                          f"text with brackets or colons ({key.strip()}='...')") from None


def build(cls: type, tree: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key against the declared fields."""
    where = prefix.rstrip(".") or "the recipe"
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(tree).__name__}: write it as 'key: value' lines")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=2)
            # A right key in the wrong section (train.chunk_frames) is closer to the fix than any spelling.
            elsewhere = [] if close else _sections_holding(str(key))
            hint = (f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else
                    f" (it belongs to another section: {', '.join(elsewhere)})" if elsewhere else "")
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}: known keys under {where} are "
                              f"{', '.join(sorted(fields))}")
    values = {}
    for name, value in tree.items():
        values[name] = coerce(hints[name], value, f"{prefix}{name}")
    return cls(**values)


def _sections_holding(key: str) -> list[str]:
    """``section.key`` for every section of :class:`JalaConfig` that declares ``key``."""
    hints = typing.get_type_hints(JalaConfig)
    return [f"{name}.{key}" for name, hint in hints.items()
            if dataclasses.is_dataclass(hint) and key in {f.name for f in dataclasses.fields(hint)}]


def coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``hint``; ints are accepted where floats are expected."""
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed: use one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}: write it as [a, b]")
        inner = args[0] if args else Any
        items = [coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads 3e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # nan fails every range check with a misleading message, and inf passes "must be positive" (train.lr=inf)
        raise ConfigError(f"{key} must be a finite number, got {value!r}: fix the value")
    if hint is str and value is not None and not isinstance(value, (str, list, dict)):
        # YAML reads name=2024 as an int and out_dir=2026-11-28 as a date: quoting is the fix, not another value
        shown = "..." if isinstance(value, bool) else value  # yes/on/true all read as True: the typed word is lost
        raise ConfigError(f"{key} must be text, got {value!r} ({type(value).__name__}): quote it, {key}=\"'{shown}'\" "
                          f"on the command line or {key.rsplit('.', 1)[-1]}: '{shown}' in a recipe"
                          f"{' (null turns an optional one off)' if isinstance(value, bool) else ''}")
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r} "
                          f"({type(value).__name__}): fix the value")
    return value
