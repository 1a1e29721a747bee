"""Raw clips -> MDS: the synthetic corpus's shape, the round trip, determinism, and every rejection reason."""
import json
import shutil

import av
import numpy as np
import pytest
from streaming import LocalDataset
from two_ranks import run_two_ranks

from jala_ds.config import load_config
from jala_ds.data import convert
from jala_ds.data.convert import convert_corpus
from jala_ds.data.frames import decode_stored_frames
from jala_ds.data.inspect_corpus import format_summary, summarize
from jala_ds.data.loader import build_loader
from jala_ds.data.raw_clips import REJECTION_REASONS, convert_one
from jala_ds.data.rot6d import ROT6D_SLICES
from jala_ds.data.schema import HANDS, hand_poses
from jala_ds.data.synth import synthesize_corpus
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer


def manifest(raw):
    return [json.loads(line) for line in (raw / "manifest.jsonl").read_text().splitlines()]


def records(mds, subset):
    dataset = LocalDataset(local=str(mds / subset))
    return {record["clip_id"]: record for record in (dataset[i] for i in range(len(dataset)))}


def video_frames(path):
    if path.is_dir():
        from PIL import Image
        return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(path.iterdir())]
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_synthetic_corpus_has_the_shape_of_unihand_mix(tiny_corpus):
    clips = manifest(tiny_corpus.raw)
    lab = [c for c in clips if c["subset"] == "lab"]
    wild = [c for c in clips if c["subset"] == "wild"]
    assert (len(lab), len(wild)) == (24, 20)
    assert {c["task"] for c in lab} == {c["task"] for c in wild} == {"generation", "description", "continuation"}
    assert len({c["source"] for c in lab}) >= 3 and {c["source"] for c in wild} == {"syn-ego4d"}
    assert all(c["mano"] for c in lab) and any(c["video"].endswith(".mp4") for c in lab)
    assert any(not c["video"].endswith(".mp4") for c in lab), "some lab clips are folders of JPEG frames"
    hand_sets = set()
    for clip in lab:
        with np.load(tiny_corpus.raw / clip["mano"]) as npz:
            hands = tuple(h for h in HANDS if h in npz.files)
            poses = npz[hands[0]]
        hand_sets.add(hands)
        assert poses.shape[0] >= 15 and poses.shape[1] == 99 and np.isfinite(poses).all()
        rows = poses[:, ROT6D_SLICES[0]].reshape(-1, 2, 3)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=-1), 1.0, atol=1e-5)  # valid rotations
        assert np.abs(np.diff(poses, axis=0)).max() < 0.3, "trajectories are smooth"
    assert {("left",), ("right",), ("left", "right")} <= hand_sets
    pseudo = [c for c in wild if c["mano"]]
    assert 1 <= len(pseudo) <= 4
    means = [np.load(tiny_corpus.raw / c["mano"])["confidence"].mean() for c in pseudo]
    assert min(means) < 0.65 < max(means), "pseudo labels both above and below the confidence threshold"


