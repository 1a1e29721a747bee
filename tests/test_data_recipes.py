"""Every recipe loads and validates; the data section refuses bad values with the key and the fix."""
import pytest

from jala_ds.config import RECIPES_DIR, ConfigError, load_config

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"tiny_cpu", "pretrain_internvl3_2b"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.data.chunk_frames == 15 and cfg.data.max_chunks >= 1
    assert cfg.data.video_only_hands in ("both", "right")


@pytest.mark.parametrize("override, key", [
    ("data.lab_proportion=1.5", "data.lab_proportion"),
    ("data.video_only_hands=left", "data.video_only_hands"),
    ("data.mask_ratio_min=0", "data.mask_ratio_min"),
    ("data.max_text_tokens=0", "data.max_text_tokens"),
])
def test_bad_data_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("tiny_cpu", [override])


def test_labeled_only_refuses_a_wild_share():
    with pytest.raises(ConfigError, match="data.lab_proportion: labeled_only"):
        load_config("tiny_cpu", ["data.labeled_only=true", "data.lab_proportion=0.5"])
    assert load_config("tiny_cpu", ["data.labeled_only=true"]).data.labeled_only
