"""LeRobot v2.1 layout -> robot MDS: exact counts, action windows at episode ends, statistics, rejections, CLI."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jala_ds.cli import main
from jala_ds.data.lerobot_convert import convert_lerobot
from jala_ds.data.lerobot_format import LeRobotDataset, LeRobotFormatError
from jala_ds.data.lerobot_synth import CAMERA_KEYS, synthesize_lerobot
from jala_ds.data.robot_norm import NORM_STATS_FILE, NormStats
from jala_ds.data.robot_schema import RobotMeta, robot_sample
from jala_ds.motion.pose_corpus import open_mds

HORIZON = 5


def stored_samples(mds):
    dataset = open_mds(mds)  # no shared memory: nothing to register next to other test workers' loaders
    return [robot_sample(dataset[i]) for i in range(len(dataset))]


@pytest.fixture(scope="module")
def robot_dataset(tmp_path_factory):
    """4 episodes, 2 cameras as mp4, two episodes per chunk folder, converted with a 5-action horizon."""
    root = tmp_path_factory.mktemp("robot")
    src = synthesize_lerobot(root / "lerobot", episodes=4, cameras=2, seed=3, frame_size=32, chunks_size=2)
    report = convert_lerobot(src, root / "mds", action_horizon=HORIZON, frame_size=32)
    return src, root / "mds", report


def test_the_synthetic_dataset_follows_the_lerobot_layout(robot_dataset):
    src, _, _ = robot_dataset
    info = json.loads((src / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_episodes"] == 4 and info["chunks_size"] == 2
    assert (src / "data" / "chunk-001" / "episode_000003.parquet").is_file()
    assert (src / "videos" / "chunk-001" / CAMERA_KEYS[1] / "episode_000003.mp4").is_file()
    table = pq.read_table(src / "data" / "chunk-000" / "episode_000000.parquet")
    assert set(table.column_names) == {"observation.state", "action", "timestamp", "frame_index", "episode_index",
                                       "index", "task_index"}
    episodes = [json.loads(line) for line in (src / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert sum(e["length"] for e in episodes) == info["total_frames"]
    assert LeRobotDataset(src).cameras == list(CAMERA_KEYS)


def test_every_frame_becomes_one_record_with_its_action_window(robot_dataset):
    src, mds, report = robot_dataset
    dataset = LeRobotDataset(src)
    lengths = {e["episode_index"]: e["length"] for e in dataset.episodes}
    assert report["episodes_in"] == report["episodes_written"] == 4 and report["episodes_rejected"] == 0
    assert report["frames_in"] == report["frames_written"] == sum(lengths.values())
    samples = stored_samples(mds)
    assert len(samples) == sum(lengths.values())
    by_id = {s.sample_id: s for s in samples}
    for episode, length in lengths.items():
        table = dataset.episode_table(episode)
        for t in (0, length - HORIZON, length - 2, length - 1):
            sample = by_id[f"ep{episode}@{t}"]
            window = np.minimum(np.arange(t, t + HORIZON), length - 1)
            np.testing.assert_array_equal(sample.actions, table["action"][window])
            np.testing.assert_array_equal(sample.action_valid, np.arange(t, t + HORIZON) < length)
            np.testing.assert_array_equal(sample.state, table["observation.state"][t])
            assert sample.images.shape == (2, 32, 32, 3) and sample.images.dtype == np.uint8
            assert sample.instruction == dataset.tasks[int(table["task_index"][t])]
    assert by_id["ep0@0"].action_valid.all() and by_id[f"ep0@{lengths[0] - 1}"].action_valid.sum() == 1


def test_meta_and_statistics_are_saved_with_the_shards(robot_dataset):
    src, mds, _ = robot_dataset
    meta = RobotMeta.load(mds)
    assert (meta.state_dim, meta.action_dim, meta.action_horizon) == (8, 7, HORIZON)
    assert meta.cameras == list(CAMERA_KEYS) and meta.fps == 10.0
    stats = NormStats.load(mds / NORM_STATS_FILE)
    dataset = LeRobotDataset(src)
    tables = [dataset.episode_table(e["episode_index"]) for e in dataset.episodes]
    actions = np.concatenate([t["action"] for t in tables])
    assert stats.mode == "quantile"
    np.testing.assert_allclose(stats.action.mean, actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.action.q99, np.quantile(actions, 0.99, axis=0), rtol=1e-5, atol=1e-6)
    assert stats.state.dim == 8 and (stats.state.min <= stats.state.max).all()


def test_one_camera_stored_as_images_in_the_parquet_and_a_camera_subset(tmp_path):
    src = synthesize_lerobot(tmp_path / "png", episodes=2, cameras=2, frame_size=32, camera_storage="image")
    report = convert_lerobot(src, tmp_path / "mds", action_horizon=3, cameras=[CAMERA_KEYS[1]], frame_size=32,
                             norm_mode="meanstd")
    assert report["episodes_written"] == 2 and report["cameras"] == [CAMERA_KEYS[1]]
    sample = stored_samples(tmp_path / "mds")[0]
    assert sample.images.shape == (1, 32, 32, 3) and sample.actions.shape == (3, 7)
    assert NormStats.load(tmp_path / "mds" / NORM_STATS_FILE).mode == "meanstd"


def rewrite_column(path, key, change):
    table = pq.read_table(path)
    values = np.stack(table.column(key).to_pylist()).astype(np.float32)
    values = change(values)
    column = pa.array(list(values), pa.list_(pa.float32(), values.shape[1]))
    pq.write_table(table.set_column(table.column_names.index(key), key, column), path)


def test_bad_episodes_are_rejected_with_their_reasons_and_the_rest_converted(tmp_path):
    src = synthesize_lerobot(tmp_path / "lerobot", episodes=5, cameras=1, frame_size=32)
    dataset = LeRobotDataset(src)

    def with_nan(values):
        values[3, 2] = np.nan
        return values

    rewrite_column(dataset.episode_path(0), "action", with_nan)
    rewrite_column(dataset.episode_path(1), "observation.state", lambda v: v[:, :6])
    dataset.video_path(2, CAMERA_KEYS[0]).write_bytes(b"not an mp4")
    dataset.episode_path(3).unlink()
    report = convert_lerobot(src, tmp_path / "mds", action_horizon=4, frame_size=32)
    reasons = {r["episode_index"]: r["reason"] for r in report["rejections"]}
    assert reasons == {0: "nan", 1: "wrong_dims", 2: "unreadable_video", 3: "unreadable_data"}
    assert report["episodes_written"] == 1 and report["episodes_rejected"] == 4
    length = dataset.episodes[4]["length"]
    assert report["frames_written"] == length == len(stored_samples(tmp_path / "mds"))
    assert report["frames_in"] == report["frames_written"] + report["frames_rejected"]
    assert "first frame 3" in report["rejections"][0]["detail"]


def test_episodes_with_a_frame_index_gap_or_repeat_or_a_wrong_length_are_rejected(tmp_path):
    src = synthesize_lerobot(tmp_path / "lerobot", episodes=4, cameras=1, frame_size=32, camera_storage="image")
    dataset = LeRobotDataset(src)

    def set_frame_index(path, change):
        table = pq.read_table(path)
        frame_index = change(np.arange(len(table), dtype=np.int64))
        pq.write_table(table.set_column(table.column_names.index("frame_index"), "frame_index",
                                        pa.array(frame_index)), path)

    set_frame_index(dataset.episode_path(0), lambda f: np.where(f >= 5, f + 1, f))   # 0..4, 6..T
    set_frame_index(dataset.episode_path(1), lambda f: np.where(f >= 5, f - 1, f))   # 0..4, 4..T-2
    table = pq.read_table(dataset.episode_path(2))
    pq.write_table(table.slice(0, 3), dataset.episode_path(2))                      # episodes.jsonl still says T
    report = convert_lerobot(src, tmp_path / "mds", action_horizon=4, frame_size=32)
    reasons = {r["episode_index"]: r["reason"] for r in report["rejections"]}
    assert reasons == {0: "bad_frame_index", 1: "bad_frame_index", 2: "wrong_length"}
    assert "at frame 4" in report["rejections"][0]["detail"]
    assert report["frames_in"] == sum(e["length"] for e in dataset.episodes)
    assert {s.sample_id.split("@")[0] for s in stored_samples(tmp_path / "mds")} == {"ep3"}


@pytest.mark.parametrize("out", ["src", "src/mds", "src/data", "."])
def test_an_out_overlapping_src_is_refused_even_with_overwrite(tmp_path, out):
    src = synthesize_lerobot(tmp_path / "src", episodes=1, cameras=1, frame_size=32)
    files = sorted(p for p in src.rglob("*"))
    with pytest.raises(ValueError, match="overlaps --src.*outside --src"):
        convert_lerobot(src, tmp_path / out, action_horizon=4, frame_size=32, overwrite=True)
    assert sorted(p for p in src.rglob("*")) == files


def test_an_overwrite_that_fails_keeps_the_dataset_it_would_have_replaced(tmp_path):
    src = synthesize_lerobot(tmp_path / "src", episodes=2, cameras=1, frame_size=32)
    convert_lerobot(src, tmp_path / "out", action_horizon=4, frame_size=32)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    broken = synthesize_lerobot(tmp_path / "broken", episodes=2, cameras=1, frame_size=32, seed=1)
    for table in (broken / "data").rglob("*.parquet"):
        table.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="every episode of .* was rejected"):
        convert_lerobot(broken, tmp_path / "out", action_horizon=4, frame_size=32, overwrite=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out", "src"]
    report = convert_lerobot(src, tmp_path / "out", action_horizon=2, frame_size=32, overwrite=True)
    assert report["action_horizon"] == 2 and RobotMeta.load(tmp_path / "out").action_horizon == 2


@pytest.mark.parametrize("info_change, message", [
    (lambda info: [info], "not an object with a 'features' object"),
    (lambda info: {**info, "features": {**info["features"], "action": {"dtype": "float32"}}},
     "'action' has shape None"),
    (lambda info: {**info, "features": {**info["features"], "action": {"dtype": "float32", "shape": "7"}}},
     "'action' has shape '7'"),
    (lambda info: {**info, "fps": "ten"}, "fps 'ten'.*must be numbers"),
])
def test_a_malformed_info_json_is_one_clear_error(tmp_path, info_change, message):
    src = synthesize_lerobot(tmp_path / "lerobot", episodes=1, cameras=1, frame_size=32)
    info = json.loads((src / "meta" / "info.json").read_text())
    (src / "meta" / "info.json").write_text(json.dumps(info_change(info)))
    with pytest.raises(LeRobotFormatError, match=f"info.json.*{message}"):
        LeRobotDataset(src)


def test_an_episode_line_without_an_index_or_a_file_as_out_is_one_clear_error(tmp_path):
    src = synthesize_lerobot(tmp_path / "lerobot", episodes=1, cameras=1, frame_size=32)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        convert_lerobot(src, tmp_path / "file", action_horizon=4, frame_size=32)
    (src / "meta" / "episodes.jsonl").write_text('{"length": 3}\n')
    with pytest.raises(LeRobotFormatError, match="episodes.jsonl has a line without an integer episode_index"):
        LeRobotDataset(src)


def test_bad_folders_and_arguments_are_one_clear_error(tmp_path):
    with pytest.raises(LeRobotFormatError, match="info.json not found.*jala data synth --format lerobot"):
        convert_lerobot(tmp_path / "nothing", tmp_path / "out", action_horizon=4, frame_size=32)
    src = synthesize_lerobot(tmp_path / "lerobot", episodes=1, cameras=1, frame_size=32)
    with pytest.raises(ValueError, match="--cameras observation.images.top.*observation.images.image"):
        convert_lerobot(src, tmp_path / "out", action_horizon=4, cameras=["observation.images.top"], frame_size=32)
    with pytest.raises(ValueError, match="--horizon 0"):
        convert_lerobot(src, tmp_path / "out", action_horizon=0, frame_size=32)
    convert_lerobot(src, tmp_path / "out", action_horizon=4, frame_size=32)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_lerobot(src, tmp_path / "out", action_horizon=4, frame_size=32)
    info = json.loads((src / "meta" / "info.json").read_text())
    (src / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v3.0"}))
    with pytest.raises(LeRobotFormatError, match="v3.0.*v2.0 and v2.1"):
        LeRobotDataset(src)
    with pytest.raises(FileNotFoundError, match="robot_meta.json not found.*--format lerobot"):
        RobotMeta.load(tmp_path / "lerobot")


def test_synth_and_convert_from_the_command_line(tmp_path, capsys):
    src, mds = tmp_path / "lerobot", tmp_path / "mds"
    assert main(["data", "synth", "--format", "lerobot", "--out", str(src), "--episodes", "2", "--cameras", "1",
                 "--frame-size", "32"]) == 0
    assert main(["data", "convert", "--format", "lerobot", "--recipe", "posttrain_tiny_cpu", "--src", str(src),
                 "--out", str(mds), "--horizon", "3", "--cameras", CAMERA_KEYS[0], "data.frame_size=32"]) == 0
    assert "2 episodes" in capsys.readouterr().out
    assert RobotMeta.load(mds).action_horizon == 3 and (mds / NORM_STATS_FILE).is_file()
    assert main(["data", "synth", "--format", "lerobot", "--out", str(tmp_path / "x")]) == 2
    assert "--episodes" in capsys.readouterr().err
    assert main(["data", "convert", "--format", "lerobot", "--recipe", "posttrain_tiny_cpu", "--src",
                 str(tmp_path / "x"), "--out", str(mds)]) == 2
    assert "info.json not found" in capsys.readouterr().err
