"""The InternVL3 backbone through transformers: its shapes, random or pretrained builds, and the motion vocabulary.

Three shapes are built from scratch: ``tiny`` (tests and the CPU demo), ``internvl3_2b`` (the published
InternVL3-2B: InternViT-300M, a 2-layer MLP projector, a Qwen2.5-1.5B-like language model with an untied head)
and ``internvl3_2b_narrow`` (InternVL3-2B's depth at tiny width: as many modules, hooks and kernel launches per
step with almost no arithmetic, so a CPU measures the framework's per-step overhead: ``benchmarks/host_overhead.py``).
Real runs load a local transformers-format checkpoint instead. Either way the embedding and the LM head are then
resized to the full JALA vocabulary (``jala_ds/vocab.py``), rounded up to a multiple of 64 rows: motion rows start
at the mean of the text rows.

    backbone = random_backbone(cfg.model, vocab)              # or pretrained_backbone(cfg.model, vocab)
    image_token_count(cfg.model)                               # <IMG_CONTEXT> tokens per image: 256 at 448 px
"""
from __future__ import annotations

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, PretrainedConfig, Qwen2Config
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from jala_ds.model.config import ModelConfig
from jala_ds.model.zero_gather import gathered_for_edit
from jala_ds.vocab import PUBLISHED_TEXT_VOCAB, MotionVocab

PATCH = 14
"""InternViT patch side in pixels."""
DOWNSAMPLE = 0.5
"""InternVL pixel shuffle: 2 x 2 patches become one image token."""
INTERNVL3_2B_TEXT_VOCAB = PUBLISHED_TEXT_VOCAB["internvl3_2b"]
INTERNVL3_2B_IMAGE_TOKEN = 151667
"""Id of ``<IMG_CONTEXT>`` in InternVL3-2B's tokenizer."""

TEXT_SHAPES = {
    # Qwen2.5-1.5B as InternVL3-2B ships it: GQA 12/2 heads, untied head.
    "internvl3_2b": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "intermediate_size": 8960, "max_position_embeddings": 32768,
                     "rope_theta": 1e6},
    # Keeps GQA (4 query heads over 2 key/value heads) so tests exercise the same grouping as the real model.
    "tiny": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "max_position_embeddings": 4096, "rope_theta": 1e4},
    "internvl3_2b_narrow": {"hidden_size": 64, "num_hidden_layers": 28, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 32768,
                            "rope_theta": 1e6},
}
VISION_SHAPES = {
    "internvl3_2b": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "intermediate_size": 4096},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "internvl3_2b_narrow": {"hidden_size": 32, "num_hidden_layers": 24, "num_attention_heads": 2,
                            "intermediate_size": 64},
}


def image_token_count(model_cfg: ModelConfig) -> int:
    """``<IMG_CONTEXT>`` tokens one image takes in the sequence: (side / 14)^2 patches, 2 x 2 merged."""
    patches_per_side = model_cfg.image_size // PATCH
    return int(patches_per_side * DOWNSAMPLE) ** 2


def backbone_config(arch: str, image_size: int, text_vocab_size: int, image_token_id: int) -> InternVLConfig:
    """The transformers config of an InternVL3 backbone of shape ``arch`` (``tiny`` or ``internvl3_2b``)."""
    text = Qwen2Config(vocab_size=text_vocab_size, rms_norm_eps=1e-6, tie_word_embeddings=False, use_cache=False,
                       **TEXT_SHAPES[arch])
    vision = InternVLVisionConfig(image_size=image_size, patch_size=PATCH, attention_bias=True,
                                  layer_scale_init_value=0.1, norm_type="layer_norm", **VISION_SHAPES[arch])
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                          image_seq_length=int(image_size // PATCH * DOWNSAMPLE) ** 2, downsample_ratio=DOWNSAMPLE,
                          tie_word_embeddings=False)


def internvl3_2b_on_meta() -> InternVLForConditionalGeneration:
    """InternVL3-2B with its published vocabulary on the meta device: real shapes, no memory, no download."""
    cfg = backbone_config("internvl3_2b", 448, INTERNVL3_2B_TEXT_VOCAB, INTERNVL3_2B_IMAGE_TOKEN)
    with torch.device("meta"):
        return InternVLForConditionalGeneration(cfg)


def parameter_breakdown(backbone: InternVLForConditionalGeneration) -> dict[str, int]:
    """Parameters per part: vision tower, projector, language model (with its input embedding), LM head, total."""
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    parts = {"vision": count(backbone.model.vision_tower), "projector": count(backbone.model.multi_modal_projector),
             "language_model": count(backbone.model.language_model), "lm_head": count(backbone.lm_head)}
    parts["total"] = count(backbone)  # parameters() de-duplicates a tied head, so total is the true size
    return parts


