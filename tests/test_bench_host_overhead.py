"""The host-overhead proxy (``benchmarks/host_overhead.py``): DeepSpeed's size knobs scaled with the widths. Its
measurement is ``jala bench throughput``'s (``tests/test_bench_throughput.py``) run on another recipe shape."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.host_overhead import SIZE_KEYS, SIZE_SCALE, scaled_ds_config

ROOT = Path(__file__).resolve().parents[1]


def test_size_knobs_shrink_with_the_widths_and_the_rest_is_the_shipped_config(tmp_path):
    shipped = json.loads((ROOT / "ds_configs/zero3_bf16.json").read_text())
    override = scaled_ds_config(str(ROOT / "ds_configs/zero3_bf16.json"), tmp_path, "scaled",
                                memory_efficient_linear=True)
    assert override == f"train.ds_config={tmp_path / 'scaled.json'}"
    scaled = json.loads((tmp_path / "scaled.json").read_text())
    zero, shipped_zero = scaled.pop("zero_optimization"), shipped.pop("zero_optimization")
    assert scaled == shipped
    for key, value in shipped_zero.items():
        expected = value // SIZE_SCALE if key in SIZE_KEYS else value
        assert zero[key] == (True if key == "memory_efficient_linear" else expected), key
    assert zero["stage3_param_persistence_threshold"] == 100  # norms and biases resident, matrices partitioned


def test_the_narrow_arch_keeps_every_depth_of_the_full_recipe():
    from jala_ds.bench.dims import published_encoder_config
    from jala_ds.config import load_config
    from jala_ds.model.backbone import backbone_config
    from jala_ds.model.visual_encoder import random_encoder_config

    full, narrow = (backbone_config(arch, 448, 1000, 999) for arch in ("internvl3_2b", "internvl3_2b_narrow"))
    for part in ("text_config", "vision_config"):
        assert getattr(narrow, part).num_hidden_layers == getattr(full, part).num_hidden_layers
        assert getattr(narrow, part).hidden_size * 16 <= getattr(full, part).hidden_size
    model = load_config("tiny_cpu", ["model.arch=internvl3_2b_narrow", "model.align_layer=19"]).model
    assert random_encoder_config(model).num_hidden_layers == published_encoder_config("dinov2", 224).num_hidden_layers
