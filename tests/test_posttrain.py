"""Post-training: the policy model's trainable set and batch contract (1 process), the preflight's refusals, the
policy server's array encoding, and the whole path on 2 ranks: a tiny JALA pretrained and exported, then
``jala posttrain`` (deepspeed launcher, ZeRO-3, gloo, CPU) on a synthetic LeRobot dataset, ``jala export``, and
``JalaPolicy`` answering through the HTTP server."""
from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from jala_jobs import JALA, deepspeed_launcher, run, torchrun
from transformers import InternVLForConditionalGeneration

from jala_ds.cli import main as jala
from jala_ds.config import ConfigError, load_config
from jala_ds.data.robot_norm import NORM_STATS_FILE, NormStats
from jala_ds.data.robot_schema import ROBOT_META_FILE, RobotSample
from jala_ds.eval.policy import JalaPolicy, ObservationError, PolicyLoadError
from jala_ds.eval.policy_server import PolicyClient, decode_array, encode_array, make_server
from jala_ds.train.posttrain import check_posttrain

RECIPE = "posttrain_tiny_cpu"
HORIZON = 8  # posttrain_tiny_cpu's action_head.action_horizon


@pytest.fixture(scope="module")
def robot_mds(tmp_path_factory) -> Path:
    """4 synthetic episodes of the toy arm (2 cameras, 100 frames) in the LeRobot layout, converted to MDS."""
    from jala_ds.data.lerobot_convert import convert_lerobot
    from jala_ds.data.lerobot_synth import synthesize_lerobot

    root = tmp_path_factory.mktemp("robot")
    synthesize_lerobot(root / "lerobot", episodes=4, cameras=2, seed=0)
    convert_lerobot(root / "lerobot", root / "mds", action_horizon=HORIZON, frame_size=64)
    return root / "mds"


def live_observation(batch: int, seed: int = 0) -> dict:
    """Camera frames of a size the dataset never had (the policy resizes), raw states, one instruction each."""
    rng = np.random.default_rng(seed)
    return {"images": {"observation.images.image": rng.integers(0, 256, (batch, 48, 80, 3), dtype=np.uint8),
                       "observation.images.wrist_image": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)},
            "state": rng.normal(size=(batch, 8)).astype(np.float32),
            "instruction": [f"pick up the red cube {i}" for i in range(batch)]}


