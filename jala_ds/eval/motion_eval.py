"""``jala eval motion``: a checkpoint and a held-out split -> generated motion per clip -> the Table-1 metrics.

    result = evaluate_motion("demo_out/run", "demo_out/mds", "lab", limit=16, out_dir="demo_out/eval")

Reads the labelled generation-task clips of ``<data>/heldout/<split>`` (written by ``jala data convert`` with
``data.heldout_fraction > 0``; a description clip's instruction describes its motion, and a continuation asks to
go on from motion the prompt would not show), generates each clip's window chunk by chunk with MCP decoding
(``mcp_decoding``),
and scores the ensembled MANO poses against the clip's own poses on forward-kinematics joints
(``jala_ds.motion.metrics``): one row per hand and one over both (every generated chunk weighs the same; a
chunk is the sequence MDE measures its displacement over). A second table scores the motion tokenizer's own
reconstruction of the truth, the floor no generation through that tokenizer can go under. The joints are MANO's
with ``motion_tokenizer.mano_model_dir``, else a template skeleton's (``kinematics.py``); both files say which,
since centimetres on the template are not comparable with published MANO figures. With ``data.max_chunks > 1`` a
later chunk's LSP context is its own first frame, a true observation the first chunk's generation did not have.

Writes ``metrics.md``, ``metrics.json``, ``predictions.npz`` and the pictures of ``motion_plots`` to ``out_dir``,
and logs them to MLflow in the training run's experiment, tagged with (and nested under) the training run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jala_ds.data.convert import HELDOUT
from jala_ds.eval.mcp_decoding import Decoding, GeneratedClip, MotionGenerator
from jala_ds.motion.kinematics import HandKinematics
from jala_ds.motion.metrics import motion_metrics

log = logging.getLogger(__name__)
ROWS = ("left", "right", "both")
COLUMNS = {"mpjpe_cm": "MPJPE (cm)", "pa_mpjpe_cm": "PA-MPJPE (cm)", "mwte_cm": "MWTE (cm)", "mde_deg": "MDE (deg)"}
EVAL_TAG = "jala.evaluates_run"
"""MLflow tag of an evaluation run: the id of the training run it evaluates."""


@dataclass
class MotionEvaluation:
    split: str
    clips: list[GeneratedClip]
    table: dict[str, dict[str, float]]
    """Row (left, right, both) -> metric -> value, plus ``chunks`` (how many chunks the row scores)."""
    tokenizer_floor: dict[str, dict[str, float]]
    """The same table for the motion tokenizer's reconstruction of the true poses."""
    files: list[Path]


def read_heldout(data: str | Path, split: str, limit: int | None = None) -> list[Mapping]:
    """The labelled generation-task records of ``<data>/heldout/<split>``, in stored order, at most ``limit``."""
    from jala_ds.motion.pose_corpus import open_mds

    folder = Path(data) / HELDOUT / split
    if not (folder / "index.json").is_file():
        raise FileNotFoundError(f"{folder} holds no held-out split: convert the corpus with a held-out share, e.g. "
                                "`jala data convert --recipe R --src RAW --out NEW_FOLDER data.heldout_fraction=0.05`")
    dataset = open_mds(folder)
    records = [record for record in (dataset[i] for i in range(len(dataset)))
               if record["labeled"] and record["task"] == "generation"]
    return records[:limit] if limit else records


def generate_all(generator: MotionGenerator, records: list[Mapping], batch_size: int) -> list[GeneratedClip]:
    clips = []
    for first in range(0, len(records), batch_size):
        clips += generator.generate(records[first:first + batch_size])
    return clips


def evaluate_in_training(model, cfg, device: torch.device) -> dict[str, float]:
    """``train.eval_every``: MCP generation on the first ``train.eval_limit`` labelled clips of each held-out split
    under ``data.mds_dir``, with the model being trained; the metrics as ``eval_<split>_<row>_<metric>``.

    Called on every rank with the same clips (the same number of forwards everywhere, as ZeRO-3 requires); the
    model goes back to training mode afterwards. Without a held-out split it returns nothing and says so."""
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    splits = {split: read_heldout(cfg.data.mds_dir, split, cfg.train.eval_limit) for split in ("lab", "wild")
              if (Path(cfg.data.mds_dir) / HELDOUT / split / "index.json").is_file()}
    if not any(splits.values()):
        log.warning("train.eval_every=%d but %s/%s holds no labelled clip: no periodic evaluation (convert with "
                    "data.heldout_fraction > 0)", cfg.train.eval_every, cfg.data.mds_dir, HELDOUT)
        return {}
    tokenizer = load_text_tokenizer(cfg.model.pretrained, cfg.model.arch)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    generator = MotionGenerator(cfg, model, tokenizer, vocab, device=device)
    metrics = {}
    model.eval()
    try:
        for split, records in splits.items():
            clips = generate_all(generator, records, batch_size=len(records) or 1)
            table = score(hand_pairs(clips), cfg.data.chunk_frames, cfg.motion_tokenizer.mano_model_dir)
            metrics.update(flat_metrics(table, f"eval_{split}_"))
    finally:
        model.train()
    return metrics