def test_synthesis_is_deterministic_per_seed(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthesize_corpus(tmp_path / name, lab=4, wild=3, seed=seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a/manifest.jsonl").read_bytes() != (tmp_path / "c/manifest.jsonl").read_bytes()


def test_round_trip_raw_to_mds_reproduces_the_lab_source(tiny_corpus):
    assert tiny_corpus.report["clips_in"] == tiny_corpus.report["written"] == 44
    stored = records(tiny_corpus.mds, "lab")
    for clip in (c for c in manifest(tiny_corpus.raw) if c["subset"] == "lab"):
        record = stored[clip["clip_id"]]
        assert (record["instruction"], record["task"], record["source"]) == (clip["instruction"], clip["task"], clip["source"])
        assert record["time_scale"] == 1.0 and record["labeled"] == 1
        with np.load(tiny_corpus.raw / clip["mano"]) as npz:
            for hand in HANDS:
                expected = npz[hand] if hand in npz.files else np.zeros((0, 99), np.float32)
                np.testing.assert_array_equal(hand_poses(record, hand), expected)
            length = len(npz[next(h for h in HANDS if h in npz.files)])
        chunks = length // 15
        np.testing.assert_array_equal(record["frame_index"], np.minimum(np.arange(chunks + 1) * 15, length - 1))
        source = video_frames(tiny_corpus.raw / clip["video"])
        decoded = decode_stored_frames(record, list(range(chunks + 1))).permute(0, 2, 3, 1).numpy()
        for k, index in enumerate(record["frame_index"]):
            assert np.abs(decoded[k].astype(int) - source[index].astype(int)).mean() < 4.0


def test_wild_clips_are_slowed_and_pseudo_labels_filtered(tiny_corpus):
    stored = records(tiny_corpus.mds, "wild")
    clips = [c for c in manifest(tiny_corpus.raw) if c["subset"] == "wild"]
    kept = dropped = 0
    for clip in clips:
        record = stored[clip["clip_id"]]
        assert record["time_scale"] == 2.0
        length = len(video_frames(tiny_corpus.raw / clip["video"]))
        slowed = 2 * (length - 1) + 1
        assert record["frame_index"][-1] == min(slowed - 1, (slowed // 15) * 15)
        if not clip["mano"]:
            assert record["labeled"] == 0 and all(len(hand_poses(record, h)) == 0 for h in HANDS)
            continue
        with np.load(tiny_corpus.raw / clip["mano"]) as npz:
            if npz["confidence"].mean() < 0.65:
                dropped += 1
                assert record["labeled"] == 0 and all(len(hand_poses(record, h)) == 0 for h in HANDS)
                continue
            kept += 1
            assert record["labeled"] == 1
            for hand in (h for h in HANDS if h in npz.files):
                poses = hand_poses(record, hand)
                assert poses.shape == (slowed, 99)
                # Even slowed frames are the original frames; odd ones are interpolated valid rotations.
                np.testing.assert_allclose(poses[::2], npz[hand], atol=1e-5)
                rows = poses[1::2, ROT6D_SLICES[3]].reshape(-1, 2, 3)
                np.testing.assert_allclose(np.linalg.norm(rows, axis=-1), 1.0, atol=1e-5)
                np.testing.assert_allclose((rows[:, 0] * rows[:, 1]).sum(-1), 0.0, atol=1e-5)
    assert kept >= 1 and dropped >= 1
    assert tiny_corpus.report["pseudo_labels_dropped"] == dropped


def test_parallel_conversion_writes_identical_shards(tiny_corpus, tmp_path):
    data = load_config("tiny_cpu").data
    report = convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, workers=2, shard_bytes=1 << 16)
    assert report["written"] == tiny_corpus.report["written"]
    for subset in ("lab", "wild"):
        index = (tiny_corpus.mds / subset / "index.json").read_text()
        assert (tmp_path / "mds" / subset / "index.json").read_text() == index
        assert len(json.loads(index)["shards"]) >= 2


TWO_RANKS_CONVERT = """
import json, os, sys
from pathlib import Path
from jala_ds.config import load_config
from jala_ds.data.convert import convert_corpus

report = convert_corpus(Path(sys.argv[1]), Path(sys.argv[2]) / "mds", load_config("tiny_cpu").data, workers=1,
                        shard_bytes=1 << 16, piece_clips=8, resume=True)
(Path(sys.argv[2]) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))
"""


@pytest.mark.slow
def test_two_ranks_resume_into_what_one_process_converts(tiny_corpus, tmp_path, monkeypatch):
    # One process converts in pieces of 8 manifest entries and dies in its third piece; two ranks (torchrun-style
    # processes, gloo) resume, sharing out the 4 pieces left, and rank 0 merges the indexes and the reports. The
    # manifest ends with a bad line and a second copy of its first clip, which the last piece must reject as a
    # duplicate of a clip that the first piece wrote before the stop.
    raw = tmp_path / "raw"
    shutil.copytree(tiny_corpus.raw, raw)
    first = (raw / "manifest.jsonl").read_text().splitlines()[0]
    with open(raw / "manifest.jsonl", "a") as file:
        file.write("{not json\n" + first + "\n")
    single = convert_corpus(raw, tmp_path / "single", load_config("tiny_cpu").data, shard_bytes=1 << 16,
                            piece_clips=8)
    assert single["rejected_by_reason"] == {"bad_manifest": 1, "duplicate_clip_id": 1}
    decoded = []

    def dies_at_the_20th(task):
        decoded.append(task)
        if len(decoded) == 20:
            raise RuntimeError("node lost")
        return convert_one(task)

    monkeypatch.setattr(convert, "convert_one", dies_at_the_20th)
    with pytest.raises(RuntimeError, match="node lost"):
        convert_corpus(raw, tmp_path / "mds", load_config("tiny_cpu").data, shard_bytes=1 << 16, piece_clips=8)
    kept = {path: path.stat().st_mtime_ns for path in (tmp_path / "mds/lab").glob("piece0000[01]/*")}
    assert len(kept) >= 4   # the two finished pieces' indexes and shards
    reports = run_two_ranks(TWO_RANKS_CONVERT, [str(raw)], tmp_path)
    assert {path: path.stat().st_mtime_ns for path in kept} == kept   # not written again
    assert reports[0] == reports[1] == single
    for subset in ("lab", "wild"):
        # The same shards, named alike, with the same hashes: the datasets do not depend on the number of ranks.
        index = (tmp_path / "single" / subset / "index.json").read_text()
        assert (tmp_path / "mds" / subset / "index.json").read_text() == index
        one, two = LocalDataset(local=str(tmp_path / "single" / subset)), LocalDataset(local=str(tmp_path / "mds" / subset))
        assert len(one) == len(two) > 0
        for i in range(len(one)):
            assert one[i].keys() == two[i].keys()
            for column in one[i]:
                assert np.array_equal(np.asarray(one[i][column]), np.asarray(two[i][column])), (subset, i, column)
    pieces = sorted(path.name for path in (tmp_path / "mds" / "pieces").glob("piece*.json"))
    assert pieces == [f"piece{k:05d}.json" for k in range(6)]   # 46 entries in pieces of 8
    # The training loader reads the merged datasets like any other: every clip once per epoch.
    cfg = load_config("tiny_cpu", [f"data.mds_dir={tmp_path / 'mds'}"])
    tok = byte_level_tokenizer()
    loader = build_loader(cfg, tok, add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part), 4, rank=0,
                          world_size=1)
    seen = sorted(sample.split("@")[0] for batch in loader for sample in batch["sample_ids"])
    assert seen == sorted([*records(tmp_path / "single", "lab"), *records(tmp_path / "single", "wild")])


def test_a_stopped_conversion_resumes_where_it_stopped(tiny_corpus, tmp_path, monkeypatch):
    # A conversion in pieces of 10 entries dies while decoding its 25th clip; rerun with resume, it decodes only
    # the clips of the pieces it had not finished and ends with the datasets and report of a run that never
    # stopped.
    data = load_config("tiny_cpu").data
    whole = convert_corpus(tiny_corpus.raw, tmp_path / "whole", data, shard_bytes=1 << 16, piece_clips=10)
    decoded = []

    def dies_at_the_25th(task):
        decoded.append(task[1]["clip_id"])
        if len(decoded) == 25:
            raise RuntimeError("node lost")
        return convert_one(task)

    monkeypatch.setattr(convert, "convert_one", dies_at_the_25th)
    with pytest.raises(RuntimeError, match="node lost"):
        convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, shard_bytes=1 << 16, piece_clips=10)
    assert sorted(p.name for p in (tmp_path / "mds/pieces").glob("piece*.json")) == ["piece00000.json",
                                                                                     "piece00001.json"]
    partial = summarize(tmp_path / "mds")   # what `jala data inspect` sees of a stopped (or running) build
    assert partial["build"] == {"build": "convert", "pieces": 5, "done": 2} and partial["subsets"] == {}
    assert "convert: 2 of 5 pieces done (unfinished" in format_summary(partial)
    with pytest.raises(FileExistsError, match="pass --resume to finish the build that wrote it"):
        convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, shard_bytes=1 << 16, piece_clips=10)
    with pytest.raises(ValueError, match="begun with piece_clips=10, this run has 8"):
        convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, shard_bytes=1 << 16, piece_clips=8, resume=True)
    decoded.clear()
    report = convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, shard_bytes=1 << 16, piece_clips=10,
                            resume=True)
    ids = [entry["clip_id"] for entry in manifest(tiny_corpus.raw)]
    assert decoded == ids[20:]
    assert report == whole
    for subset in ("lab", "wild"):
        assert (tmp_path / "mds" / subset / "index.json").read_text() == \
            (tmp_path / "whole" / subset / "index.json").read_text()
        assert records(tmp_path / "mds", subset).keys() == records(tmp_path / "whole", subset).keys()
    assert not list((tmp_path / "mds").rglob("*.partial"))
    assert summarize(tmp_path / "mds", samples=0)["build"] == {"build": "convert", "pieces": 5, "done": 5}


