"""A synthetic corpus in the raw clip format, shaped like UniHand-Mix: the input of ``jala data convert``.

    jala data synth --out demo_out/raw --lab 24 --wild 16 --seed 0

Lab clips carry smooth MANO trajectories for one or two hands (wrist rotation and translation along
slow sinusoids, fingers curling and opening); wild clips move faster (the converter slows them down),
are mostly video-only, and about 10% carry noisy pseudo labels with a per-frame ``confidence`` whose
clip mean sometimes falls under the 0.65 threshold. Every clip has a real video (``.mp4`` through PyAV,
or a folder of ``.jpg`` for some lab clips) showing a coloured blob at each projected wrist (left red,
right blue) that shrinks as the fingers close. Lengths are skewed short; the three task types, several
sources and both one- and two-hand clips all occur. The same seed gives the same corpus.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from jala_ds.data.rot6d import matrix_to_rot6d, rotation_xyz

LAB_SOURCES = ("syn-hoi4d", "syn-oakink2", "syn-arctic", "syn-dexycb", "syn-taco", "syn-h2o", "syn-egodex")
WILD_SOURCE = "syn-ego4d"
TASKS = ("generation", "generation", "generation", "description", "continuation")
"""Task mix, cycled and shuffled so that every type occurs even in a tiny corpus."""
HAND_SETS = (("left", "right"), ("left", "right"), ("right",), ("left", "right"), ("left",))
FPS = 30
WILD_SPEEDUP = 2.0
"""Wild motion is this much faster than lab motion (what ``data.wild_slowdown`` compensates)."""
PSEUDO_SHARE = 0.1
OBJECTS = ("cup", "bottle", "sponge", "box", "lid", "spoon", "bowl", "towel")
VERBS = ("pick up", "push", "rotate", "lift", "wipe", "open", "put down", "slide")
HAND_COLOURS = {"left": (220, 60, 60), "right": (60, 90, 230)}
MAX_FRAME_SIZE = 1024


@dataclass(frozen=True)
class ClipPlan:
    clip_id: str
    subset: str
    source: str
    task: str
    hands: tuple[str, ...]
    frames: int
    as_jpeg_folder: bool
    pseudo_confidence: float | None
    """Clip-mean confidence of the pseudo labels (wild only); None when the clip is video-only or lab."""


def synthesize_corpus(out: str | Path, *, lab: int, wild: int, seed: int, frame_size: int = 64) -> Path:
    """Write ``lab`` + ``wild`` clips and ``manifest.jsonl`` under ``out``; return the manifest's path."""
    if lab < 0 or wild < 0 or lab + wild == 0:
        raise ValueError(f"--lab {lab} --wild {wild}: ask for at least one clip, and no negative counts")
    if frame_size < 16 or frame_size > MAX_FRAME_SIZE or frame_size % 2:
        raise ValueError(f"--frame-size {frame_size}: use an even size from 16 (the video codec needs it) to "
                         f"{MAX_FRAME_SIZE} pixels (a clip's frames are drawn in memory)")
    if seed < 0:
        raise ValueError(f"--seed {seed}: use a seed of 0 or more")
    out = Path(out)
    if (out / "manifest.jsonl").exists():   # its clips would mix with the new ones, under a new manifest
        raise FileExistsError(f"{out} already holds a synthetic corpus (manifest.jsonl): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for plan in plan_clips(rng, lab, wild):
        clip_rng = np.random.default_rng([seed, int(plan.clip_id.split("_")[1]), int(plan.subset == "wild")])
        lines.append(write_clip(out, plan, clip_rng, frame_size))
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def plan_clips(rng: np.random.Generator, lab: int, wild: int) -> list[ClipPlan]:
    plans = []
    for subset, count in (("lab", lab), ("wild", wild)):
        tasks = rng.permutation(np.resize(np.array(TASKS), count))
        hand_sets = [HAND_SETS[i] for i in rng.permutation(np.resize(np.arange(len(HAND_SETS)), count))]
        n_pseudo = max(1, round(PSEUDO_SHARE * count)) if subset == "wild" and count >= 5 else 0
        pseudo = set(rng.choice(count, n_pseudo, replace=False).tolist()) if n_pseudo else set()
        for i in range(count):
            if subset == "lab":
                # Skewed short: mostly one or two chunks plus a frame, a long tail, a few exactly 15 frames.
                frames = 15 if i % 12 == 11 else min(150, 16 + int(rng.exponential(25)))
                source = LAB_SOURCES[min(int(rng.exponential(2.0)), len(LAB_SOURCES) - 1)]
            else:
                frames = min(80, 9 + int(rng.exponential(14)))  # slowed 2x: 17 frames and up
                source = WILD_SOURCE
            confidence = None
            if i in pseudo:
                # Alternate above and below the 0.65 threshold so both outcomes occur.
                ranked = sorted(pseudo).index(i)
                confidence = float(rng.uniform(0.72, 0.95) if ranked % 2 == 0 else rng.uniform(0.4, 0.6))
            plans.append(ClipPlan(clip_id=f"{subset}_{i:05d}", subset=subset, source=source, task=str(tasks[i]),
                                  hands=hand_sets[i], frames=frames, as_jpeg_folder=subset == "lab" and i % 8 == 7,
                                  pseudo_confidence=confidence))
    return plans


def write_clip(out: Path, plan: ClipPlan, rng: np.random.Generator, frame_size: int) -> dict:
    """Render and write one clip's video (and poses), returning its manifest line."""
    speed = WILD_SPEEDUP if plan.subset == "wild" else 1.0
    trajectories = {hand: hand_trajectory(rng, plan.frames, hand, speed) for hand in plan.hands}
    frames = render_frames(rng, trajectories, plan.frames, frame_size, noisy=plan.subset == "wild")
    if plan.as_jpeg_folder:
        video = f"videos/{plan.clip_id}"
        write_jpeg_folder(out / video, frames)
    else:
        video = f"videos/{plan.clip_id}.mp4"
        write_mp4(out / video, frames, FPS)
    mano = None
    if plan.subset == "lab" or plan.pseudo_confidence is not None:
        mano = f"mano/{plan.clip_id}.npz"
        arrays = {hand: poses for hand, (poses, _) in trajectories.items()}
        if plan.pseudo_confidence is not None:
            arrays = {hand: pseudo_label(rng, traj) for hand, traj in trajectories.items()}
            noise = rng.normal(0.0, 0.03, plan.frames)
            arrays["confidence"] = np.clip(plan.pseudo_confidence + noise, 0.0, 1.0).astype(np.float32)
        (out / "mano").mkdir(exist_ok=True)
        np.savez(out / mano, **arrays)
    return {"clip_id": plan.clip_id, "video": video, "fps": FPS, "instruction": instruction(rng, plan, trajectories),
            "source": plan.source, "subset": plan.subset, "mano": mano, "task": plan.task}


def smooth_curve(rng: np.random.Generator, t: np.ndarray, amplitude: float, speed: float) -> np.ndarray:
    """Sum of two slow sinusoids with random frequency (0.15-0.5 Hz times ``speed``) and phase."""
    curve = np.zeros_like(t)
    for _ in range(2):
        freq = rng.uniform(0.15, 0.5) * speed
        curve += amplitude * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return curve


def hand_trajectory(rng: np.random.Generator, frames: int, hand: str, speed: float) -> tuple[np.ndarray, dict]:
    """Plausible MANO poses ``[frames, 99]`` for one hand, plus the angles they were built from."""
    t = np.arange(frames) / FPS
    side = -1.0 if hand == "left" else 1.0
    translation = np.stack([side * 0.12 + smooth_curve(rng, t, 0.08, speed),
                            0.05 + smooth_curve(rng, t, 0.06, speed),
                            0.65 + smooth_curve(rng, t, 0.08, speed)], axis=-1)
    base = rng.uniform(-0.4, 0.4, 3)
    wrist_angles = np.stack([base[k] + smooth_curve(rng, t, 0.35, speed) for k in range(3)], axis=-1)
    curl = 0.6 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * speed * t + rng.uniform(0, 2 * np.pi))
    weights, spread = rng.uniform(0.6, 1.2, 15), rng.uniform(-0.15, 0.15, 15)
    finger_angles = np.zeros((frames, 15, 3))
    finger_angles[..., 0] = curl[:, None] * weights  # flexion
    finger_angles[..., 2] = spread
    finger_angles[:, :3, 1] = curl[:, None] * 0.5  # the thumb (joints 0-2) also swings across the palm
    angles = {"wrist": wrist_angles, "translation": translation, "fingers": finger_angles, "curl": curl}
    return pose_array(angles), angles