def hand_pairs(clips: list[GeneratedClip]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(hand, predicted poses, true poses)`` of every generated hand."""
    return [(hand, motion.predicted, motion.true) for clip in clips for hand, motion in clip.hands.items()]


def tokenizer_pairs(clips: list[GeneratedClip], tokenizer) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(hand, the tokenizer's reconstruction of the true poses, true poses)``: what perfect codes would give."""
    return [(hand, tokenizer.decode(motion.true_codes), motion.true)
            for clip in clips for hand, motion in clip.hands.items()]


def score(pairs: list[tuple[str, np.ndarray, np.ndarray]], chunk_frames: int, mano_model_dir: str | None,
          procrustes: str = "similarity") -> dict[str, dict[str, float]]:
    """The metrics table of ``(hand, predicted [frames, 99], true [frames, 99])`` pairs, chunk by chunk;
    ``procrustes`` is PA-MPJPE's alignment (``jala_ds.motion.metrics``)."""
    kinematics = {hand: HandKinematics(hand, mano_model_dir) for hand in ("left", "right")}
    joints: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {"left": ([], []), "right": ([], [])}
    for hand, predicted, true in pairs:
        for found, poses in zip(joints[hand], (predicted, true)):
            found.append(kinematics[hand](torch.from_numpy(poses).double()).view(-1, chunk_frames, 21, 3))
    rows = {hand: (torch.cat(pred), torch.cat(true)) for hand, (pred, true) in joints.items() if pred}
    if rows:
        rows["both"] = tuple(torch.cat(side) for side in zip(*rows.values()))
    return {row: {**motion_metrics(pred, true, procrustes), "chunks": len(pred)} for row, (pred, true) in rows.items()}


def format_table(table: dict[str, dict[str, float]], title: str) -> str:
    """A markdown table: one row per hand and one for both, metric columns with their units."""
    lines = [f"**{title}**", "", "| hand | chunks | " + " | ".join(COLUMNS.values()) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for row in ROWS:
        if row in table:
            values = " | ".join(f"{table[row][key]:.2f}" for key in COLUMNS)
            lines.append(f"| {row} | {int(table[row]['chunks'])} | {values} |")
    return "\n".join(lines) + "\n"


def flat_metrics(table: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """``{"<prefix><row>_<metric>": value}`` for MLflow (MDE can be NaN when no chunk moved: left out)."""
    return {f"{prefix}{row}_{key}": float(values[key]) for row, values in table.items() for key in COLUMNS
            if np.isfinite(values[key])}


def evaluate_motion(ckpt: str | Path, data: str | Path, split: str, *, limit: int | None = None,
                    decoding: Decoding = Decoding(), out_dir: str | Path | None = None, batch_size: int = 8,
                    overrides: list[str] | tuple[str, ...] = (), pictures: int = 4, procrustes: str = "similarity",
                    track: bool = True) -> MotionEvaluation:
    """The whole ``jala eval motion``: load, generate, score, write, plot, log (see the module docstring)."""
    from jala_ds.eval.motion_plots import plot_hand_skeletons, plot_wrist_trajectories
    from jala_ds.eval.trained_model import load_trained_model

    if split not in ("lab", "wild"):
        raise ValueError(f"split={split!r}: use lab or wild")
    if out_dir:  # a wrong --out is named before the model loads and the clips are generated
        output_folder(Path(out_dir), create=False)
    records = read_heldout(data, split, limit)
    if not records:
        raise ValueError(f"{data}/{HELDOUT}/{split} has no labelled generation clip to score: hold more clips out "
                         "(data.heldout_fraction) or pick the other split")
    trained = load_trained_model(ckpt, overrides)
    cfg = trained.cfg
    generator = MotionGenerator(cfg, trained.model, trained.tokenizer, trained.vocab, decoding=decoding,
                                device=trained.device)
    clips = generate_all(generator, records, batch_size)
    frames, mano = cfg.data.chunk_frames, cfg.motion_tokenizer.mano_model_dir
    table = score(hand_pairs(clips), frames, mano, procrustes)
    floor = score(tokenizer_pairs(clips, generator.motion_tokenizer), frames, mano, procrustes)

    out = output_folder(Path(out_dir) if out_dir else Path(trained.source) / "eval" / split)
    step = f"step {trained.step}" if trained.step is not None else "export"
    skeleton = f"MANO joints from {mano}" if mano else "template-skeleton joints, no motion_tokenizer.mano_model_dir"
    how = (f"MCP generation, {decoding.fraction:.0%} of a chunk per pass" if cfg.model.objective == "mcp"
           else "next-token generation")
    heading = (f"{how}, on held-out {split} ({len(clips)} clips, {step}, ensemble {decoding.ensemble}, seed "
               f"{decoding.seed}; {skeleton}; PA-MPJPE after {procrustes} alignment)")
    markdown = format_table(table, heading) + "\n" + format_table(floor, "motion tokenizer reconstruction (floor)")
    if cfg.data.max_chunks > 1:
        markdown += (f"\nWindows of up to {cfg.data.max_chunks} chunks: a later chunk's LSP context is its own first "
                     "frame, a true observation that generating the first chunk did not have.\n")
    (out / "metrics.md").write_text(markdown)
    (out / "metrics.json").write_text(json.dumps(
        {"split": split, "ckpt": str(ckpt), "step": trained.step, "clips": len(clips), "joints": skeleton,
         "procrustes": procrustes, "decoding": dataclasses.asdict(decoding), "metrics": table,
         "tokenizer_floor": floor}, indent=2, default=float))
    save_predictions(clips, out / "predictions.npz")
    files = [out / "metrics.md", out / "metrics.json", out / "predictions.npz",
             plot_wrist_trajectories(clips, out / "wrist_trajectories.png", mano, limit=pictures),
             plot_hand_skeletons(clips, out / "hand_skeletons.png", mano, limit=pictures)]
    print(markdown)
    if track and cfg.tracking.enabled:
        log_evaluation(cfg, trained.mlflow_run_id, f"eval-motion-{split}-{step.replace(' ', '')}",
                       params={"split": split, "ckpt": str(ckpt), "clips": len(clips), "limit": limit,
                               "procrustes": procrustes,
                               **{f"decoding.{k}": v for k, v in dataclasses.asdict(decoding).items()}},
                       metrics={**flat_metrics(table, f"{split}_"), **flat_metrics(floor, f"{split}_floor_")},
                       files=files, step=trained.step)
    return MotionEvaluation(split=split, clips=clips, table=table, tokenizer_floor=floor, files=files)


def output_folder(path: Path, *, create: bool = True) -> Path:
    """``path``, created with its parents when missing (unless ``create`` is False: a check before any work); a
    ValueError naming the file when it, or a folder above it, is one (mkdir's traceback came after the whole run)."""
    blocker = next(folder for folder in (path, *path.parents) if folder.exists())  # the nearest existing one
    if not blocker.is_dir():
        raise ValueError(f"--out {path}: {blocker} is a file, not a folder: pass a folder (created when missing), "
                         "or leave --out out for the default under the checkpoint")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def save_predictions(clips: list[GeneratedClip], path: Path) -> None:
    """``<sample_id>/<hand>/{predicted,true,member_codes,true_codes}`` arrays, no pickle."""
    arrays = {f"{clip.sample_id}/{hand}/{name}": getattr(motion, name)
              for clip in clips for hand, motion in clip.hands.items()
              for name in ("predicted", "true", "member_codes", "true_codes")}
    np.savez_compressed(path, **arrays)


def log_evaluation(cfg, training_run_id: str | None, run_name: str, *, params: dict[str, Any],
                   metrics: dict[str, float], files: list[Path], step: int | None) -> str | None:
    """An MLflow run in the training run's experiment (the recipe's when the training run is not in the store),
    tagged with the training run's id and nested under it. A failing store costs a warning, not the results
    (they are on disk already). Returns the evaluation run's id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from jala_ds.train.tracking import JOB_TAG, tracking_uri

    try:
        mlflow.set_tracking_uri(tracking_uri(cfg.tracking))
        tags, experiment_id = {JOB_TAG: "eval"}, None
        if training_run_id:
            tags[EVAL_TAG] = training_run_id
            try:
                experiment_id = mlflow.get_run(training_run_id).info.experiment_id
                tags["mlflow.parentRunId"] = training_run_id
            except MlflowException:
                log.warning("training run %s is not in %s: logging to experiment %s", training_run_id,
                            mlflow.get_tracking_uri(), cfg.tracking.experiment)
        if experiment_id is None:
            experiment_id = mlflow.set_experiment(cfg.tracking.experiment).experiment_id
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            mlflow.log_params(params)
            mlflow.log_metrics(metrics, step=step or 0)
            for path in files:
                mlflow.log_artifact(str(path))
        print(f"logged to MLflow run {run.info.run_id} ({mlflow.get_tracking_uri()})")
        return run.info.run_id
    except Exception as err:  # noqa: BLE001  (any failure of the tracking backend; the files are written)
        log.warning("MLflow logging failed (%s): the results are in %s", str(err).splitlines()[0][:300],
                    files[0].parent)
        return None
