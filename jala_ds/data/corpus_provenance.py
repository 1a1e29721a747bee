"""What a corpus was built with, as its build ledger (``<corpus>/pieces/plan.json``) records it, checked against the
recipe that reads it.

Two things decide how training must read a corpus, and a mismatch fails late or not at all:

- ``data.chunk_frames``: the conversion cut every clip into chunks of that many frames. Read with another value,
  a clip's poses no longer divide into its chunks, and the first such sample stops the run with a shape error.
- The motion tokenizer whose codes the corpus stores (``jala data tokenize``, ``jala token-predictor label``).
  Read with another tokenizer, the stored codes would be trained on as the motions they mean under that one:
  nothing fails, the model just learns the wrong thing.

A copy records the conversion settings of its source (``converted``), so a tokenized or pseudo-labelled copy
answers both questions. A corpus whose ledger lacks either (built before it was recorded) is not checked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jala_ds.config_checks import ConfigError
from jala_ds.data.mds_pieces import LEDGER, content_sha256
from jala_ds.motion.config import TokenizerConfig


def build_plan(root: str | Path) -> dict[str, Any]:
    """The ledger's plan of the build that wrote ``root``; empty for a corpus without one."""
    plan = Path(root) / LEDGER / "plan.json"
    return json.loads(plan.read_text()) if plan.is_file() else {}


PSEUDO_LABEL_BUILD = "pseudo-label"
"""The ledger's ``build`` of a ``jala token-predictor label`` copy."""


def is_pseudo_labelled(root: str | Path) -> bool:
    """Whether ``root`` is a pseudo-labelled copy: its video-only clips hold predicted codes, marked labelled."""
    return build_plan(root).get("build") == PSEUDO_LABEL_BUILD


def converted_settings(root: str | Path) -> dict[str, Any] | None:
    """The conversion settings (``ConvertSettings``) of ``root`` or, for a copy, of the corpus it copies."""
    plan = build_plan(root)
    return plan.get("settings") if plan.get("build") == "convert" else plan.get("converted")


def tokenizer_fingerprint(tok: TokenizerConfig) -> str:
    """What decides the meaning of a code: the GRVQ checkpoint's content, or the binning layout."""
    if tok.kind == "grvq":
        return content_sha256(Path(tok.checkpoint or ""))
    return (f"binning steps={tok.steps} groups={tok.groups} stages={tok.stages} "
            f"codes_per_stage={tok.codes_per_stage}")


def describe(tok: TokenizerConfig) -> str:
    """The tokenizer as a user set it, for an error message."""
    return f"kind={tok.kind} checkpoint={tok.checkpoint}" if tok.kind == "grvq" else tokenizer_fingerprint(tok)


def check_stored_codes(root: str | Path, tok: TokenizerConfig, *, recipe_key: str = "data.mds_dir") -> None:
    """The codes ``root`` stores, if any, are the codes of ``tok``. A GRVQ checkpoint folder that does not exist
    is not judged here: the command's own check of local folders names it."""
    recorded = build_plan(root).get("tokenizer")
    if recorded is None or (tok.kind == "grvq" and not Path(tok.checkpoint or "").is_dir()):
        return
    if recorded != tokenizer_fingerprint(tok):
        raise ConfigError(f"{recipe_key}: {root} holds the codes of another motion tokenizer than {describe(tok)}: "
                          "set motion_tokenizer (kind and checkpoint) to the tokenizer the corpus was tokenized or "
                          "labelled with, or build the corpus again with this one")


def check_chunk_frames(root: str | Path, chunk_frames: int) -> None:
    """``data.chunk_frames`` is the chunk length ``root`` was converted with."""
    settings = converted_settings(root)
    if settings is not None and settings.get("chunk_frames") != chunk_frames:
        raise ConfigError(f"data.chunk_frames={chunk_frames} but {root} was converted with chunk_frames="
                          f"{settings.get('chunk_frames')}: set data.chunk_frames={settings.get('chunk_frames')}, "
                          f"or convert the corpus again with {chunk_frames}")
