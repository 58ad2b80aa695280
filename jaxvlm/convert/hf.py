"""HF transformers model directories -> jaxvlm: `CLIPModel`, `SiglipModel` and the others of `MODEL_CLASSES`.

The directory's `config.json` decides the architecture (a `model_name`, when given, must agree
with it); the weights are `model.safetensors`, `pytorch_model.bin`, or a sharded index of either.
Numerics follow what transformers computes:

- CLIP: class token, pre-LN (HF's `pre_layrnorm`), causal text, the class token's features
  through `post_layernorm`, bias-free projections, logits exp(t) * cos. Text pooling is HF's:
  the argmax of the ids when the config's `eos_token_id` is 2 (legacy configs), otherwise the
  first position holding `eos_token_id`.
- MetaClip2 (MetaCLIP 2 worldwide): CLIP's towers and keys, pooled at the first `eos_token_id` whatever
  its value, with XLM-R's tokenizer (XLM-V's vocabulary) run as transformers' XLMRobertaTokenizer runs it.
- ChineseCLIP: CLIP's image tower; a BERT text tower (`hf_encoder`), its first token's output projected without
  bias; the WordPiece tokenizer BertTokenizer builds from the repo's vocab.txt (OFA-Sys's hold no tokenizer.json).
- ALIGN: an EfficientNet image tower (`efficientnet`, BatchNorm statistics in "batch_stats") pooled by its mean,
  unprojected; BERT's first token's output projected with a bias; logits cos / temperature (t = -log temperature);
  BERT's WordPiece padded to 64; EfficientNetImageProcessor's resize, centre crop and rescale as mean / std.
- SigLIP: patch conv with bias, no class token, no pre-LN, MAP head (a torch MultiheadAttention
  with packed in_proj), bidirectional text pooled at the last position, `text_model.head` as the
  text projection, logits exp(t) * cos + b.

Fields a config.json leaves out take transformers' defaults (written out below), so converting
needs neither transformers nor network access.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxvlm.convert.common import (
    Converted,
    SourceKeys,
    attention_params,
    check_params,
    conv,
    dense,
    flat_fields,
    layer_norm,
    linear,
    read_json,
    read_weights,
    stack_layers,
)
from jaxvlm.convert.open_clip import BATCH_STATS, hf_text_encoder
from jaxvlm.errors import InputError
from jaxvlm.models.config import ModelConfig
from jaxvlm.models.registry import CLIP_TOKENIZER, SIGLIP_TOKENIZER_FILE, get_architecture
from jaxvlm.models.towers import EfficientNetConfig, HFTextConfig, NaFlexViTConfig, TransformerTextConfig, ViTConfig
from jaxvlm.preprocess import INCEPTION_MEAN, INCEPTION_STD, OPENAI_MEAN, OPENAI_STD, PreprocessConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE, TokenizerConfig

MODEL_CLASSES = {
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
    "siglip2": "Siglip2Model",
    "metaclip_2": "MetaClip2Model",
    "chinese_clip": "ChineseCLIPModel",
    "align": "AlignModel",
}

# Non-persistent buffers that older checkpoints saved along with the parameters.
NON_PARAMETERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# Weight files in the order transformers looks for them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# HF `hidden_act` -> jaxvlm act. gelu_new computes the same tanh formula as gelu_pytorch_tanh.
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}

# transformers' defaults (configuration_clip.py / configuration_siglip.py) for omitted fields.
DEFAULTS = {
    "clip": {
        "model": {"projection_dim": 512, "logit_scale_init_value": 2.6592},
        "text_config": {
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "eos_token_id": 49407,
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "num_channels": 3,
            "image_size": 224,
            "patch_size": 32,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
    },
    "siglip": {
        "model": {},
        "text_config": {
            "vocab_size": 32000,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 64,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "projection_size": None,
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "num_channels": 3,
            "image_size": 224,
            "patch_size": 16,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "vision_use_head": True,
        },
    },
}

# Siglip2's: SigLIP's text tower, a NaFlex image tower whose learned positions are num_patches
DEFAULTS["siglip2"] = {
    "model": {},
    "text_config": DEFAULTS["siglip"]["text_config"],
    "vision_config": {**DEFAULTS["siglip"]["vision_config"], "num_patches": 256},
}
# MetaClip2Config's defaults are CLIPConfig's (its tokenizer is XLM-R's, which the config does not name)
DEFAULTS["metaclip_2"] = DEFAULTS["clip"]
# ChineseCLIPConfig's: a BERT text tower (ChineseCLIPTextConfig) and CLIP's image tower
DEFAULTS["chinese_clip"] = {
    "model": DEFAULTS["clip"]["model"],
    "text_config": {
        "vocab_size": 30522,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 512,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "position_embedding_type": "absolute",
    },
    "vision_config": DEFAULTS["clip"]["vision_config"],
}
# AlignConfig's: BERT-base and AlignVisionConfig's EfficientNet-B7 (its image size is not align-base's)
DEFAULTS["align"] = {
    "model": {"projection_dim": 640, "temperature_init_value": 1.0},
    "text_config": DEFAULTS["chinese_clip"]["text_config"],
    "vision_config": {
        "num_channels": 3,
        "image_size": 600,
        "width_coefficient": 2.0,
        "depth_coefficient": 3.1,
        "depth_divisor": 8,
        "kernel_sizes": [3, 3, 5, 3, 5, 5, 3],
        "in_channels": [32, 16, 24, 40, 80, 112, 192],
        "out_channels": [16, 24, 40, 80, 112, 192, 320],
        "depthwise_padding": [],
        "strides": [1, 2, 2, 2, 1, 2, 1],
        "num_block_repeats": [1, 2, 2, 3, 3, 4, 1],
        "expand_ratios": [1, 6, 6, 6, 6, 6, 6],
        "squeeze_expansion_ratio": 0.25,
        "hidden_act": "swish",
        "pooling_type": "mean",
        "batch_norm_eps": 1e-3,
        "batch_norm_momentum": 0.99,
    },
}
# AlignProcessor pads and truncates text to 64 tokens
ALIGN_CONTEXT = 64
# Chinese-CLIP's own context length (cn_clip's tokenize); the HF config holds none
CHINESE_CLIP_CONTEXT = 52
# transformers' CLIP pools at the largest id when eos_token_id is this legacy value; MetaClip2 always at the eos
ARGMAX_EOS = {"clip": 2}

# The HF image processors' class defaults (image_processing_clip.py / image_processing_siglip.py).
PROCESSOR_DEFAULTS = {
    "clip": {"resample": 3, "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD, "do_center_crop": True},
    "siglip": {"resample": 3, "image_mean": INCEPTION_MEAN, "image_std": INCEPTION_STD, "do_center_crop": False},
    "siglip2": {"resample": 2, "image_mean": INCEPTION_MEAN, "image_std": INCEPTION_STD, "max_num_patches": 256},
}
PROCESSOR_DEFAULTS["metaclip_2"] = PROCESSOR_DEFAULTS["clip"]  # MetaClip2 uses CLIPImageProcessor
PROCESSOR_DEFAULTS["chinese_clip"] = PROCESSOR_DEFAULTS["clip"]  # ChineseCLIPImageProcessor's are CLIP's
PROCESSOR_DEFAULTS["align"] = {  # EfficientNetImageProcessor's
    "resample": 3,
    "image_mean": INCEPTION_MEAN,
    "image_std": INCEPTION_STD,
    "size": {"height": 346, "width": 346},
    "crop_size": {"height": 289, "width": 289},
    "do_center_crop": False,
    "rescale_factor": 1 / 255,
    "rescale_offset": False,
    "do_normalize": True,
    "include_top": True,
}
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values

# The HF tokenizer classes' default special tokens (CLIPTokenizer / SiglipTokenizer).
TOKENIZER_DEFAULTS = {
    "clip": {"pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "siglip": {"pad_token": "</s>", "eos_token": "</s>"},
    "siglip2": {"pad_token": "<pad>", "eos_token": "<eos>"},
    "xlm_roberta": {"pad_token": "<pad>", "eos_token": "</s>"},  # XLMRobertaTokenizer, MetaClip2's
    "metaclip_2": {"pad_token": "<pad>", "eos_token": "</s>"},
    "bert": {"pad_token": "[PAD]", "sep_token": "[SEP]"},
    "chinese_clip": {"pad_token": "[PAD]"},  # BertTokenizer's  # a WordPiece tokenizer.json (CLIPA in open_clip)
    "align": {"pad_token": "[PAD]"},
}

# What transformers' tokenizer class for a model type does to texts ahead of the tokenizer.json it reads:
# Siglip2Tokenizer puts a Lowercase normaliser in front of the file's (whatever tokenizer_class the repo names)
HF_JSON_CLEANS = {"siglip2": "unicode_lower"}

# Fields that legitimately differ between sources of one architecture: not compared with model_name.
_NUMERIC_FIELDS = {
    "vision.act",
    "vision.ln_eps",
    "text.act",
    "text.ln_eps",
    "text.pool",
    "text.eos_id",
    "logit_scale_init",
    "logit_bias_init",
}


# ---------------------------------------------------------------- config.json


class _Fields:
    """One (sub-)config: the file's values over transformers' defaults, with typed access."""

    def __init__(self, values: dict, defaults: dict, where: str):
        self.values, self.defaults, self.where = values, defaults, where

    def get(self, key: str) -> Any:
        value = self.values.get(key)
        return self.defaults.get(key) if value is None else value

    def int(self, key: str) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{self.where}.{key} must be a positive integer, got {value!r}")
        return value

    def square(self, key: str) -> int:
        """image_size / patch_size: an int or a [height, width] pair, which must be square."""
        value = self.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{self.where}.{key} must be a positive integer (square), got {value!r}")
        return value

    def eps(self) -> float:
        value = self.get("layer_norm_eps")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise InputError(f"{self.where}.layer_norm_eps must be a small positive number, got {value!r}")
        return float(value)

    def act(self) -> str:
        value = self.get("hidden_act")
        if value not in ACTIVATIONS:
            raise InputError(
                f"{self.where}.hidden_act {value!r} is not supported; expected one of {', '.join(ACTIVATIONS)}"
            )
        return ACTIVATIONS[value]


def _sub_config(config: dict, name: str, defaults: dict, where: str) -> _Fields:
    values = config.get(name) or {}
    legacy = config.get(f"{name}_dict")  # transformers < 4.2x wrote text_config_dict; it overrides
    if not isinstance(values, dict) or not isinstance(legacy or {}, dict):
        raise InputError(f"{where}: '{name}' must be a JSON object")
    return _Fields({**values, **(legacy or {})}, defaults, f"{where} {name}")


def _vision_common(v: _Fields) -> dict:
    if v.int("num_channels") != 3:
        raise InputError(f"{v.where}.num_channels is {v.get('num_channels')}; only RGB (3) models are supported")
    return dict(
        image_size=v.square("image_size"),
        patch_size=v.square("patch_size"),
        width=v.int("hidden_size"),
        depth=v.int("num_hidden_layers"),
        heads=v.int("num_attention_heads"),
        mlp_dim=v.int("intermediate_size"),
        act=v.act(),
        ln_eps=v.eps(),
    )


def _text_common(t: _Fields) -> dict:
    return dict(
        vocab_size=t.int("vocab_size"),
        context_length=t.int("max_position_embeddings"),
        width=t.int("hidden_size"),
        depth=t.int("num_hidden_layers"),
        heads=t.int("num_attention_heads"),
        mlp_dim=t.int("intermediate_size"),
        act=t.act(),
        ln_eps=t.eps(),
    )


def _clip_config(config: dict, where: str, model_type: str = "clip") -> ModelConfig:
    """CLIPModel, and MetaClip2Model (``model_type`` 'metaclip_2'): the same towers and keys."""
    d = DEFAULTS[model_type]
    top = _Fields(config, d["model"], where)
    v = _sub_config(config, "vision_config", d["vision_config"], where)
    t = _sub_config(config, "text_config", d["text_config"], where)
    eos = t.get("eos_token_id")
    if isinstance(eos, bool) or not isinstance(eos, int):
        raise InputError(f"{t.where}.eos_token_id must be one integer (transformers' CLIP pools on it), got {eos!r}")
    pool = dict(pool="argmax") if eos == ARGMAX_EOS.get(model_type) else dict(pool="eos", eos_id=eos)
    scale = top.get("logit_scale_init_value")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise InputError(f"{where}.logit_scale_init_value must be a number, got {scale!r}")
    vision = ViTConfig(
        **_vision_common(v), patch_bias=False, class_token=True, pre_norm=True, pool="cls", proj=True, proj_bias=False
    )
    text = TransformerTextConfig(**_text_common(t), causal=True, **pool, proj=True, proj_bias=False)
    return ModelConfig(
        embed_dim=top.int("projection_dim"), vision=vision, text=text, loss="softmax", logit_scale_init=float(scale)
    )


def _chinese_clip_config(config: dict, where: str) -> ModelConfig:
    """ChineseCLIPModel: CLIP's image tower; a BERT text tower (post-LN, learned positions, token type 0)
    whose first token's output, unpooled, is projected without bias."""
    d = DEFAULTS["chinese_clip"]
    top = _Fields(config, d["model"], where)
    v = _sub_config(config, "vision_config", d["vision_config"], where)
    t = _sub_config(config, "text_config", d["text_config"], where)
    if t.get("position_embedding_type") != "absolute":
        kind = t.get("position_embedding_type")
        raise InputError(f"{t.where}.position_embedding_type is {kind!r}; jaxvlm builds 'absolute' positions")
    scale = top.get("logit_scale_init_value")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise InputError(f"{where}.logit_scale_init_value must be a number, got {scale!r}")
    vision = ViTConfig(
        **_vision_common(v), patch_bias=False, class_token=True, pre_norm=True, pool="cls", proj=True, proj_bias=False
    )
    common = _text_common(t)
    text = HFTextConfig(
        **{**common, "context_length": min(CHINESE_CLIP_CONTEXT, common["context_length"])},
        max_positions=t.int("max_position_embeddings"),
        pad_id=t.get("pad_token_id"),
        type_vocab_size=t.int("type_vocab_size"),
        pool="cls",
        proj="linear",
    )
    return ModelConfig(
        embed_dim=top.int("projection_dim"), vision=vision, text=text, loss="softmax", logit_scale_init=float(scale)
    )