def test_gradients_reach_only_the_trainable_parts_and_sampling_has_the_chunk_shape(robot_mds):
    from jala_ds.data.robot_loader import robot_batch
    from jala_ds.model.backbone import image_token_count
    from jala_ds.model.policy_model import build_policy_model
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    cfg = load_config(RECIPE, [f"robot.mds_dir={robot_mds}"])
    tokenizer = load_text_tokenizer(None)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    torch.manual_seed(0)
    model = build_policy_model(cfg, vocab, init=None)
    assert model.lap is None and model.ema_pairs() == []
    norm = NormStats.load(robot_mds / NORM_STATS_FILE)
    rng = np.random.default_rng(0)
    samples = [RobotSample(images=rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
                           state=rng.normal(size=8).astype(np.float32),
                           actions=rng.normal(size=(HORIZON, 7)).astype(np.float32),
                           action_valid=np.arange(HORIZON) < HORIZON - i, instruction="lift the cube")
               for i in range(3)]
    batch = robot_batch(samples, cfg, tokenizer, vocab, image_token_count(cfg.model), norm)

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # The DiT's zero-initialised gates block every gradient upstream of them at step 0: one step opens them.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=False)
        out = model(batch)
        out.loss.backward()
        optimizer.step()
    assert out.predictive.shape == (3, cfg.motion_tokenizer.tokens_per_chunk, 64)
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == trainable  # every trainable parameter learns; nothing else has a gradient
    align_layer = cfg.model.align_layer
    lm = "backbone.model.language_model."
    assert {n for n in trainable if n.startswith("action_head.")} == {
        n for n, _ in model.named_parameters() if n.startswith("action_head.")}
    assert any(n.startswith(f"{lm}layers.{align_layer - 1}.") for n in trainable)
    assert f"{lm}embed_tokens.weight" in trainable
    frozen_prefixes = ("backbone.model.vision_tower.", "backbone.model.multi_modal_projector.", "lsp.",
                       "visual_encoder.", "backbone.lm_head.", f"{lm}norm.", f"{lm}layers.{align_layer}.")
    assert not [n for n in trainable if n.startswith(frozen_prefixes)]

    # Conditioning stops at the alignment layer; the full forward computes the same embeddings, and the
    # language model keeps all its layers for everyone else.
    lm_config = model.backbone.model.language_model.config
    layers = lm_config.num_hidden_layers
    assert layers > cfg.model.align_layer
    with torch.no_grad():
        _, full = model.hidden_states(batch, model.encode_frames(batch))
        assert torch.equal(model.condition(batch), full)
    assert lm_config.num_hidden_layers == layers

    actions = model.predict_actions(batch, steps=3, generator=torch.Generator().manual_seed(0))
    again = model.predict_actions(batch, steps=3, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (3, HORIZON, 7) and torch.equal(actions, again)


def test_the_trainer_moves_the_action_targets_unrounded_and_the_inputs_in_the_compute_dtype():
    from jala_ds.train.loop import to_device

    actions = torch.full((2, HORIZON, 7), 1 + 2 ** -10)   # between two bf16 values
    batch = {"actions": actions, "state": torch.ones(2, 8), "images": torch.zeros(2, 3, dtype=torch.uint8)}
    moved = to_device(batch, torch.device("cpu"), torch.bfloat16)
    assert moved["actions"].dtype == torch.float32 and torch.equal(moved["actions"], actions)
    assert moved["state"].dtype == torch.bfloat16 and moved["images"].dtype == torch.uint8


def test_trainable_parts_are_checked():
    with pytest.raises(ConfigError, match="posttrain.trainable: unknown part"):
        load_config(RECIPE, ["posttrain.trainable=[language_model, vision, action_head]"])
    with pytest.raises(ConfigError, match="must include action_head"):
        load_config(RECIPE, ["posttrain.trainable=[language_model]"])
    assert load_config(RECIPE, ["posttrain.trainable=[vision_tower, lsp, action_head]"]).posttrain.trainable


def test_preflight_refuses_data_without_statistics_or_with_other_dims(robot_mds, tmp_path):
    stripped = tmp_path / "no_stats"
    shutil.copytree(robot_mds, stripped)
    (stripped / NORM_STATS_FILE).unlink()
    with pytest.raises(ConfigError, match=f"robot.mds_dir: .*{NORM_STATS_FILE} not found: re-run `jala data convert"):
        check_posttrain(RECIPE, [f"robot.mds_dir={stripped}"], init=None)
    with pytest.raises(ConfigError, match="action_head.action_dim: 6 but .* set action_head.action_dim=7"):
        check_posttrain(RECIPE, [f"robot.mds_dir={robot_mds}", "action_head.action_dim=6"], init=None)
    with pytest.raises(ConfigError, match="posttrain.init: .* is neither a `jala export` folder"):
        check_posttrain(RECIPE, [f"robot.mds_dir={robot_mds}"], init=str(tmp_path))



def test_init_from_a_run_refuses_a_backbone_folder_other_than_the_runs(tmp_path):
    """A run's checkpoint has every weight but not the text tokenizer (model.pretrained gives it). With the
    recipe's model.pretrained=null a run pretrained from InternVL3-2B would get the byte-level tokenizer padded to
    the same 151,674 rows: the weights would load and every instruction become other ids."""
    from jala_ds.train.posttrain import resolve_init

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_4")
    load_config("tiny_cpu", [f"model.pretrained={tmp_path / 'vlm'}"]).dump(run / "config.yaml")
    cfg = load_config(RECIPE, [f"posttrain.init={run}"])
    with pytest.raises(ConfigError, match=f"model.pretrained=None but {run} was pretrained from "
                                          f"'{tmp_path / 'vlm'}'.*set model.pretrained='{tmp_path / 'vlm'}'"):
        resolve_init(cfg)
    resolve_init(load_config(RECIPE, [f"posttrain.init={run}", f"model.pretrained={tmp_path / 'vlm'}"]))



def test_init_from_a_run_with_a_tied_lm_head_loads_every_weight(tmp_path):
    """A backbone whose LM head is its embedding (tie_word_embeddings, as small InternVL3s ship) is one parameter
    under two names: the run's state dict has both, and neither is 'unexpected'."""
    from jala_ds.model.backbone import backbone_config
    from jala_ds.model.build import build_model
    from jala_ds.model.policy_model import build_policy_model
    from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer, load_text_tokenizer

    tok = byte_level_tokenizer()
    vlm_cfg = backbone_config("tiny", 56, len(tok), tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    vlm_cfg.tie_word_embeddings = vlm_cfg.text_config.tie_word_embeddings = True
    InternVLForConditionalGeneration(vlm_cfg).save_pretrained(tmp_path / "vlm")
    tok.save_pretrained(tmp_path / "vlm")
    run = tmp_path / "run"
    (run / "checkpoints" / "step_1").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_1")
    cfg = load_config("tiny_cpu", [f"model.pretrained={tmp_path / 'vlm'}"])
    cfg.dump(run / "config.yaml")
    vocab = add_motion_vocab(load_text_tokenizer(cfg.model.pretrained), cfg.motion_tokenizer.vocab_per_part)
    torch.manual_seed(1)
    pretrained = build_model(cfg, vocab)
    assert pretrained.backbone.lm_head.weight is pretrained.backbone.get_input_embeddings().weight
    torch.save({"module": pretrained.state_dict()}, run / "checkpoints" / "step_1" / "mp_rank_00_model_states.pt")
    torch.manual_seed(2)
    policy = build_policy_model(load_config(RECIPE, [f"model.pretrained={tmp_path / 'vlm'}"]), vocab, init=run)
    expected = pretrained.state_dict()
    for name, value in policy.state_dict().items():
        if not name.startswith("action_head."):
            assert torch.equal(value, expected[name]), name


def test_preflight_says_when_post_training_starts_without_a_pretrained_jala(robot_mds, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    check_posttrain(RECIPE, [f"robot.mds_dir={robot_mds}", "train.global_batch_size=2", f"train.out_dir={tmp_path}"], init=None)
    assert "no --init (posttrain.init): starting from random weights, without JALA pretraining" in \
        capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")   # once per job, from rank 0
    check_posttrain(RECIPE, [f"robot.mds_dir={robot_mds}", "train.global_batch_size=2", f"train.out_dir={tmp_path}"], init=None)
    assert capsys.readouterr().err == ""


def test_arrays_cross_the_wire_exactly_and_bad_ones_are_named():
    for array in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.linspace(-1, 1, 6, dtype=np.float32)):
        back = decode_array(json.loads(json.dumps(encode_array(array))), "x")
        assert back.dtype == array.dtype and np.array_equal(back, array)
    good = encode_array(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ObservationError, match="state: dtype 'object' is not accepted"):
        decode_array({**good, "dtype": "object"}, "state")
    with pytest.raises(ObservationError, match=r"state: 16 bytes do not make a float32 array of shape \[3, 2\]"):
        decode_array({**good, "shape": [3, 2]}, "state")
    with pytest.raises(ValueError, match="cannot send a object array"):
        encode_array(np.array([{}], dtype=object))
    # each of these was an HTTP 500 carrying a Python exception, not a 400 naming the field
    with pytest.raises(ObservationError, match=r"state: dtype \['x'\] is not accepted"):
        decode_array({**good, "dtype": ["x"]}, "state")
    with pytest.raises(ObservationError, match=r"state: shape must be a list of non-negative integers, got \[True"):
        decode_array({**good, "shape": [True, 4]}, "state")
    # 2**40 * 2**40 elements wrap to 0 in int64: empty data passed the byte count, then reshape failed
    with pytest.raises(ObservationError, match="state: 0 bytes do not make a float32 array of shape"):
        decode_array({**good, "shape": [2**40, 2**40], "data": ""}, "state")


def test_the_server_answers_malformed_requests_with_400_and_stays_up():
    """A stub policy with the real observation checks behind the real handler (no model: fast)."""
    import urllib.error
    import urllib.request

    from jala_ds.eval.policy import PolicySchema

    policy = JalaPolicy.__new__(JalaPolicy)
    policy.cfg = load_config(RECIPE)
    policy.schema = PolicySchema(cameras=["cam"], state_dim=8, action_dim=7, action_horizon=HORIZON)
    policy.predict = lambda observation: np.zeros((len(policy.samples(observation)[0]), HORIZON, 7), np.float32)
    server = make_server(policy, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(body: bytes, **headers: str) -> tuple[int, str]:
        request = urllib.request.Request(f"{url}/predict", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, ""
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())["error"]

    good = {"images": {"cam": encode_array(np.zeros((1, 8, 8, 3), np.uint8))},
            "state": encode_array(np.zeros((1, 8), np.float32)), "instruction": ["go"]}
    try:
        assert post(json.dumps(good).encode()) == (200, "")
        code, error = post(b"{}", **{"Content-Length": "abc"})
        assert code == 400 and "Content-Length header (got 'abc')" in error
        empty = {**good, "images": {"cam": encode_array(np.zeros((1, 0, 8, 3), np.uint8))}}
        code, error = post(json.dumps(empty).encode())
        assert code == 400 and error.startswith("images['cam'] must be uint8 RGB of shape [1, h, w, 3]")
        nested = {**good, "state": encode_array(np.zeros((1, 1, 8), np.float32))}
        assert post(json.dumps(nested).encode()) == (400, "'state' must be numbers of shape [B, 8] (or [8] "
                                                          "unbatched), got float32 [1, 1, 8]")   # as sent
        assert post(json.dumps(good).encode()) == (200, "")
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pretrained(tiny_corpus, tmp_path_factory) -> Path:
    """A pretrained tiny JALA, exported, as `make demo` leaves it (a few steps: the weights only have to be JALA's)."""
    tmp_path = tmp_path_factory.mktemp("pretrained")
    run([JALA, "train", "--recipe", "tiny_cpu", f"data.mds_dir={tiny_corpus.mds}",
         f"train.out_dir={tmp_path / 'pretrain'}", "train.max_steps=2", "train.global_batch_size=2",
         "tracking.enabled=false"], tmp_path)
    run([JALA, "export", "--run", str(tmp_path / "pretrain"), "--out", str(tmp_path / "pretrained")], tmp_path)
    return tmp_path / "pretrained"


def posttrain_on_two_ranks(launcher: list[str], pretrained: Path, robot_mds: Path, out: Path,
                           *overrides: str) -> None:
    run([*launcher, JALA, "posttrain", "--recipe", RECIPE, "--init", str(pretrained), f"robot.mds_dir={robot_mds}",
         f"train.out_dir={out}", *overrides], out.parent)


@pytest.mark.slow
def test_gathering_by_block_posttrains_like_gathering_by_module(pretrained, robot_mds, tmp_path):
    """The frozen vision tower and the unread layers above align_layer are the cases DeepSpeed's per-block
    gradient reduction can miss (``jala_ds/train/zero_leaves.py``); both runs must end on the same weights."""
    from jala_ds.train.checkpoint_layout import latest_checkpoint
    from jala_ds.train.export import merged_state_dict

    steps = ["train.max_steps=3", "tracking.enabled=false"]
    posttrain_on_two_ranks(torchrun(29672), pretrained, robot_mds, tmp_path / "by_block", *steps)
    posttrain_on_two_ranks(torchrun(29673), pretrained, robot_mds, tmp_path / "by_module", *steps,
                           "train.zero3_gather_by_block=false")
    by_block, by_module = (merged_state_dict(latest_checkpoint(tmp_path / run)) for run in ("by_block", "by_module"))
    assert by_block.keys() == by_module.keys()
    # gradient branches summed in another order (tests/test_train_end_to_end.py): equal to float rounding only
    drift = {name: float((by_block[name] - value).norm() / value.norm().clamp_min(1e-12))
             for name, value in by_module.items()}
    assert max(drift.values()) < 1e-4, sorted(drift.items(), key=lambda item: -item[1])[:5]


@pytest.mark.slow
def test_posttrain_on_two_ranks_exports_a_policy_that_answers_through_the_server(pretrained, robot_mds, tmp_path,
                                                                                  capsys):
    from mlflow import MlflowClient

    from jala_ds.train.checkpoint_layout import latest_checkpoint

    steps = 30
    posttrain_on_two_ranks(deepspeed_launcher(29671), pretrained, robot_mds, tmp_path / "posttrain",
                           f"train.max_steps={steps}", "train.save_every=15", "train.log_every=5")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("jala-tiny-posttrain").experiment_id])
    losses = [m.value for m in sorted(client.get_metric_history(mlflow_run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == steps // 5 and np.mean(losses[-2:]) < 0.85 * losses[0], losses

    checkpoint = latest_checkpoint(tmp_path / "posttrain")
    assert checkpoint.name == f"step_{steps:08d}"
    for name in (NORM_STATS_FILE, ROBOT_META_FILE):
        assert (checkpoint / name).read_bytes() == (robot_mds / name).read_bytes()

    export = tmp_path / "policy"
    run([JALA, "export", "--run", str(tmp_path / "posttrain"), "--out", str(export), "--dtype", "fp32"],
        tmp_path)
    policy = JalaPolicy.from_checkpoint(export, device="cpu")
    server = make_server(policy, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = PolicyClient(f"http://127.0.0.1:{server.server_address[1]}")
        health = client.health()
        assert health["cameras"] == ["observation.images.image", "observation.images.wrist_image"]
        assert (health["state_dim"], health["action_dim"], health["action_horizon"]) == (8, 7, HORIZON)
        actions = client.predict(live_observation(3))
        one = live_observation(1)
        single = client.predict({"images": {camera: frames[0] for camera, frames in one["images"].items()},
                                 "state": one["state"][0], "instruction": one["instruction"][0]})
        with pytest.raises(ObservationError, match=r"'state' must be numbers of shape \[B, 8\]"):
            client.predict({**live_observation(2), "state": np.zeros((2, 5), dtype=np.float32)})
        with pytest.raises(ObservationError, match="'images' must map every camera"):
            client.predict({**live_observation(2), "images": {"observation.images.image": np.zeros((2, 8, 8, 3),
                                                                                                 np.uint8)}})
        with pytest.raises(ObservationError, match=r"'state' holds no sample \(shape \[0, S\]\)"):
            client.predict({**live_observation(1), "state": np.zeros((0, 8), dtype=np.float32)})
        busy = server.server_address[1]   # a second server on the same port: one line, not a traceback
        capsys.readouterr()
        assert jala(["serve", "--ckpt", str(export), "--port", str(busy), "--device", "cpu"]) == 2
        assert f"jala serve: --host 127.0.0.1 --port {busy}: " in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()
    stats = policy.norm.action
    span = stats.max - stats.min
    assert actions.shape == (3, HORIZON, 7) and actions.dtype == np.float32 and single.shape == (HORIZON, 7)
    assert np.isfinite(actions).all()
    assert ((actions >= stats.min - span) & (actions <= stats.max + span)).all()  # robot units, not [-1, 1]

    broken = tmp_path / "policy_without_stats"
    shutil.copytree(export, broken)
    (broken / NORM_STATS_FILE).unlink()
    with pytest.raises(PolicyLoadError, match=f"has no {NORM_STATS_FILE}.*copy {NORM_STATS_FILE}"):
        JalaPolicy.from_checkpoint(broken, device="cpu")
    other = NormStats.load(export / NORM_STATS_FILE)
    other = dataclasses.replace(other, state=dataclasses.replace(other.state, **{
        field: getattr(other.state, field)[:5] for field in ("mean", "std", "q01", "q99", "min", "max")}))
    other.save(broken / NORM_STATS_FILE)
    with pytest.raises(PolicyLoadError, match=r"state/action dims \(5, 7\) but the action head was trained for"):
        JalaPolicy.from_checkpoint(broken, device="cpu")
