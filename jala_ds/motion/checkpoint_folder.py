"""A checkpoint folder that is replaced only once its successor is complete, and its ``config.json`` read back.

    with written_whole(out_dir) as staging:
        save_file(tensors, str(staging / "model.safetensors"))
        (staging / "config.json").write_text(json.dumps({"format": "jala-grvq-tokenizer", "version": 1, ...}))
    config = folder_config(out_dir, "jala-grvq-tokenizer", 1, "a GRVQ tokenizer checkpoint", "train one with ...")

Everything is written to ``<out_dir>.partial-<pid>`` first; only when the block ends without an error does it
take ``out_dir``'s place, so an error mid-save leaves the previous checkpoint (or none) and never half of one,
and removes the partial folder.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def refuse_to_replace(out_dir: Path, what: str, overwrite: bool) -> None:
    """Refuse, before any training, to replace the checkpoint at ``out_dir`` unless ``overwrite``: the corpus
    tokenized with it, or labelled by it, and the runs that read it would no longer match it. A file, or a folder
    of other things (no config.json), is refused even with ``overwrite``: replacing it would delete them."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file, not a checkpoint folder: choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise FileExistsError(f"--out {out_dir} holds files that are not {what} (no config.json): choose a new or "
                              "empty folder for --out")
    if not overwrite and out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"--out {out_dir} already holds {what}: choose another --out, or pass --overwrite to "
                              "replace it (what was tokenized or labelled with it then no longer matches)")


@contextmanager
def written_whole(out_dir: str | Path) -> Iterator[Path]:
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = out_dir.with_name(f"{out_dir.name}.previous-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)


def folder_config(path: str | Path, fmt: str, version: int, what: str, how_to_make: str) -> dict[str, Any]:
    """``<path>/config.json`` of a checkpoint folder written as ``fmt`` v``version``; one clear error when the folder
    is not ``what`` (saying ``how_to_make`` one) or is another format or version."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not {what} (no config.json): {how_to_make}")
    config = json.loads(config_file.read_text())
    if config.get("format") != fmt or config.get("version") != version:
        raise ValueError(f"{config_file} is not a {fmt} v{version} checkpoint "
                         f"(format {config.get('format')!r}, version {config.get('version')!r}): {how_to_make}")
    return config