def _int_list(f: _Fields, key: str) -> tuple[int, ...]:
    value = f.get(key)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"{f.where}.{key} must be a list of integers, got {value!r}")
    return tuple(value)


def _number(f: _Fields, key: str) -> float:
    value = f.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise InputError(f"{f.where}.{key} must be a positive number, got {value!r}")
    return float(value)


def _align_config(config: dict, where: str) -> ModelConfig:
    """AlignModel: AlignVisionModel's EfficientNet; a BERT text tower whose first token's output is projected
    with a bias; logits cos / temperature."""
    d = DEFAULTS["align"]
    top = _Fields(config, d["model"], where)
    v = _sub_config(config, "vision_config", d["vision_config"], where)
    t = _sub_config(config, "text_config", d["text_config"], where)
    if v.int("num_channels") != 3:
        raise InputError(f"{v.where}.num_channels is {v.get('num_channels')}; only RGB (3) models are supported")
    if v.get("hidden_act") not in ("swish", "silu"):
        raise InputError(f"{v.where}.hidden_act {v.get('hidden_act')!r} is not supported; expected 'swish'")
    if t.get("position_embedding_type") not in (None, "absolute"):
        kind = t.get("position_embedding_type")
        raise InputError(f"{t.where}.position_embedding_type is {kind!r}; jaxvlm builds 'absolute' positions")
    vision = EfficientNetConfig(
        image_size=v.square("image_size"),
        width_coefficient=_number(v, "width_coefficient"),
        depth_coefficient=_number(v, "depth_coefficient"),
        depth_divisor=v.int("depth_divisor"),
        kernel_sizes=_int_list(v, "kernel_sizes"),
        in_channels=_int_list(v, "in_channels"),
        out_channels=_int_list(v, "out_channels"),
        strides=_int_list(v, "strides"),
        block_repeats=_int_list(v, "num_block_repeats"),
        expand_ratios=_int_list(v, "expand_ratios"),
        se_ratio=_number(v, "squeeze_expansion_ratio"),
        symmetric_padding=_int_list(v, "depthwise_padding"),
        pool=v.get("pooling_type"),
        bn_eps=_number(v, "batch_norm_eps"),
        bn_momentum=round(1 - _number(v, "batch_norm_momentum"), 12),  # HF keeps TF's decay (0.99)
    )
    common = _text_common(t)
    text = HFTextConfig(
        **{**common, "context_length": min(ALIGN_CONTEXT, common["context_length"])},
        max_positions=t.int("max_position_embeddings"),
        pad_id=t.get("pad_token_id"),
        type_vocab_size=t.int("type_vocab_size"),
        pool="cls",
        proj="linear",
        proj_bias=True,
    )
    temperature = _number(top, "temperature_init_value")
    return ModelConfig(
        embed_dim=top.int("projection_dim"),
        vision=vision,
        text=text,
        loss="softmax",
        logit_scale_init=-math.log(temperature),
    )