def pose_array(angles: dict) -> np.ndarray:
    wrist = matrix_to_rot6d(rotation_xyz(angles["wrist"]))
    fingers = matrix_to_rot6d(rotation_xyz(angles["fingers"])).reshape(len(wrist), 90)
    return np.concatenate([wrist, angles["translation"], fingers], axis=-1).astype(np.float32)


def pseudo_label(rng: np.random.Generator, trajectory: tuple[np.ndarray, dict]) -> np.ndarray:
    """An estimator's view of the true poses: the same motion with per-frame angle and position noise."""
    _, angles = trajectory
    noisy = {"wrist": angles["wrist"] + rng.normal(0, 0.03, angles["wrist"].shape),
             "translation": angles["translation"] + rng.normal(0, 0.005, angles["translation"].shape),
             "fingers": angles["fingers"] + rng.normal(0, 0.05, angles["fingers"].shape)}
    return pose_array(noisy)


def render_frames(rng: np.random.Generator, trajectories: dict, frames: int, size: int, noisy: bool) -> np.ndarray:
    """``[frames, size, size, 3]`` uint8: a tinted background, a static object, one blob per projected wrist."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = np.asarray(rng.integers(90, 200, 3), np.float32) * (0.8 + 0.2 * yy[..., None] / size)
    x0, y0 = rng.integers(size // 4, size // 2, 2)
    background[y0:y0 + size // 5, x0:x0 + size // 4] = rng.integers(0, 255, 3)
    focal = 0.8 * size
    blobs = []
    for hand, (_, angles) in trajectories.items():
        x, y, z = angles["translation"].T
        radius = size * (0.05 + 0.04 * (1.2 - angles["curl"]) / 1.2) * 0.65 / z
        blobs.append((HAND_COLOURS[hand], size / 2 + focal * x / z, size / 2 + focal * y / z, radius))
    video = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):  # frame by frame: memory stays one frame deep at any size
        frame = background.copy()
        for colour, u, v, radius in blobs:
            frame[(xx - u[t]) ** 2 + (yy - v[t]) ** 2 <= radius[t] ** 2] = colour
        if noisy:  # in-the-wild footage is grainier than lab captures
            frame += rng.normal(0, 6, frame.shape).astype(np.float32)
        video[t] = np.clip(frame, 0, 255)
    return video


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        # One thread and the ultrafast preset keep the bytes identical for a given seed (slower presets
        # were seen to encode identical frames differently from run to run).
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "ultrafast", "threads": "1"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def write_jpeg_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(frames):
        Image.fromarray(array).save(folder / f"{i:06d}.jpg", quality=92)


def instruction(rng: np.random.Generator, plan: ClipPlan, trajectories: dict) -> str:
    obj, verb = OBJECTS[rng.integers(len(OBJECTS))], VERBS[rng.integers(len(VERBS))]
    who = "both hands" if len(plan.hands) == 2 else f"the {plan.hands[0]} hand"
    if plan.task == "generation":
        return f"{verb} the {obj} with {who}"
    if plan.task == "continuation":
        return f"keep going: {verb} the {obj} with {who}"
    # Description: what the first hand's wrist actually does, so the text matches the motion.
    _, angles = trajectories[plan.hands[0]]
    dx, dy = angles["translation"][-1, :2] - angles["translation"][0, :2]
    direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    grip = "closes" if angles["curl"][-1] > angles["curl"][0] else "opens"
    return f"the {plan.hands[0]} hand moves {direction} and {grip} near the {obj}"
