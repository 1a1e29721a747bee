"""``jala eval latents``: the latent-space picture of the paper's Fig. 4, and a number for how well it aligns.

    result = latent_space("demo_out/run", "demo_out/mds", limit=32, out_dir="demo_out/eval/latents")

For up to ``limit`` generation-task clips of each subset under ``data`` (any folder with ``lab/`` and/or ``wild/``
MDS datasets: the training streams, or a corpus' ``heldout/``), one forward of each clip's first window with every
motion token ``[MASK]`` gives each chunk's predictive embeddings h (pooled to the M latent segments, as the
alignment loss pools them) and LAP's M latent actions z. Every subset is seen the same way: a training document
would show a labelled clip part of its own true codes (and a description its motion in words), and the wild
clips, mostly unlabelled, nothing. Every (chunk, latent) vector is scaled to unit length
(the alignment is a cosine) and both spaces are projected together onto their first two principal components,
coloured by subset, one marker per space.

The alignment number: the mean cosine between paired vectors (h and z of the same chunk and latent) against the
mean cosine of shuffled pairs (h of one chunk, z of another chunk, same latent). Aligned spaces have a paired
cosine well above the shuffled one; the gap is what the alignment loss has taught, not just a shared direction.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from jala_ds.data.schema import SUBSETS
from jala_ds.eval.motion_plots import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

SUBSET_COLOURS = {"lab": "tab:blue", "wild": "tab:orange"}
SPACE_MARKERS = {"h": "o", "z": "^"}


@dataclass
class LatentSpace:
    predictive: dict[str, torch.Tensor]
    """Subset -> pooled predictive embeddings ``[chunks, M, d]``."""
    latent_actions: dict[str, torch.Tensor]
    """Subset -> LAP latent actions ``[chunks, M, d]``."""
    alignment: dict[str, float]
    """``paired_cosine``, ``shuffled_cosine``, ``gap`` over every subset, and the same per subset."""
    files: list[Path]


def read_subsets(data: str | Path, limit: int) -> dict[str, list[Mapping]]:
    """Up to ``limit`` generation-task records of each subset found under ``data``, in stored order."""
    from jala_ds.motion.pose_corpus import open_mds

    root = Path(data)
    found = {subset: open_mds(root / subset) for subset in SUBSETS
             if (root / subset / "index.json").is_file()}
    if not found:
        raise FileNotFoundError(f"{root} holds no lab/ or wild/ MDS dataset: pass a `jala data convert` output "
                                "folder (training streams) or its heldout/ folder")
    generation = {subset: (record for record in map(dataset.__getitem__, range(len(dataset)))
                           if record["task"] == "generation") for subset, dataset in found.items()}
    records = {subset: list(itertools.islice(records, limit)) for subset, records in generation.items()}
    if not any(records.values()):
        raise ValueError(f"{root}: no generation-task clip in {' or '.join(f'{subset}/' for subset in found)} (only "
                         "description or continuation clips), so no window to read h and z from: pass a "
                         "`jala data convert` output folder, or its heldout/ folder, that holds generation clips")
    return records


def alignment(predictive: torch.Tensor, latent_actions: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Mean cosine of paired ``[C, M, d]`` vectors against pairs whose chunks are shuffled (each chunk's h
    against another chunk's z: a random permutation with no fixed point)."""
    paired = F.cosine_similarity(predictive, latent_actions, dim=-1).mean()
    chunks = predictive.shape[0]
    if chunks < 2:
        return {"paired_cosine": float(paired), "shuffled_cosine": float("nan"), "gap": float("nan")}
    generator = torch.Generator().manual_seed(seed)
    shift = int(torch.randint(1, chunks, (1,), generator=generator))
    order = torch.randperm(chunks, generator=generator)
    other = torch.empty_like(order)
    other[order] = order.roll(shift)  # a cycle through a random order: nobody keeps its own z
    shuffled = F.cosine_similarity(predictive, latent_actions[other], dim=-1).mean()
    return {"paired_cosine": float(paired), "shuffled_cosine": float(shuffled), "gap": float(paired - shuffled)}