def write_bad_clips(raw):
    """Append one clip per rejection reason (two for bad_manifest) built from the first good clip."""
    good = manifest(raw)[0]
    with np.load(raw / good["mano"]) as npz:
        poses = {h: npz[h] for h in HANDS if h in npz.files}
    length = len(next(iter(poses.values())))
    bad_poses = {
        "bad_pose_dims": {"left": np.zeros((length, 98), np.float32)},
        "nonfinite_pose": {h: np.where(np.arange(99) == 5, np.nan, p) for h, p in poses.items()},
        "pose_frame_mismatch": {h: p[:-1] for h, p in poses.items()},
    }
    lines = ["{not json", json.dumps({"clip_id": "no_fields", "video": good["video"]}), json.dumps(good)]
    for reason, arrays in bad_poses.items():
        np.savez(raw / f"mano/{reason}.npz", **arrays)
        lines.append(json.dumps({**good, "clip_id": reason, "mano": f"mano/{reason}.npz"}))
    (raw / "mano/unreadable_poses.npz").write_bytes(b"garbage")
    (raw / "videos/unreadable_video.mp4").write_bytes(b"not an mp4 at all" * 20)
    (raw / "videos/empty_video").mkdir()
    short = video_frames(raw / good["video"])[:10]
    from jala_ds.data.synth import write_mp4
    write_mp4(raw / "videos/too_short.mp4", np.stack(short), 30)
    np.savez(raw / "mano/too_short.npz", **{h: p[:10] for h, p in poses.items()})
    lines += [
        json.dumps({**good, "clip_id": "empty_instruction", "instruction": "   "}),
        json.dumps({**good, "clip_id": "lab_without_poses", "mano": None}),
        json.dumps({**good, "clip_id": "unreadable_poses", "mano": "mano/unreadable_poses.npz"}),
        json.dumps({**good, "clip_id": "unreadable_video", "video": "videos/unreadable_video.mp4"}),
        json.dumps({**good, "clip_id": "empty_video", "video": "videos/empty_video"}),
        json.dumps({**good, "clip_id": "too_short", "video": "videos/too_short.mp4", "mano": "mano/too_short.npz"}),
    ]
    with open(raw / "manifest.jsonl", "a") as file:
        file.write("".join(line + "\n" for line in lines))


