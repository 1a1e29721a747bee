"""What a converted corpus holds: counts per subset (and per held-out split), source and task, labelled vs video-only,
a few samples; and for a corpus still being built (or stopped), how many of its pieces are done.

    jala data inspect demo_out/mds --samples 3
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from jala_ds.data.convert import DATASETS
from jala_ds.data.mds_pieces import build_progress, read_json
from jala_ds.data.schema import HANDS, labelled_hands
from jala_ds.motion.pose_corpus import open_mds


def summarize(mds_dir: str | Path, samples: int = 3) -> dict[str, Any]:
    """Counts for every subset under ``mds_dir`` plus the first ``samples`` records of each, described."""
    root = Path(mds_dir)
    subsets = [s for s in DATASETS if (root / s / "index.json").is_file()]
    progress = build_progress(root)
    if not subsets and progress is None:
        raise FileNotFoundError(f"{root} holds no MDS dataset (lab/index.json, wild/index.json): "
                                "pass the --out folder of `jala data convert`")
    summary: dict[str, Any] = {"mds_dir": str(root), "subsets": {}, "samples": []}
    if progress is not None:
        summary["build"] = progress
    for subset in subsets:
        read_json(root / subset / "index.json")   # streaming's own read of a damaged index names no file
        dataset = open_mds(root / subset)  # each shard checked against its hash before it is read
        counts: dict[str, Any] = {"clips": len(dataset), "labeled": 0, "video_only": 0, "chunks": 0,
                                  "by_source": Counter(), "by_task": Counter(), "by_hands": Counter()}
        for index in range(len(dataset)):
            record = dataset[index]
            description = describe(record)
            counts["labeled" if record["labeled"] else "video_only"] += 1
            counts["chunks"] += description["chunks"]
            counts["by_source"][record["source"]] += 1
            counts["by_task"][record["task"]] += 1
            counts["by_hands"][description["hands"]] += 1
            if index < samples:
                summary["samples"].append(description)
        summary["subsets"][subset] = {k: dict(v) if isinstance(v, Counter) else v for k, v in counts.items()}
    report = root / "report.json"
    if report.is_file():
        converted = read_json(report)
        summary["conversion"] = {k: converted[k] for k in ("clips_in", "written", "rejected", "rejected_by_reason",
                                                           "pseudo_labels_dropped")}
    return summary


def describe(record: dict[str, Any]) -> dict[str, Any]:
    present = [HANDS[h] for h in labelled_hands(record)]
    return {"clip_id": record["clip_id"], "subset": record["subset"], "source": record["source"],
            "task": record["task"], "instruction": record["instruction"], "labeled": bool(record["labeled"]),
            "hands": "+".join(present) or "unknown", "chunks": len(record["frame_index"]) - 1,
            "time_scale": float(record["time_scale"])}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"corpus {summary['mds_dir']}"]
    if "build" in summary:
        build = summary["build"]
        state = "complete" if build["done"] == build["pieces"] else \
            "unfinished: its datasets appear once every piece is done; rerun it with --resume if it stopped"
        lines.append(f"  {build['build']}: {build['done']} of {build['pieces']} pieces done ({state})")
    for subset, counts in summary["subsets"].items():
        lines.append(f"  {subset}: {counts['clips']} clips ({counts['labeled']} labelled, {counts['video_only']} "
                     f"video-only), {counts['chunks']} chunks")
        for key in ("by_source", "by_task", "by_hands"):
            cells = ", ".join(f"{name} {n}" for name, n in sorted(counts[key].items()))
            lines.append(f"    {key.replace('_', ' ')}: {cells}")
    if "conversion" in summary:
        conv = summary["conversion"]
        lines.append(f"  conversion: {conv['clips_in']} in = {conv['written']} written + {conv['rejected']} rejected "
                     f"{dict(conv['rejected_by_reason'])}; pseudo labels dropped: {conv['pseudo_labels_dropped']}")
    for sample in summary["samples"]:
        lines.append(f"  - {sample['clip_id']} [{sample['subset']}/{sample['source']}/{sample['task']}] "
                     f"{'labelled' if sample['labeled'] else 'video-only'}, hands {sample['hands']}, "
                     f"chunks {sample['chunks']}, slowed x{sample['time_scale']:g}: "
                     f"{sample['instruction']!r}")
    return "\n".join(lines)