def _siglip_config(config: dict, where: str) -> ModelConfig:
    v = _sub_config(config, "vision_config", DEFAULTS["siglip"]["vision_config"], where)
    vision = ViTConfig(**_vision_common(v), patch_bias=True, class_token=False, pre_norm=False, pool="map", proj=False)
    return _siglip_model(config, "siglip", v, vision, where)


def _siglip2_config(config: dict, where: str) -> ModelConfig:
    """A NaFlex image tower: patches through a linear layer, num_patches learned positions as a square."""
    v = _sub_config(config, "vision_config", DEFAULTS["siglip2"]["vision_config"], where)
    if v.get("num_channels") != 3:
        raise InputError(f"{v.where}.num_channels is {v.get('num_channels')}; only RGB (3) models are supported")
    positions = v.int("num_patches")
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise InputError(f"{v.where}.num_patches {positions} is not a square number of learned positions")
    vision = NaFlexViTConfig(
        patch_size=v.square("patch_size"),
        width=v.int("hidden_size"),
        depth=v.int("num_hidden_layers"),
        heads=v.int("num_attention_heads"),
        mlp_dim=v.int("intermediate_size"),
        act=v.act(),
        ln_eps=v.eps(),
        position_grid=grid,
    )
    return _siglip_model(config, "siglip2", v, vision, where)


