"""`python -m benchmarks.vision_traffic`: each part of a micro-step counted as it runs (the frozen frame encoder
forward only, the vision tower forward and backward), priced at each card's bandwidth, written as a table."""
import pytest
import torch

from benchmarks import lm_traffic, vision_traffic
from jala_ds.bench.cards import CARDS


def test_the_frozen_frame_encoder_runs_no_backward_and_the_trained_tower_does():
    frozen = vision_traffic.frame_encoder_census("tiny", 4, 28, torch.float32)
    tower = vision_traffic.vision_tower_census("tiny", 2, 56, torch.float32)
    assert frozen.calls and not [op for op in frozen.calls if op.endswith("_backward")]
    assert {"convolution_backward", "native_layer_norm_backward", "gelu_backward"} <= tower.calls.keys()
    # Twice the frames: the same kernels, each moving more bytes (activations double, weights do not).
    double = vision_traffic.frame_encoder_census("tiny", 8, 28, torch.float32)
    assert double.calls == frozen.calls
    assert sum(frozen.bytes.values()) < sum(double.bytes.values()) < 2 * sum(frozen.bytes.values())


def test_every_part_gets_a_row_priced_at_each_cards_bandwidth(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    md, rows = vision_traffic.run(arch="tiny", images=2, frames=4, tokens=48, dtype="fp32",
                                  out_dir=tmp_path / "results")
    assert md.is_file() and "## The encoders' costliest operators" in md.read_text()
    assert [row["part"].split(" (")[0] for row in rows] == ["language model", "language model", "vision tower",
                                                           "frame encoder"]
    eager = lm_traffic.census("tiny", 48, torch.float32, fused=False)
    assert rows[0]["operator calls"] == sum(eager.calls.values())
    for row in rows:
        assert row["matmul GB"] > 0 and row["attention GB"] > 0 and row["other GB"] > 0
        for card in vision_traffic.PRICED_CARDS:
            assert row[f"other ms at {card} bandwidth"] == pytest.approx(row["other GB"] / CARDS[card].hbm_tb_s)
