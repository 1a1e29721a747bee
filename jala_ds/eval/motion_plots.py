"""Pictures of generated motion: predicted vs true wrist trajectories in 3D, and the hand skeleton at the last
frame of the generated window, one panel per clip (PNG, matplotlib's Agg backend: no display needed).

Joints come from the same forward kinematics the metrics use (``jala_ds.motion.kinematics``), in centimetres.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import torch  # noqa: E402

from jala_ds.eval.mcp_decoding import GeneratedClip  # noqa: E402
from jala_ds.motion.kinematics import PARENTS, HandKinematics  # noqa: E402

CM_PER_M = 100.0
HAND_COLOURS = {"left": "tab:blue", "right": "tab:red"}


def joints_cm(poses, hand: str, mano_model_dir: str | None):
    """``[frames, 99]`` -> joints ``[frames, 21, 3]`` in cm (numpy)."""
    return (HandKinematics(hand, mano_model_dir)(torch.from_numpy(poses).double()) * CM_PER_M).numpy()


def _panels(count: int, title: str):
    cols = min(count, 4)
    rows = -(-count // cols)
    fig = plt.figure(figsize=(4.2 * cols, 4.0 * rows))
    fig.suptitle(title)
    return fig, [fig.add_subplot(rows, cols, i + 1, projection="3d") for i in range(count)]


def _label(ax, clip: GeneratedClip) -> None:
    ax.set_title(clip.sample_id, fontsize=8)
    ax.set_xlabel("x (cm)", fontsize=7)
    ax.set_ylabel("y (cm)", fontsize=7)
    ax.set_zlabel("z (cm)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper left")


def plot_wrist_trajectories(clips: list[GeneratedClip], path: str | Path, mano_model_dir: str | None = None, *,
                            limit: int = 4) -> Path:
    """Each of the first ``limit`` clips: every hand's wrist path, true (solid, o = start) vs predicted (dashed)."""
    shown = clips[:limit]
    fig, axes = _panels(max(1, len(shown)), "wrist trajectories: true (solid) vs predicted (dashed)")
    for ax, clip in zip(axes, shown):
        for hand, motion in clip.hands.items():
            colour = HAND_COLOURS[hand]
            true = joints_cm(motion.true, hand, mano_model_dir)[:, 0]
            pred = joints_cm(motion.predicted, hand, mano_model_dir)[:, 0]
            ax.plot(*true.T, color=colour, label=f"{hand} true")
            ax.plot(*pred.T, color=colour, linestyle="--", label=f"{hand} predicted")
            ax.scatter(*true[0], color=colour, marker="o", s=12)
        _label(ax, clip)
    return save_figure(fig, path)


def plot_hand_skeletons(clips: list[GeneratedClip], path: str | Path, mano_model_dir: str | None = None, *,
                        limit: int = 4) -> Path:
    """Each of the first ``limit`` clips: the 21-joint skeleton of every hand at the window's last frame, true
    (solid) vs predicted (dashed)."""
    shown = clips[:limit]
    fig, axes = _panels(max(1, len(shown)), "hand skeleton at the last generated frame: true (solid) vs predicted (dashed)")
    for ax, clip in zip(axes, shown):
        for hand, motion in clip.hands.items():
            colour = HAND_COLOURS[hand]
            for poses, style, name in ((motion.true, "-", "true"), (motion.predicted, "--", "predicted")):
                joints = joints_cm(poses[-1:], hand, mano_model_dir)[0]
                for joint, parent in enumerate(PARENTS):
                    if parent >= 0:
                        ax.plot(*joints[[parent, joint]].T, color=colour, linestyle=style, linewidth=1.2,
                                label=f"{hand} {name}" if joint == 1 else None)
                ax.scatter(*joints.T, color=colour, s=4)
        _label(ax, clip)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
