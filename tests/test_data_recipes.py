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


@pytest.mark.parametrize("override, words", [
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.betas=[0.9, .inf]", "train.betas[1] must be a finite number"),
    ("model.perceiver_heads=0", "model.perceiver_heads: must be positive"),
    ("model.perceiver_width=0", "model.perceiver_width: must be a positive multiple"),
    ("motion_tokenizer.latent_dim=0", "motion_tokenizer.latent_dim: must be a positive multiple"),
    ("data.chunk_frames=17", "data.chunk_frames: 17 does not fit the tokenizer's 16 padded frames"),
    ("model.align_layr=3", "unknown key 'model.align_layr' (did you mean model.align_layer"),
    ("model.lr=1e-4", "(it belongs to another section: motion_tokenizer.lr, token_predictor.lr, train.lr)"),
    ("model.max_steps=5", "(it belongs to another section: train.max_steps)"),
    ("train.betas=[0.9", "override 'train.betas=[0.9': the value is not valid YAML"),
    ("train.out_dir=2026-11-28", "train.out_dir must be text, got datetime.date(2026, 11, 28) (date): quote it, "
                                 "train.out_dir=\"'2026-11-28'\""),
])
def test_bad_values_and_keys_are_one_config_error(override, words):
    """Each of these was accepted (a run on nonsense) or ended in a traceback (ZeroDivisionError, PyYAML)."""
    with pytest.raises(ConfigError) as err:
        load_config("tiny_cpu", [override])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_tokenizer_training_may_use_other_chunk_lengths():
    """`jala tokenizer train` reads a binning recipe and trains GRVQ on any length up to its 16 padded frames: the
    binning tokenizer's 15 is checked where it encodes, by `jala train`'s preflight."""
    assert load_config("tiny_cpu", ["data.chunk_frames=10"]).data.chunk_frames == 10


def test_quoted_text_overrides_are_kept():
    assert load_config("tiny_cpu", ["name='2024'", "train.out_dir='2026-11-28'"]).train.out_dir == "2026-11-28"