def test_every_rejection_reason_is_counted(tmp_path):
    raw = tmp_path / "raw"
    synthesize_corpus(raw, lab=3, wild=0, seed=1)
    write_bad_clips(raw)
    report = convert_corpus(raw, tmp_path / "mds", load_config("tiny_cpu").data)
    assert report["rejected_by_reason"] == {reason: 2 if reason == "bad_manifest" else 1 for reason in REJECTION_REASONS}
    assert report["clips_in"] == report["written"] + report["rejected"] == 3 + len(REJECTION_REASONS) + 1
    assert json.loads((tmp_path / "mds/report.json").read_text()) == report
    assert {r["clip_id"] for r in report["rejections"]} >= set(REJECTION_REASONS) - {"bad_manifest", "duplicate_clip_id"}
    assert len(records(tmp_path / "mds", "lab")) == 3


def test_existing_output_is_kept_unless_overwrite(tmp_path, tiny_corpus):
    data = load_config("tiny_cpu").data
    shutil.copytree(tiny_corpus.mds, tmp_path / "mds")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_corpus(tiny_corpus.raw, tmp_path / "mds", data)
    with pytest.raises(ValueError, match="--resume .* and --overwrite .*: pass one"):
        convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, resume=True, overwrite=True)
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        convert_corpus(tmp_path / "nowhere", tmp_path / "out", data)
    report = convert_corpus(tiny_corpus.raw, tmp_path / "mds", data, overwrite=True)
    assert report["written"] == tiny_corpus.report["written"]