@torch.no_grad()
def collect(trained, records: list[Mapping], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled h and z ``[chunks, M, d]`` (fp32, CPU) of every chunk of ``records``' all-``[MASK]`` documents."""
    from jala_ds.data.collate import collate
    from jala_ds.data.example import ExampleBuilder
    from jala_ds.data.motion_tokens import build_motion_tokenizer
    from jala_ds.data.sequence import SequenceBuilder
    from jala_ds.model.backbone import image_token_count
    from jala_ds.model.losses import segment_mean
    from jala_ds.train.loop import to_device

    cfg, model = trained.cfg, trained.model
    sequences = SequenceBuilder(cfg.data, objective=cfg.model.objective, tokenizer=trained.tokenizer,
                                vocab=trained.vocab, motion_tokenizer=build_motion_tokenizer(cfg.motion_tokenizer),
                                n_image_tokens=image_token_count(cfg.model), seed=cfg.train.seed)
    examples = ExampleBuilder(sequences, image_size=cfg.model.image_size,
                              encoder_image_size=cfg.model.visual_encoder_image_size)
    dtype = next(model.parameters()).dtype
    hs, zs = [], []
    for first in range(0, len(records), batch_size):
        chunk = [examples.with_pixels(record, sequences.build_masked(record))
                 for record in records[first:first + batch_size]]
        batch = collate(chunk, pack=False, max_tokens=max(len(e.document) for e in chunk), vocab=trained.vocab)
        batch = to_device(batch, trained.device, dtype)
        features = model.encode_frames(batch)
        _, predictive = model.hidden_states(batch, features, stop_at_align_layer=True)
        latent_actions = model.lap(features, batch["chunk_hand"])
        hs.append(segment_mean(predictive.float(), latent_actions.shape[1]).cpu())
        zs.append(latent_actions.float().cpu())
    return torch.cat(hs), torch.cat(zs)


def plot_latent_space(predictive: dict[str, torch.Tensor], latent_actions: dict[str, torch.Tensor],
                      path: str | Path, title: str) -> Path:
    """Both spaces' unit vectors on their joint first two principal components, coloured by subset."""
    points = {(subset, space): F.normalize(tensors[subset].flatten(0, 1), dim=-1)
              for space, tensors in (("h", predictive), ("z", latent_actions)) for subset in tensors}
    everything = torch.cat(list(points.values())).double()
    centre = everything.mean(dim=0)
    _, _, v = torch.linalg.svd(everything - centre, full_matrices=False)
    axes = v[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    for (subset, space), vectors in points.items():
        xy = ((vectors.double() - centre) @ axes).numpy()
        ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.6, color=SUBSET_COLOURS[subset], marker=SPACE_MARKERS[space],
                   label=f"{subset} {'predictive h' if space == 'h' else 'latent action z'}")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def latent_space(ckpt: str | Path, data: str | Path, *, limit: int = 32, out_dir: str | Path | None = None,
                 batch_size: int = 8, seed: int = 0, overrides: list[str] | tuple[str, ...] = (),
                 track: bool = True) -> LatentSpace:
    """The whole ``jala eval latents``: load, collect h and z, measure, plot, write, log."""
    from jala_ds.eval.motion_eval import log_evaluation, output_folder
    from jala_ds.eval.trained_model import load_trained_model

    if out_dir:  # a wrong --out is named before anything is read
        output_folder(Path(out_dir), create=False)
    records = read_subsets(data, limit)
    trained = load_trained_model(ckpt, overrides)
    if not trained.cfg.model.align:
        raise ValueError(f"{ckpt} was trained with model.align=false: it has no LAP, so no latent actions to plot")
    collected = {subset: collect(trained, subset_records, batch_size) for subset, subset_records in records.items()
                 if subset_records}
    predictive = {subset: h for subset, (h, _) in collected.items()}
    latent_actions = {subset: z for subset, (_, z) in collected.items()}
    measured = alignment(torch.cat(list(predictive.values())), torch.cat(list(latent_actions.values())), seed)
    for subset in collected:
        measured.update({f"{subset}_{k}": v for k, v in alignment(predictive[subset], latent_actions[subset],
                                                                   seed).items()})
    out = output_folder(Path(out_dir) if out_dir else Path(trained.source) / "eval" / "latents")
    step = f"step {trained.step}" if trained.step is not None else "export"
    title = (f"predictive embeddings h vs latent actions z ({step})\npaired cosine "
             f"{measured['paired_cosine']:.3f}, shuffled {measured['shuffled_cosine']:.3f}")
    (out / "alignment.json").write_text(json.dumps(
        {"ckpt": str(ckpt), "step": trained.step, "chunks": {s: len(h) for s, h in predictive.items()},
         **measured}, indent=2))
    files = [out / "alignment.json", plot_latent_space(predictive, latent_actions, out / "latent_space.png", title)]
    print(f"{title}\nwrote " + ", ".join(str(path) for path in files))
    if track and trained.cfg.tracking.enabled:
        finite = {k: v for k, v in measured.items() if np.isfinite(v)}
        log_evaluation(trained.cfg, trained.mlflow_run_id, f"eval-latents-{step.replace(' ', '')}",
                       params={"ckpt": str(ckpt), "data": str(data), "limit": limit}, metrics=finite,
                       files=files, step=trained.step)
    return LatentSpace(predictive=predictive, latent_actions=latent_actions, alignment=measured, files=files)
