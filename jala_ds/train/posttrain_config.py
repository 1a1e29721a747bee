"""Posttrain section: which pretrained JALA to start from and which of its parts train (paper sec. 6.1)."""
from __future__ import annotations

from dataclasses import dataclass, field

from jala_ds.config_checks import require

TRAINABLE_PARTS = ("vision_tower", "projector", "language_model", "lsp", "action_head")
"""Parts of the policy model that ``posttrain.trainable`` may name (``JalaPolicyModel.part_parameters``)."""


@dataclass
class PosttrainConfig:
    init: str | None = None
    """Pretrained JALA to start from: a ``jala export`` folder or a pretraining run's ``train.out_dir``
    (``jala posttrain --init`` sets it). None starts from ``model.pretrained`` alone (no JALA pretraining)."""
    trainable: list[str] = field(default_factory=lambda: ["language_model", "action_head"])
    """Parts that train; everything else is frozen. The paper: "Only language model parameters are unfrozen,
    and the vision encoder remains frozen", plus the new action head. Choices: vision_tower, projector,
    language_model, lsp, action_head (the perceivers' frame encoder is always frozen)."""

    def validate(self) -> None:
        unknown = [part for part in self.trainable if part not in TRAINABLE_PARTS]
        require(not unknown, "posttrain.trainable", f"unknown part(s) {unknown}: choose among {list(TRAINABLE_PARTS)}")
        require("action_head" in self.trainable, "posttrain.trainable",
                "must include action_head: the new head starts at random and has to learn")