def test_wrongly_typed_fields_and_damaged_pose_files_are_rejected_not_written(tmp_path):
    """A null or a list used to be stored as the text "None" or "['a']" (two null clip ids both as "None"), NaN,
    Infinity and true passed as an fps, and a null path, a .npy, a cut .npz or text poses stopped the conversion."""
    raw = tmp_path / "raw"
    synthesize_corpus(raw, lab=1, wild=0, seed=1)
    good = manifest(raw)[0]
    np.save(raw / "mano/one_array.npy", np.zeros((20, 99), np.float32))
    (raw / "mano/cut.npz").write_bytes((raw / good["mano"]).read_bytes()[:300])
    np.savez(raw / "mano/text.npz", left=np.full((20, 99), "a"))
    bad = [{"clip_id": None}, {"clip_id": None}, {"instruction": None}, {"source": ["a"]}, {"video": None},
           {"mano": 3}, {"fps": float("nan")}, {"fps": float("inf")}, {"fps": True}]
    lines = [{**good, "clip_id": f"bad_{k}", **fields} for k, fields in enumerate(bad)]
    lines += [{**good, "clip_id": name, "mano": f"mano/{name}.npz" if name != "one_array" else "mano/one_array.npy"}
              for name in ("one_array", "cut", "text")]
    with open(raw / "manifest.jsonl", "a") as file:
        file.write("".join(json.dumps(line) + "\n" for line in lines))
    report = convert_corpus(raw, tmp_path / "mds", load_config("tiny_cpu").data)
    assert report["written"] == 1 and report["rejected_by_reason"] == {"bad_manifest": 9, "unreadable_poses": 2,
                                                                       "bad_pose_dims": 1}
    assert list(records(tmp_path / "mds", "lab")) == [good["clip_id"]]


def test_manifest_lines_end_at_newlines_only_and_are_utf8(tmp_path):
    """Instructions holding U+2028 or U+0085 (left raw by json.dumps(ensure_ascii=False)) cut their line in two, and
    a byte that is not UTF-8 stopped the conversion with no file named."""
    raw = tmp_path / "raw"
    synthesize_corpus(raw, lab=3, wild=0, seed=1)
    clips = manifest(raw)
    clips[0]["instruction"] = "открой крышку\u2028then the lid 🥤"
    clips[1]["instruction"] = "naïve\x85 wipe"
    text = "".join(json.dumps(clip, ensure_ascii=False) + "\n" for clip in clips).encode()
    (raw / "manifest.jsonl").write_bytes(b"\xef\xbb\xbf" + text + b'{"clip_id": "\xff"}\n')   # a BOM, a bad byte
    report = convert_corpus(raw, tmp_path / "mds", load_config("tiny_cpu").data)
    assert report["clips_in"] == 4 and report["written"] == 3 and report["rejected_by_reason"] == {"bad_manifest": 1}
    stored = records(tmp_path / "mds", "lab")
    assert [stored[clip["clip_id"]]["instruction"] for clip in clips[:2]] == [clips[0]["instruction"],
                                                                              clips[1]["instruction"]]


def test_image_folder_frames_go_by_number_and_a_missing_one_is_named(tmp_path):
    """Sorted as text, frame_10.jpg came before frame_2.jpg; a missing frame shifted the rest of a video-only clip."""
    from jala_ds.data.video_frames import VideoError, frame_files

    for k in range(12):
        (tmp_path / f"frame_{k}.jpg").touch()
    assert [p.name for p in frame_files(tmp_path)] == [f"frame_{k}.jpg" for k in range(12)]
    (tmp_path / "frame_5.jpg").unlink()
    with pytest.raises(VideoError, match="frame_6.jpg: frame 6 follows frame 4"):
        frame_files(tmp_path)


def test_an_out_that_would_overwrite_the_source_or_is_a_file_is_refused(tmp_path):
    """--out the parent of a raw corpus named lab/ then --overwrite deleted the raw clips."""
    data = load_config("tiny_cpu").data
    synthesize_corpus(tmp_path / "lab", lab=1, wild=0, seed=1)
    for out in (tmp_path, tmp_path / "lab"):
        with pytest.raises(ValueError, match=f"--src {tmp_path / 'lab'} is in .*--overwrite deletes"):
            convert_corpus(tmp_path / "lab", out, data, overwrite=True)
    assert (tmp_path / "lab/manifest.jsonl").is_file() and len(list((tmp_path / "lab/videos").iterdir())) == 1
    convert_corpus(tmp_path / "lab", tmp_path / "lab/mds", data)   # beside the raw clips is fine
    (tmp_path / "file").touch()
    with pytest.raises(FileExistsError, match="--out .*file is a file"):
        convert_corpus(tmp_path / "lab", tmp_path / "file", data)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/manifest.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="manifest.jsonl holds no clip"):
        convert_corpus(tmp_path / "empty", tmp_path / "empty_out", data)
    assert not (tmp_path / "empty_out").exists()
