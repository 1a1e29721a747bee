"""Normalisation statistics: round trips in both modes, constant dimensions, numpy and torch, save/load, bad files."""
import json

import numpy as np
import pytest
import torch

from jala_ds.data.robot_norm import NORM_STATS_FILE, FeatureStats, NormStats, compute_norm_stats


def robot_frames(n=500, seed=0):
    rng = np.random.default_rng(seed)
    states = rng.normal([0.0, 5.0, -2.0, 0.04], [1.0, 0.1, 3.0, 0.0], (n, 4)).astype(np.float32)  # last: constant
    actions = rng.uniform(-0.1, 0.1, (n, 3)).astype(np.float32)
    actions[:, 2] = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # a gripper command
    return states, actions


@pytest.mark.parametrize("mode", ["quantile", "meanstd"])
def test_actions_and_states_round_trip_in_numpy_and_torch(mode):
    states, actions = robot_frames()
    stats = compute_norm_stats(states, actions, mode)
    inside = actions[(actions >= stats.action.q01).all(1) & (actions <= stats.action.q99).all(1)]
    values = inside if mode == "quantile" else actions  # quantile mode clips what lies outside [q01, q99]
    for x in (values, torch.from_numpy(values)):
        back = stats.unnormalize_action(stats.normalize_action(x))
        assert type(back) is type(x)
        np.testing.assert_allclose(np.asarray(back), values, atol=1e-5)
    batched = values[:12].reshape(3, 4, 3)  # any leading dims
    np.testing.assert_allclose(stats.unnormalize_action(stats.normalize_action(batched)), batched, atol=1e-5)
    normalized = stats.normalize_state(states)
    if mode == "quantile":
        assert normalized.min() >= -1.0 and normalized.max() <= 1.0
    else:
        np.testing.assert_allclose(normalized[:, :3].mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(normalized[:, :3].std(0), 1.0, atol=1e-3)


@pytest.mark.parametrize("mode", ["quantile", "meanstd"])
def test_a_constant_dimension_round_trips_exactly(mode):
    states, actions = robot_frames()
    actions[:, 1] = 0.25
    stats = compute_norm_stats(states, actions, mode)
    assert stats.state.std[3] == 0.0 and stats.state.q01[3] == stats.state.q99[3]
    assert (stats.normalize_state(states)[:, 3] == 0.0).all()
    normalized = stats.normalize_action(actions)
    assert (normalized[:, 1] == 0.0).all()
    assert (stats.unnormalize_action(normalized)[:, 1] == np.float32(0.25)).all()
    torch_back = stats.unnormalize_action(torch.zeros(2, 3))
    assert (torch_back[:, 1] == 0.25).all()
    # a policy's output there is near its 0 target, not 0: the robot still gets the constant
    drifted = np.array([[0.0, 0.4, 0.0], [0.0, -0.9, 0.0]], np.float32)
    assert (stats.unnormalize_action(drifted)[:, 1] == np.float32(0.25)).all()
    assert (stats.unnormalize_action(torch.from_numpy(drifted))[:, 1] == 0.25).all()


def test_quantile_mode_maps_q01_q99_to_minus_one_one_and_clips():
    states, actions = robot_frames()
    stats = compute_norm_stats(states, actions, "quantile")
    edges = np.stack([stats.action.q01, stats.action.q99])
    np.testing.assert_allclose(stats.normalize_action(edges), [[-1.0] * 3, [1.0] * 3], atol=1e-6)
    far = stats.action.q99 + 10.0
    assert (stats.normalize_action(far[None]) == 1.0).all()
    # a sampler's overshoot comes back as the data's edge, never beyond it
    overshoot = np.array([[1.7, -2.5, 0.0]], np.float32)
    np.testing.assert_allclose(stats.unnormalize_action(overshoot)[0, :2], [stats.action.q99[0], stats.action.q01[1]],
                               rtol=1e-6)
    torch.testing.assert_close(stats.unnormalize_action(torch.from_numpy(overshoot)),
                               torch.from_numpy(stats.unnormalize_action(overshoot)))


def test_save_load_is_identical_and_bad_files_are_clear_errors(tmp_path):
    states, actions = robot_frames()
    stats = compute_norm_stats(states, actions, "quantile")
    path = tmp_path / NORM_STATS_FILE
    stats.save(path)
    loaded = NormStats.load(path)
    assert loaded.mode == "quantile"
    for name in ("mean", "std", "q01", "q99", "min", "max"):
        assert np.array_equal(getattr(loaded.action, name), getattr(stats.action, name))
        assert getattr(loaded.state, name).dtype == np.float32
    np.testing.assert_array_equal(loaded.normalize_action(actions), stats.normalize_action(actions))

    with pytest.raises(FileNotFoundError, match="norm_stats.json not found.*jala data convert"):
        NormStats.load(tmp_path / "missing" / NORM_STATS_FILE)
    tree = json.loads(path.read_text())
    for broken in ({**tree, "mode": "minmax"}, {k: v for k, v in tree.items() if k != "action"},
                   {**tree, "state": {**tree["state"], "q99": [1.0]}}, "not json"):
        path.write_text(broken if isinstance(broken, str) else json.dumps(broken))
        with pytest.raises(ValueError, match=f"{NORM_STATS_FILE}.*(unreadable|unequal).*jala data convert"):
            NormStats.load(path)
    with pytest.raises(ValueError, match="no frames"):
        compute_norm_stats(np.zeros((0, 4)), np.zeros((0, 3)), "quantile")


def test_feature_stats_are_float32_vectors():
    stats = FeatureStats.of(np.array([[1.0, 2.0], [3.0, 2.0]]))
    assert stats.dim == 2 and stats.mean.dtype == np.float32
    assert stats.mean.tolist() == [2.0, 2.0] and stats.std.tolist() == [1.0, 0.0]