def random_backbone(model_cfg: ModelConfig, vocab: MotionVocab) -> InternVLForConditionalGeneration:
    """A randomly initialised backbone of shape ``model.arch`` covering ``vocab``."""
    cfg = backbone_config(model_cfg.arch, model_cfg.image_size, vocab.mot_start, vocab.img_context)
    backbone = InternVLForConditionalGeneration(cfg)
    add_motion_rows(backbone, vocab)
    return backbone


def pretrained_backbone(model_cfg: ModelConfig, vocab: MotionVocab) -> InternVLForConditionalGeneration:
    """The checkpoint in ``model.pretrained`` (local files only), checked against the recipe and ``vocab``."""
    check_internvl_folder(model_cfg.pretrained)
    backbone, info = InternVLForConditionalGeneration.from_pretrained(
        model_cfg.pretrained, local_files_only=True, dtype=torch.float32, output_loading_info=True)
    # transformers only logs weights it initialised at random or left unused; a run would train on them unnoticed.
    unused = {kind: keys for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
              if (keys := sorted(str(key) for key in info.get(kind) or ()))}
    if unused:
        found = "; ".join(f"{kind.replace('_', ' ')} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
                          for kind, keys in unused.items())
        raise ValueError(f"model.pretrained={model_cfg.pretrained} does not hold every InternVL weight ({found}): "
                         "use a complete transformers-format InternVL3 checkpoint (e.g. OpenGVLab/InternVL3-2B-hf)")
    cfg = backbone.config
    layers = cfg.text_config.num_hidden_layers
    if model_cfg.align_layer > layers:
        raise ValueError(f"model.align_layer={model_cfg.align_layer} but {model_cfg.pretrained} has {layers} "
                         f"language-model layers: pick a layer in [1, {layers}]")
    side = cfg.vision_config.image_size[0]
    if side != model_cfg.image_size:
        raise ValueError(f"model.image_size={model_cfg.image_size} but {model_cfg.pretrained} was trained at "
                         f"{side} px: set model.image_size={side}")
    if cfg.image_token_id != vocab.img_context:
        raise ValueError(f"{model_cfg.pretrained} expects <IMG_CONTEXT> id {cfg.image_token_id} but the tokenizer "
                         f"gives {vocab.img_context}: load the tokenizer from the same checkpoint folder")
    add_motion_rows(backbone, vocab)
    return backbone


def check_internvl_folder(folder: str) -> None:
    """Refuse, before any weight is built, a folder without config.json or of another model type: transformers
    would read it as a default-config InternVL (a 7B-shaped language model) and initialise that at random."""
    try:
        model_type = PretrainedConfig.get_config_dict(folder, local_files_only=True)[0].get("model_type")
    except OSError:
        model_type = None
    if model_type is None:
        raise FileNotFoundError(f"model.pretrained={folder} has no config.json naming a model type: point it at a "
                                "transformers-format InternVL3 checkpoint folder (config.json, *.safetensors, "
                                "tokenizer files), e.g. OpenGVLab/InternVL3-2B-hf")
    if model_type != "internvl":
        raise ValueError(f"model.pretrained={folder} holds a '{model_type}' model, not an InternVL in the "
                         "transformers format (model_type 'internvl'): use the -hf checkpoint (e.g. "
                         "OpenGVLab/InternVL3-2B-hf, not the remote-code OpenGVLab/InternVL3-2B)")


def add_motion_rows(backbone: InternVLForConditionalGeneration, vocab: MotionVocab) -> None:
    """Resize the embedding and the LM head to ``vocab.rows``; the motion tokens' rows start at the text rows' mean.

    A checkpoint that already has ``vocab.rows`` rows, or ``vocab.size`` (saved before the rows were padded), was
    saved by JALA: its motion rows are trained, keep them. Rows a plain checkpoint has beyond its tokenizer
    (padding rows) are never used by text, so they are overwritten like new ones. The rows past ``vocab.size``
    stand for no token: no input holds their ids and the MCP loss leaves them out of its softmax.
    """
    rows = backbone.get_input_embeddings().num_embeddings  # not weight.shape: a ZeRO-3 shard reports size 0
    if rows in (vocab.size, vocab.rows):
        if rows != vocab.rows:
            backbone.resize_token_embeddings(vocab.rows, mean_resizing=False)
        return
    if rows < vocab.mot_start:
        raise ValueError(f"the tokenizer has {vocab.mot_start} text tokens but the checkpoint's embedding only "
                         f"{rows} rows: load the tokenizer that ships with the checkpoint")
    # mean_resizing=False: transformers would sample from a fitted Gaussian; we want exactly the mean.
    backbone.resize_token_embeddings(vocab.rows, mean_resizing=False)
    weights = [backbone.get_input_embeddings().weight, backbone.get_output_embeddings().weight]
    with gathered_for_edit(weights), torch.no_grad():
        for weight in weights:
            weight[vocab.mot_start:vocab.size] = weight[:vocab.mot_start].mean(dim=0)