def _siglip_model(config: dict, model_type: str, v: _Fields, vision: Any, where: str) -> ModelConfig:
    t = _sub_config(config, "text_config", DEFAULTS[model_type]["text_config"], where)
    if v.get("vision_use_head") is not True:
        raise InputError(f"{v.where}.vision_use_head is off: the model has no pooled image embedding")
    embed_dim = vision.width
    projection = t.get("projection_size")
    projection = t.int("hidden_size") if projection is None else t.int("projection_size")
    if projection != embed_dim:
        raise InputError(
            f"{t.where}.projection_size {projection} differs from the image width {embed_dim}: "
            "the two embeddings cannot be compared"
        )
    text = TransformerTextConfig(**_text_common(t), causal=False, pool="last", proj=True, proj_bias=True)
    # HF's config holds no init values for t and b; these are the SigLIP paper's (big_vision's).
    return ModelConfig(
        embed_dim=embed_dim,
        vision=vision,
        text=text,
        loss="sigmoid",
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0,
    )


def model_config(config: dict, where: str) -> tuple[str, ModelConfig]:
    """HF config.json contents -> (model_type, jaxvlm ModelConfig)."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_CLASSES:
        raise InputError(
            f"{where}: model_type is {model_type!r}; this converter reads "
            f"{' / '.join(repr(k) for k in MODEL_CLASSES)} ({' / '.join(MODEL_CLASSES.values())})"
        )
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and MODEL_CLASSES[model_type] not in architectures:
        raise InputError(
            f"{where}: architectures is {architectures}; expected {MODEL_CLASSES[model_type]} (both towers)"
        )
    try:
        return model_type, CONFIG_READERS[model_type](config, where)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


CONFIG_READERS = {
    "clip": _clip_config,
    "siglip": _siglip_config,
    "siglip2": _siglip2_config,
    "metaclip_2": functools.partial(_clip_config, model_type="metaclip_2"),
    "chinese_clip": _chinese_clip_config,
    "align": _align_config,
}


def _check_model_name(model_name: str, cfg: ModelConfig, where: str) -> None:
    named = flat_fields(get_architecture(model_name).model)
    mine = flat_fields(cfg)
    keys = [*mine, *(k for k in named if k not in mine)]  # a CoCa has decoder fields, a two-tower not
    diffs = [
        f"{k} {mine.get(k)} vs {named.get(k)}" for k in keys if k not in _NUMERIC_FIELDS and mine.get(k) != named.get(k)
    ]
    if diffs:
        raise InputError(
            f"{where} is not a {model_name} ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); leave out --model to take the config's architecture"
        )


# ---------------------------------------------------------------- weights


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index} has no 'weight_map'")
    weights: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise InputError(f"{index}: shard {shard!r} is not a file name in the same directory")
        part = read_weights(index.parent / shard)
        clash = sorted(set(part) & set(weights))
        if clash:
            raise InputError(f"{index}: keys in more than one shard, e.g. {', '.join(clash[:5])}")
        weights.update(part)
    unlisted = sorted(set(weights) ^ set(weight_map))
    if unlisted:
        raise InputError(f"{index}: the shards and the weight_map disagree on keys, e.g. {', '.join(unlisted[:5])}")
    return weights


def _read_dir_weights(src_dir: Path) -> tuple[dict[str, np.ndarray], Path]:
    for name in WEIGHT_FILES:
        path = src_dir / name
        if path.is_file():
            return (_read_sharded(path) if name.endswith(".index.json") else read_weights(path)), path
    raise InputError(f"{src_dir} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _encoder_layers(src: SourceKeys, name: str, heads: int):
    """HF CLIPEncoderLayer / SiglipEncoderLayer (separate q/k/v) -> one jaxvlm Block."""

    def one(i: int) -> dict[str, np.ndarray]:
        p = f"{name}.{i}"
        qkv = [
            (src.take(f"{p}.self_attn.{n}_proj.weight"), src.take(f"{p}.self_attn.{n}_proj.bias"))
            for n in ("q", "k", "v")
        ]
        return {
            **layer_norm(src, f"{p}.layer_norm1", "norm1"),
            **attention_params(
                "attn",
                *qkv,
                src.take(f"{p}.self_attn.out_proj.weight"),
                src.take(f"{p}.self_attn.out_proj.bias"),
                heads,
            ),
            **layer_norm(src, f"{p}.layer_norm2", "norm2"),
            **dense(src, f"{p}.mlp.fc1", "mlp/fc1"),
            **dense(src, f"{p}.mlp.fc2", "mlp/fc2"),
        }

    return one


def _scalar(src: SourceKeys, key: str) -> np.ndarray:
    value = src.take(key)
    if value.size != 1:
        raise InputError(f"{src.what}: '{key}' has shape {value.shape}, expected a scalar")
    return value.reshape(())


def _clip_params(src: SourceKeys, cfg: ModelConfig) -> dict[str, np.ndarray]:
    return {
        **_clip_vision(src, cfg.vision),
        **_text_params(src, cfg.text),
        **dense(src, "text_projection", "txt/proj", bias=False),
        "t": _scalar(src, "logit_scale"),
    }


def _chinese_clip_params(src: SourceKeys, cfg: ModelConfig) -> dict[str, np.ndarray]:
    return {
        **_clip_vision(src, cfg.vision),
        **hf_text_encoder(src, cfg.text, "text_model."),
        **dense(src, "text_projection", "txt/proj", bias=False),
        "t": _scalar(src, "logit_scale"),
    }


# AlignTextModel's pooler, which AlignModel never runs (it projects the first token's output)
ALIGN_UNUSED = ("text_model.pooler.dense.weight", "text_model.pooler.dense.bias")


def _align_params(src: SourceKeys, cfg: ModelConfig) -> dict[str, np.ndarray]:
    for key in ALIGN_UNUSED:
        if key in src:
            src.used.add(key)
    temperature = _scalar(src, "temperature")
    if not temperature > 0:
        raise InputError(f"{src.what}: 'temperature' is {float(temperature)}; ALIGN divides by it, it must be positive")
    return {
        **_efficientnet(src, cfg.vision, "vision_model."),
        **hf_text_encoder(src, cfg.text, "text_model."),
        **dense(src, "text_projection", "txt/proj", bias=True),
        "t": -np.log(temperature),
    }


def _conv_bn(src: SourceKeys, conv_key: str, bn: str, prefix: str) -> dict[str, np.ndarray]:
    """A bias-free Conv2d and its BatchNorm2d -> an efficientnet ConvNorm; statistics to "batch_stats"."""
    return {
        f"{prefix}/conv/kernel": conv(src.take(conv_key)),
        f"{prefix}/bn/scale": src.take(f"{bn}.weight"),
        f"{prefix}/bn/bias": src.take(f"{bn}.bias"),
        f"{BATCH_STATS}/{prefix}/bn/mean": src.take(f"{bn}.running_mean"),
        f"{BATCH_STATS}/{prefix}/bn/var": src.take(f"{bn}.running_var"),
    }


def _efficientnet(src: SourceKeys, v: EfficientNetConfig, p: str) -> dict[str, np.ndarray]:
    """AlignVisionModel (HF's EfficientNet) under prefix ``p`` -> img/*."""
    e = f"{p}embeddings"
    flat = _conv_bn(src, f"{e}.convolution.weight", f"{e}.batchnorm", "img/stem")
    for i, spec in enumerate(v.blocks):
        b, ours = f"{p}encoder.blocks.{i}", f"img/block{i}"
        if spec.expand_ratio != 1:
            expand = f"{b}.expansion"
            flat.update(_conv_bn(src, f"{expand}.expand_conv.weight", f"{expand}.expand_bn", f"{ours}/expand"))
        dw = f"{b}.depthwise_conv"
        flat.update(_conv_bn(src, f"{dw}.depthwise_conv.weight", f"{dw}.depthwise_norm", f"{ours}/depthwise"))
        for name in ("reduce", "expand"):  # 1x1 convolutions of a 1x1 map: dense layers
            weight = src.take(f"{b}.squeeze_excite.{name}.weight")
            flat[f"{ours}/se/{name}/kernel"] = linear(weight.reshape(weight.shape[:2]))
            flat[f"{ours}/se/{name}/bias"] = src.take(f"{b}.squeeze_excite.{name}.bias")
        project = f"{b}.projection"
        flat.update(_conv_bn(src, f"{project}.project_conv.weight", f"{project}.project_bn", f"{ours}/project"))
    return flat


def _clip_vision(src: SourceKeys, v: ViTConfig) -> dict[str, np.ndarray]:
    return {
        "img/patch_embed/kernel": conv(src.take("vision_model.embeddings.patch_embedding.weight")),
        "img/cls": src.take("vision_model.embeddings.class_embedding").reshape(1, 1, -1),
        "img/pos_embed": src.take("vision_model.embeddings.position_embedding.weight")[None],
        **layer_norm(src, "vision_model.pre_layrnorm", "img/pre_norm"),
        **stack_layers(v.depth, _encoder_layers(src, "vision_model.encoder.layers", v.heads), "img/encoder/blocks"),
        **layer_norm(src, "vision_model.post_layernorm", "img/final_norm"),
        **dense(src, "visual_projection", "img/proj", bias=False),
    }


def _siglip_params(src: SourceKeys, cfg: ModelConfig) -> dict[str, np.ndarray]:
    kernel = conv(src.take("vision_model.embeddings.patch_embedding.weight"))
    return _siglip_towers(src, cfg, kernel)


def _siglip2_params(src: SourceKeys, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Siglip2's patch embedding is a Linear over patches flattened in (row, column, channel) order."""
    p = cfg.vision.patch_size
    kernel = linear(src.take("vision_model.embeddings.patch_embedding.weight")).reshape(p, p, 3, -1)
    return _siglip_towers(src, cfg, kernel)


def _siglip_towers(src: SourceKeys, cfg: ModelConfig, patch_kernel: np.ndarray) -> dict[str, np.ndarray]:
    v, t = cfg.vision, cfg.text
    head = "vision_model.head"
    q_w, k_w, v_w = np.split(src.take(f"{head}.attention.in_proj_weight"), 3)  # torch packs q, k, v in order
    q_b, k_b, v_b = np.split(src.take(f"{head}.attention.in_proj_bias"), 3)
    return {
        "img/patch_embed/kernel": patch_kernel,
        "img/patch_embed/bias": src.take("vision_model.embeddings.patch_embedding.bias"),
        "img/pos_embed": src.take("vision_model.embeddings.position_embedding.weight")[None],
        **stack_layers(v.depth, _encoder_layers(src, "vision_model.encoder.layers", v.heads), "img/encoder/blocks"),
        **layer_norm(src, "vision_model.post_layernorm", "img/final_norm"),
        "img/map_head/probe": src.take(f"{head}.probe"),
        **attention_params(
            "img/map_head/attn",
            (q_w, q_b),
            (k_w, k_b),
            (v_w, v_b),
            src.take(f"{head}.attention.out_proj.weight"),
            src.take(f"{head}.attention.out_proj.bias"),
            v.heads,
        ),
        **layer_norm(src, f"{head}.layernorm", "img/map_head/norm"),
        **dense(src, f"{head}.mlp.fc1", "img/map_head/mlp/fc1"),
        **dense(src, f"{head}.mlp.fc2", "img/map_head/mlp/fc2"),
        **_text_params(src, t),
        **dense(src, "text_model.head", "txt/proj", bias=True),
        "t": _scalar(src, "logit_scale"),
        "b": _scalar(src, "logit_bias"),
    }


def _text_params(src: SourceKeys, t: TransformerTextConfig) -> dict[str, np.ndarray]:
    return {
        "txt/token_embed/embedding": src.take("text_model.embeddings.token_embedding.weight"),
        "txt/pos_embed": src.take("text_model.embeddings.position_embedding.weight")[None],
        **stack_layers(t.depth, _encoder_layers(src, "text_model.encoder.layers", t.heads), "txt/encoder/blocks"),
        **layer_norm(src, "text_model.final_layer_norm", "txt/final_norm"),
    }


PARAM_READERS = {
    "clip": _clip_params,
    "siglip": _siglip_params,
    "siglip2": _siglip2_params,
    "metaclip_2": _clip_params,
    "chinese_clip": _chinese_clip_params,
    "align": _align_params,
}


# ---------------------------------------------------------------- preprocessing


def _size_pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return value["height"], value["width"]
    raise InputError(f"{what} is {value!r}; expected an int or {{'height', 'width'}}")


def preprocess_config(src_dir: Path, model_type: str, vision: Any) -> PreprocessConfig:
    """The HF image processor's transform, from preprocessor_config.json or the class defaults.

    Only what PreprocessConfig can reproduce is accepted: resize to the model's size (shortest side
    then a centre crop of that size, or straight to a square), bicubic or bilinear, /255, mean/std.
    """
    image_size, defaults = vision.image_size, PROCESSOR_DEFAULTS[model_type]
    path = src_dir / "preprocessor_config.json"
    p = _Fields(read_json(path) if path.is_file() else {}, defaults, str(path))
    resample = p.get("resample")
    if resample not in RESAMPLE:
        raise InputError(f"{path}: resample {resample!r} is not supported (2 bilinear, 3 bicubic)")
    if p.values.get("do_resize") is False:
        raise InputError(f"{path}: do_resize is false; jaxvlm always resizes to the model's image size")
    if model_type == "align":
        return _efficientnet_preprocess(p, path, image_size)
    mean, std = _normalization(p, path)
    if model_type == "siglip2":  # Siglip2ImageProcessor: each image resized to fit a patch budget
        return PreprocessConfig(
            image_size=image_size,
            resize_mode="naflex",
            interpolation=RESAMPLE[resample],
            mean=mean,
            std=std,
            patch_size=_same_patch(p, path, vision.patch_size),
            max_num_patches=p.int("max_num_patches"),
        )
    square = {"height": image_size, "width": image_size}
    # a centre-cropping processor (CLIP's) resizes the shortest edge by default, the others to a square
    size = p.values.get("size", {"shortest_edge": image_size} if defaults.get("do_center_crop") else square)
    shortest = isinstance(size, int) and not isinstance(size, bool)  # HF reads a bare int as the short side
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        size, shortest = size["shortest_edge"], True
    if shortest:
        crop = _size_pair(p.values.get("crop_size", size), f"{path}: crop_size")
        if size != image_size or not p.get("do_center_crop") or crop != (image_size, image_size):
            raise InputError(
                f"{path}: shortest-side resize to {size} with centre crop "
                f"{crop if p.get('do_center_crop') else 'off'} is not the model's "
                f"{image_size}x{image_size} resize-and-crop"
            )
        mode = "shortest"
    else:
        size = _size_pair(size, f"{path}: size")
        crop = _size_pair(p.values.get("crop_size", size[0]), f"{path}: crop_size")
        if size != (image_size, image_size) or (p.get("do_center_crop") and crop != size):
            raise InputError(
                f"{path}: resize to {size} (crop {crop if p.get('do_center_crop') else 'off'}) "
                f"does not give the model's {image_size}x{image_size}"
            )
        mode = "squash"
    return PreprocessConfig(
        image_size=image_size, resize_mode=mode, interpolation=RESAMPLE[resample], mean=mean, std=std
    )


def _efficientnet_preprocess(p: _Fields, path: Path, image_size: int) -> PreprocessConfig:
    """EfficientNetImageProcessor: resize to a square, centre crop, x * rescale_factor (- 1 with rescale_offset),
    then (x - mean) / std with do_normalize, then x / std with include_top: as one (x / 255 - mean') / std'."""
    size = _size_pair(p.get("size"), f"{path}: size")
    crop = _size_pair(p.get("crop_size"), f"{path}: crop_size") if p.get("do_center_crop") else size
    if size[0] != size[1] or crop != (image_size, image_size) or size[0] < image_size:
        raise InputError(f"{path}: resize to {size} and crop {crop} do not give the model's {image_size}x{image_size}")
    if p.values.get("do_rescale") is False:
        raise InputError(f"{path}: do_rescale is false; jaxvlm always rescales pixels")
    factor = _number(p, "rescale_factor")
    mean = np.full(3, 1.0 / (255 * factor) if p.get("rescale_offset") else 0.0)  # x * f - 1 = (x / 255 - m) / s
    std = np.full(3, 1.0 / (255 * factor))
    if p.get("do_normalize"):
        mean, std = mean + np.asarray(p.get("image_mean")) * std, std * np.asarray(p.get("image_std"))
    if p.get("include_top"):
        std = std * np.asarray(p.get("image_std"))
    return PreprocessConfig(
        image_size=image_size,
        resize_mode="squash",
        interpolation=RESAMPLE[p.get("resample")],
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        resize_size=size[0] if size[0] != image_size else None,
    )


def _same_patch(p: _Fields, path: Path, patch_size: int) -> int:
    if p.values.get("patch_size", patch_size) != patch_size:
        raise InputError(f"{path}: patch_size {p.values['patch_size']!r} is not the model's {patch_size}")
    return patch_size


def _normalization(p: _Fields, path: Path) -> tuple[Any, Any]:
    """(mean, std) of the processor's rescale-and-normalise, which must start with / 255."""
    if p.values.get("do_rescale") is False:
        raise InputError(f"{path}: do_rescale is false; jaxvlm always scales pixels to [0, 1]")
    factor = p.values.get("rescale_factor", 1 / 255)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or abs(factor - 1 / 255) > 1e-12:
        raise InputError(f"{path}: rescale_factor {factor!r} is not 1/255")
    if p.values.get("do_normalize") is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return p.get("image_mean"), p.get("image_std")


# ---------------------------------------------------------------- tokenizer


def _special_token(src_dir: Path, name: str, default: str) -> str:
    """The content of a special token named by tokenizer_config.json or special_tokens_map.json."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = src_dir / file
        if path.is_file():
            value = read_json(path).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                return value
    return default


def _hf_json_pad(path: Path, src_dir: Path, model_type: str, config_pad: Any) -> int:
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises bare Exceptions
        raise InputError(f"cannot load tokenizer.json {path}: {e}") from None
    pad = backend.token_to_id(_special_token(src_dir, "pad_token", TOKENIZER_DEFAULTS[model_type]["pad_token"]))
    if pad is not None:
        return pad
    if isinstance(config_pad, int) and not isinstance(config_pad, bool) and config_pad >= 0:
        return config_pad
    raise InputError(f"{path}: cannot tell the padding token; name it as pad_token in {src_dir}/tokenizer_config.json")


def _sentencepiece_ids(path: Path, src_dir: Path) -> tuple[int, int]:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"cannot load SentencePiece model {path}: {e}") from None
    ids = []
    for name in ("pad_token", "eos_token"):  # SiglipTokenizer's defaults: '</s>' for both
        piece = _special_token(src_dir, name, TOKENIZER_DEFAULTS["siglip"][name])
        token = sp.piece_to_id(piece)
        if token == sp.unk_id() and piece != sp.id_to_piece(sp.unk_id()):
            raise InputError(f"{path}: the {name} {piece!r} is not in the SentencePiece vocabulary")
        ids.append(token)
    return ids[0], ids[1]


def _tokenizer_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".json"):
        return "hf_json"
    if name.endswith(".model"):
        return "sentencepiece"
    if name.endswith((".txt.gz", ".txt")):
        return "clip_bpe"
    raise InputError(
        f"cannot tell the kind of tokenizer file {path}: expected tokenizer.json, a SentencePiece "
        ".model, or CLIP's bpe_simple_vocab_16e6.txt.gz"
    )


def tokenizer_config(
    src_dir: Path, model_type: str, text: _Fields, context: int, tokenizer_path: Path | None
) -> tuple[TokenizerConfig, Path]:
    if tokenizer_path is not None:
        path = Path(tokenizer_path)
        if not path.is_file():
            raise InputError(f"no such tokenizer file: {path}")
        kind = _tokenizer_kind(path)
    else:
        # SiglipTokenizer is SentencePiece only: spiece.model is what transformers runs.
        found = [("spiece.model", "sentencepiece"), ("tokenizer.json", "hf_json")]
        if model_type != "siglip":  # CLIP and Siglip2 (Gemma) tokenizers run from tokenizer.json
            found.reverse()
        found = [(src_dir / name, kind) for name, kind in found if (src_dir / name).is_file()]
        if found:
            path, kind = found[0]
        elif (src_dir / "vocab.txt").is_file():  # BertTokenizer's vocabulary alone (Chinese-CLIP's repos)
            path, kind = _wordpiece_json(src_dir), "hf_json"
        elif model_type == "clip" and text.get("vocab_size") == 49408:
            path, kind = CLIP_BPE_FILE, "clip_bpe"
        else:
            raise InputError(
                f"{src_dir} holds no tokenizer (tokenizer.json or spiece.model); pass its file with --tokenizer"
            )
    if kind == "clip_bpe":
        return dataclasses.replace(CLIP_TOKENIZER, context_length=context), path
    if kind == "sentencepiece":
        pad, eos = _sentencepiece_ids(path, src_dir)
        return TokenizerConfig(
            kind="sentencepiece",
            file=SIGLIP_TOKENIZER_FILE,
            context_length=context,
            clean="canonicalize",
            pad_id=pad,
            eos_id=eos,
        ), path
    tokenizer_class = _tokenizer_class(src_dir, model_type)
    split = tokenizer_class in WHITESPACE_SPLIT_CLASSES
    if tokenizer_class in NLLB_CLASSES:
        path = _nllb_json(path, src_dir)
    pad = _hf_json_pad(path, src_dir, "xlm_roberta" if split else model_type, text.values.get("pad_token_id"))
    clean = HF_JSON_CLEANS.get(model_type, "none")
    return TokenizerConfig(
        kind="hf_json", file="tokenizer.json", context_length=context, clean=clean, pad_id=pad, whitespace_split=split
    ), path


# transformers' NLLB tokenizers, which replace the file's post-processor with their source language's template
NLLB_CLASSES = ("NllbTokenizer", "NllbTokenizerFast")


def _nllb_json(path: Path, src_dir: Path) -> Path:
    """``path`` with the post-processor transformers' NllbTokenizer sets whatever the file holds (facebook's
    nllb-200 files hold the legacy one): the source language's code (tokenizer_config.json's src_lang,
    eng_Latn by default) first and </s> last, or with legacy_behaviour </s> and the code last; a temporary copy."""
    import tempfile

    from tokenizers import Tokenizer, processors

    settings_path = src_dir / "tokenizer_config.json"
    settings = read_json(settings_path) if settings_path.is_file() else {}
    lang = settings.get("src_lang") or "eng_Latn"
    eos = _special_token(src_dir, "eos_token", "</s>")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises bare Exceptions
        raise InputError(f"cannot load tokenizer.json {path}: {e}") from None
    ids = {token: tokenizer.token_to_id(token) for token in (lang, eos)}
    if None in ids.values():
        missing = lang if ids[lang] is None else eos
        raise InputError(f"{path}: no token {missing!r} (NllbTokenizer's language or end token)")
    single = ["$A", eos, lang] if settings.get("legacy_behaviour") else [lang, "$A", eos]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=list(ids.items()))
    out = Path(tempfile.mkdtemp(prefix="jaxvlm-nllb-")) / "tokenizer.json"
    tokenizer.save(str(out))
    return out


def _wordpiece_json(src_dir: Path) -> Path:
    """The tokenizer.json of what transformers' BertTokenizer builds from ``src_dir``/vocab.txt (BERT's normaliser,
    with tokenizer_config.json's do_lower_case / tokenize_chinese_chars / strip_accents; [CLS] $A [SEP]),
    written to a temporary folder."""
    import tempfile

    from tokenizers.implementations import BertWordPieceTokenizer

    path = src_dir / "tokenizer_config.json"
    settings = read_json(path) if path.is_file() else {}
    try:
        tokenizer = BertWordPieceTokenizer(
            str(src_dir / "vocab.txt"),
            lowercase=settings.get("do_lower_case", True),
            handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
            strip_accents=settings.get("strip_accents"),
        )
    except Exception as e:  # the Rust side raises bare Exceptions
        raise InputError(f"cannot read the WordPiece vocabulary {src_dir / 'vocab.txt'}: {e}") from None
    out = Path(tempfile.mkdtemp(prefix="jaxvlm-wordpiece-")) / "tokenizer.json"
    tokenizer.save(str(out))
    return out


# transformers' classes that rebuild a tokenizer.json with a whitespace split ahead of its Metaspace pre-tokenizer
WHITESPACE_SPLIT_CLASSES = ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast")
TOKENIZER_CLASSES = {"metaclip_2": "XLMRobertaTokenizer", "xlm-roberta": "XLMRobertaTokenizer"}  # AutoTokenizer's


def _tokenizer_class(src_dir: Path, model_type: str) -> str | None:
    """The tokenizer class AutoTokenizer builds: tokenizer_config.json's, else that of the model type in the
    folder's config.json (facebook/xlm-v-base holds no tokenizer_config.json), else ``model_type``'s."""
    for file, key in (("tokenizer_config.json", "tokenizer_class"), ("config.json", "model_type")):
        path = src_dir / file
        value = read_json(path).get(key) if path.is_file() else None
        if isinstance(value, str):
            return value if key == "tokenizer_class" else TOKENIZER_CLASSES.get(value)
    return TOKENIZER_CLASSES.get(model_type)


# ---------------------------------------------------------------- entry point


def convert(src_dir: Path, model_name: str | None, tokenizer_path: Path | None = None) -> Converted:
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise InputError(
            f"{src_dir} is not a directory: the HF source is a model directory (config.json and model.safetensors)"
        )
    config_path = src_dir / "config.json"
    if not config_path.is_file():
        raise InputError(f"{src_dir} has no config.json: is it a HF transformers model directory?")
    hf_config = read_json(config_path)
    model_type, cfg = model_config(hf_config, str(config_path))
    if model_name:
        _check_model_name(model_name, cfg, str(config_path))
    weights, weights_path = _read_dir_weights(src_dir)
    what = f"{weights_path} as HF {MODEL_CLASSES[model_type]}"
    counters = tuple(k for k in weights if k.endswith(".num_batches_tracked"))  # BatchNorm's, no parameters
    src = SourceKeys(weights, what, ignore=NON_PARAMETERS + counters)
    flat = PARAM_READERS[model_type](src, cfg)
    src.check_all_used()
    prefix = f"{BATCH_STATS}/"
    stats = {k.removeprefix(prefix): flat.pop(k) for k in [k for k in flat if k.startswith(prefix)]}
    params = check_params(cfg, flat, what)
    batch_stats = check_params(cfg, stats, what, BATCH_STATS) if stats else {}
    preprocess = preprocess_config(src_dir, model_type, cfg.vision)
    if preprocess.resize_mode == "naflex":  # the model's sequence length is the processor's patch budget
        vision = dataclasses.replace(cfg.vision, max_num_patches=preprocess.max_num_patches)
        cfg = dataclasses.replace(cfg, vision=vision)
    text = _sub_config(hf_config, "text_config", DEFAULTS[model_type]["text_config"], str(config_path))
    tokenizer, tokenizer_source = tokenizer_config(src_dir, model_type, text, cfg.text.context_length, tokenizer_path)
    return Converted(
        cfg,
        params,
        preprocess,
        tokenizer,
        Path(tokenizer_source),
        {"source": "hf", "model_type": model_type, "weights": str(weights_path)},
        batch_stats,
    )
