"""open_clip hub repos -> jaxvlm: a directory as open_clip's `push_to_hf_hub` / `save_for_hf` write
it. `open_clip_config.json` holds the architecture (``model_cfg``, as in open_clip's
`model_configs/*.json`) and the preprocessing (``preprocess_cfg``), next to the weights and the
tokenizer's files. The config is read the way open_clip reads it (its dataclasses' defaults for
omitted fields; an option jaxvlm cannot build, or one open_clip does not know, is an error naming
it), so the directory needs no architecture name. The weights go through `jaxvlm.convert.open_clip`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxvlm.convert import hf
from jaxvlm.convert.common import Converted, flat_fields, read_json, read_weights
from jaxvlm.convert.open_clip import convert_variables, matching_form
from jaxvlm.errors import InputError
from jaxvlm.models.config import DecoderConfig, ModelConfig
from jaxvlm.models.registry import ARCHITECTURES, CLIP_TOKENIZER, get_architecture
from jaxvlm.models.towers import (
    ConvNeXtConfig,
    EvaViTConfig,
    HFTextConfig,
    ImageTowerConfig,
    TransformerTextConfig,
    ViTaminConfig,
    ViTConfig,
)
from jaxvlm.models.towers.fastvit import MCI, FastViTConfig
from jaxvlm.models.towers.modified_resnet import ModifiedResNetConfig
from jaxvlm.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE, TokenizerConfig

CONFIG_FILE = "open_clip_config.json"
# The weights open_clip takes from a repo directory, most preferred first (factory._find_checkpoint_in_dir).
REPO_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)

# open_clip's config dataclasses, field -> default (what an omitted field means): CLIPVisionCfg and
# CLIPTextCfg (model.py), MultimodalCfg (coca_model.py). A key that is not here is no open_clip option.
_ATTENTION_OPTIONS = {
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
VISION_FIELDS: dict[str, Any] = {
    "layers": 12,
    "width": 768,
    "head_width": 64,
    "mlp_ratio": 4.0,
    "patch_size": 16,
    "image_size": 224,
    "ls_init_value": None,
    "patch_dropout": 0.0,
    "attentional_pool": False,
    "attn_pooler_queries": 256,
    "attn_pooler_heads": 8,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    **_ATTENTION_OPTIONS,
    "timm_model_name": None,
    "timm_model_pretrained": False,
    "timm_pool": "avg",
    "timm_proj": "linear",
    "timm_proj_bias": False,
    "timm_drop": 0.0,
    "timm_drop_path": None,
}
TEXT_FIELDS: dict[str, Any] = {
    "context_length": 77,
    "vocab_size": 49408,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
    "ls_init_value": None,
    "embed_cls": False,
    "pad_id": 0,
    "eos_id": 2,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    **_ATTENTION_OPTIONS,
    "hf_model_name": None,
    "hf_model_pretrained": True,
    "hf_proj_type": "mlp",
    "hf_pooler_type": "mean_pooler",
}
MULTIMODAL_FIELDS: dict[str, Any] = {
    **TEXT_FIELDS,
    "mlp_ratio": 4,
    "dim_head": 64,
    "heads": 8,
    "n_queries": 256,
    "attn_pooler_heads": 8,
}
# model_cfg's own keys: the arguments of open_clip's CLIP / CustomTextCLIP and of CoCa (None: no
# default), and the factory's custom_text
CLIP_FIELDS: dict[str, Any] = {
    "embed_dim": None,
    "vision_cfg": None,
    "text_cfg": None,
    "quick_gelu": False,
    "init_logit_scale": None,  # open_clip's log(1 / 0.07); SigLIP (a logit bias) trains from log(10)
    "init_logit_bias": None,
    "nonscalar_logit_scale": False,  # t and b of shape [1]: read as scalars all the same
    "output_dict": False,
    "custom_text": False,
}
COCA_FIELDS: dict[str, Any] = {
    **{k: v for k, v in CLIP_FIELDS.items() if k != "output_dict"},
    "multimodal_cfg": None,
    "pad_id": 0,  # the caption loss's padding label
}
# open_clip's PreprocessCfg fields (transform.py); it ignores other keys and null values
PREPROCESS_FIELDS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclasses.dataclass(frozen=True)
class TimmViT:
    """What timm builds for one model name open_clip's timm image tower uses: a SigLIP ViT without
    class token or pre-LN, with patch bias, LayerNorm eps 1e-6 and the MAP head."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str  # "gelu": timm's default nn.GELU; "gelu_tanh": act_layer='gelu_tanh'


def _timm_siglip_vits() -> dict[str, TimmViT]:
    """timm's vit_*_siglip_* models with the MAP head (vision_transformer.py's model_args), by name."""
    sizes = {  # embed_dim, depth, num_heads, int(embed_dim * mlp_ratio)
        "base": (768, 12, 12, 3072),
        "large": (1024, 24, 16, 4096),
        "so400m": (1152, 27, 16, 4304),
        "giantopt": (1536, 40, 16, 6144),
    }
    acts = {
        "vit_base_patch32_siglip_256": "gelu_tanh",
        "vit_base_patch16_siglip_224": "gelu",
        "vit_base_patch16_siglip_256": "gelu",
        "vit_base_patch16_siglip_384": "gelu",
        "vit_base_patch16_siglip_512": "gelu",
        "vit_large_patch16_siglip_256": "gelu",
        "vit_large_patch16_siglip_384": "gelu",
        "vit_large_patch16_siglip_512": "gelu_tanh",
        "vit_so400m_patch14_siglip_224": "gelu",
        "vit_so400m_patch14_siglip_378": "gelu",
        "vit_so400m_patch14_siglip_384": "gelu",
        "vit_so400m_patch16_siglip_256": "gelu_tanh",
        "vit_so400m_patch16_siglip_384": "gelu_tanh",
        "vit_so400m_patch16_siglip_512": "gelu_tanh",
        "vit_giantopt_patch16_siglip_256": "gelu_tanh",
        "vit_giantopt_patch16_siglip_384": "gelu_tanh",
    }
    vits = {}
    for name, act in acts.items():
        size, patch, image = re.fullmatch(r"vit_([a-z0-9]+)_patch(\d+)_siglip_(\d+)", name).groups()
        width, depth, heads, mlp_dim = sizes[size]
        vits[name] = TimmViT(int(image), int(patch), width, depth, heads, mlp_dim, act)
    return vits


TIMM_VITS: dict[str, TimmViT] = _timm_siglip_vits()


def _timm_eva_vits() -> dict[str, EvaViTConfig]:
    """What timm builds with its Eva class for the models open_clip uses (eva.py's model_args), by name.
    vit_pe_core_*: exact GELU, LayerNorm eps 1e-5, an 8-head MAP head with a 4x MLP, RoPE coordinates scaled
    to ref_feat_shape, and the classifier head (open_clip's projection, with bias). The EVA towers are the
    registered EVA architectures' (`jaxvlm.models.registry.eva`)."""
    sizes = {  # img_size, patch_size, embed_dim, depth, num_heads, MLP width, class_token, rope_grid_offset, ref
        "vit_pe_core_tiny_patch16_384": (384, 16, 192, 12, 3, 768, True, 1.0, 24),
        "vit_pe_core_small_patch16_384": (384, 16, 384, 12, 6, 1536, True, 1.0, 24),
        "vit_pe_core_base_patch16_224": (224, 16, 768, 12, 12, 3072, True, 1.0, 14),
        "vit_pe_core_large_patch14_336": (336, 14, 1024, 24, 16, 4096, True, 1.0, 24),
        "vit_pe_core_gigantic_patch14_448": (448, 14, 1536, 50, 16, 8960, False, 0.0, 32),
    }
    vits = {}
    for name, (image, patch, width, depth, heads, mlp_dim, cls, offset, ref) in sizes.items():
        vits[name] = EvaViTConfig(
            image_size=image,
            patch_size=patch,
            width=width,
            depth=depth,
            heads=heads,
            mlp_dim=mlp_dim,
            pool_heads=8,
            pool_mlp_dim=4 * width,
            class_token=cls,
            rope_offset=offset,
            rope_ref_grid=ref,
        )
    eva = {
        "eva_giant_patch14_224": "EVA01-g-14",
        "eva02_base_patch16_clip_224": "EVA02-B-16",
        "eva02_large_patch14_clip_224": "EVA02-L-14",
        "eva02_large_patch14_clip_336": "EVA02-L-14-336",
        "eva02_enormous_patch14_clip_224": "EVA02-E-14",
    }
    return {**vits, **{name: ARCHITECTURES[arch].model.vision for name, arch in eva.items()}}


TIMM_EVA_VITS: dict[str, EvaViTConfig] = _timm_eva_vits()
# timm's VisionTransformer models (and its hybrid behind a ConvStem) that open_clip's MobileCLIPs use, in eva_vit's
# terms: the registered architectures' (`jaxvlm.models.registry.mobileclip`)
TIMM_PLAIN_VITS: dict[str, EvaViTConfig] = {
    name: ARCHITECTURES[arch].model.vision
    for name, arch in {"vit_base_mci_224": "MobileCLIP-B", "vit_large_patch14_clip_224": "MobileCLIP2-L-14"}.items()
}


def _timm_convnexts() -> dict[str, ConvNeXtConfig]:
    """timm's ConvNeXts (convnext.py's model_args; patch stem, channels-last MLP blocks, layer scale), by name,
    at timm's default 224 px: open_clip builds them at its own image_size."""
    sizes = {  # depths, dims
        "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
        "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
        "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
        "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
        "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
        "convnext_xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072)),
    }
    eps = {"convnext_xxlarge": 1e-5}  # its norm_eps; timm's LayerNorms default to 1e-6
    return {
        name: ConvNeXtConfig(image_size=224, depths=depths, dims=dims, ln_eps=eps.get(name, 1e-6))
        for name, (depths, dims) in sizes.items()
    }


TIMM_CONVNEXTS: dict[str, ConvNeXtConfig] = _timm_convnexts()


def _timm_vitamins() -> dict[str, ViTaminConfig]:
    """timm's vitamin_* towers (vitamin.py's embed_cfg and model_args), by name, at the image size timm builds
    them for: the registered ViTamin architectures' (`jaxvlm.models.registry.vitamin`)."""
    towers = {"small": "ViTamin-S", "base": "ViTamin-B", "large": "ViTamin-L", "large2": "ViTamin-L2"}
    names = {f"vitamin_{t}_224": arch for t, arch in towers.items()}
    names.update({f"vitamin_{t}_{s}": f"{towers[t]}-{s}" for t in ("large", "large2") for s in (256, 336, 384)})
    names.update({f"vitamin_xlarge_{s}": f"ViTamin-XL-{s}" for s in (256, 336, 384)})
    return {
        name: ARCHITECTURES[arch].model.vision.replace(image_size=int(name.rsplit("_", 1)[1]))
        for name, arch in names.items()
    }


TIMM_VITAMINS: dict[str, ViTaminConfig] = _timm_vitamins()


class _Fields:
    """One of model_cfg's objects over open_clip's defaults, with typed access; a key open_clip
    does not know is an error (open_clip's dataclass would refuse it too)."""

    def __init__(self, values: Any, fields: Mapping[str, Any], where: str, what: str):
        if not isinstance(values, Mapping):
            raise InputError(f"{where} must be a JSON object, got {type(values).__name__}")
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise InputError(
                f"{where}.{unknown[0]} is not an option of open_clip's {what}; jaxvlm cannot tell what it changes"
            )
        self.values, self.defaults, self.where = {**fields, **values}, fields, where

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def int(self, key: str, low: int = 1) -> int:
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{self.where}.{key} must be an integer >= {low}, got {value!r}")
        return value

    def square(self, key: str) -> int:
        """image_size / patch_size: an int or a [height, width] pair, which must be square."""
        value = self.values[key]
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{self.where}.{key} must be a positive integer (or a square pair), got {value!r}")
        return value

    def number(self, key: str) -> float:
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{self.where}.{key} must be a number, got {value!r}")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.values[key]
        if not isinstance(value, bool):
            raise InputError(f"{self.where}.{key} must be true or false, got {value!r}")
        return value

    def only(self, key: str, *allowed: Any) -> Any:
        """The value, which must be one of ``allowed`` (default: open_clip's default) — the others
        build something jaxvlm cannot."""
        allowed = allowed or (self.defaults[key],)
        value = self.values[key]
        if value not in allowed:
            raise InputError(
                f"{self.where}.{key} is {value!r}; jaxvlm cannot convert that yet (it converts "
                f"{' or '.join(map(repr, allowed))})"
            )
        return value

    def kwargs(self, key: str, allowed: tuple[str, ...]) -> dict:
        value = self.values[key] or {}
        if not isinstance(value, Mapping) or set(value) - set(allowed):
            raise InputError(
                f"{self.where}.{key} is {value!r}; jaxvlm converts only {', '.join(allowed) or 'no'} options there"
            )
        return dict(value)


def _act(section: _Fields, quick_gelu: bool) -> str:
    """open_clip's act_layer: QuickGELU with quick_gelu, else nn.GELU (act_kwargs: its approximate)."""
    kwargs = section.kwargs("act_kwargs", () if quick_gelu else ("approximate",))
    if quick_gelu:
        return "quick_gelu"
    approximate = kwargs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise InputError(f"{section.where}.act_kwargs.approximate is {approximate!r}; GELU's are 'none' and 'tanh'")
    return "gelu_tanh" if approximate == "tanh" else "gelu"


def _ln_eps(section: _Fields) -> float:
    eps = section.kwargs("norm_kwargs", ("eps",)).get("eps", 1e-5)  # torch LayerNorm's default
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise InputError(f"{section.where}.norm_kwargs.eps must be a small positive number, got {eps!r}")
    return float(eps)


def _check_plain_blocks(section: _Fields) -> None:
    """Layer scale and open_clip's custom attention blocks: no jaxvlm tower has them."""
    section.only("ls_init_value")
    section.only("block_type", None, "default")
    for key in _ATTENTION_OPTIONS:
        if key != "block_type":
            section.only(key)


def _vision_config(v: _Fields, quick_gelu: bool) -> ImageTowerConfig:
    if v["timm_model_name"] is not None:
        return _timm_vision_config(v)
    if isinstance(v["layers"], (list, tuple)):
        return _modified_resnet_config(v)
    _check_plain_blocks(v)
    v.only("pos_embed_type")
    attentional = v.only("attentional_pool", False, True)  # "parallel" / "cascade": two poolers
    width, head_width = v.int("width"), v.int("head_width")
    if width % head_width:
        raise InputError(f"{v.where}.width {width} is not a multiple of head_width {head_width}")
    if attentional:  # the pooler's first query is pooled; open_clip ignores final_ln_after_pool then
        v.only("pool_type")
        pool = dict(
            pool="attn_pool", attn_pool_queries=v.int("attn_pooler_queries"), attn_pool_heads=v.int("attn_pooler_heads")
        )
    else:  # 'avg' (CLIPA): the mean of the patch tokens, the class token left out
        pool = dict(
            pool={"tok": "cls", "avg": "gap"}[v.only("pool_type", "tok", "avg")],
            norm_after_pool=v.flag("final_ln_after_pool"),
        )
    return ViTConfig(
        image_size=v.square("image_size"),
        patch_size=v.square("patch_size"),
        width=width,
        depth=v.int("layers"),
        heads=width // head_width,
        mlp_dim=int(width * v.number("mlp_ratio")),
        act=_act(v, quick_gelu),
        ln_eps=_ln_eps(v),
        pre_norm=not v.flag("no_ln_pre"),
        **pool,
    )


def _modified_resnet_config(v: _Fields) -> ModifiedResNetConfig:
    """open_clip's ModifiedResNet (layers: four stage depths), which reads only these four fields."""
    layers = v["layers"]
    if len(layers) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in layers):
        raise InputError(f"{v.where}.layers must be four positive block counts, got {list(layers)}")
    width, head_width = v.int("width"), v.int("head_width")
    if (width * 32) % head_width:
        raise InputError(f"{v.where}: the ResNet's width {width} * 32 is not a multiple of head_width {head_width}")
    return ModifiedResNetConfig(
        image_size=v.square("image_size"), layers=tuple(layers), width=width, heads=width * 32 // head_width
    )


def _timm_vision_config(v: _Fields) -> ImageTowerConfig:
    """open_clip's TimmModel: the named timm trunk (open_clip's own ViT fields do not apply), timm's GELU
    whatever quick_gelu says, and with timm_proj 'none' no projection."""
    name = v["timm_model_name"]
    if isinstance(name, str) and name in TIMM_EVA_VITS:
        return _timm_eva_config(v, TIMM_EVA_VITS[name])
    if isinstance(name, str) and name in TIMM_PLAIN_VITS:
        return _timm_eva_config(v, TIMM_PLAIN_VITS[name])
    if isinstance(name, str) and name in TIMM_CONVNEXTS:
        return _timm_convnext_config(v, TIMM_CONVNEXTS[name])
    if isinstance(name, str) and name in TIMM_VITAMINS:
        return _timm_vitamin_config(v, TIMM_VITAMINS[name])
    if isinstance(name, str) and name in MCI:
        return _timm_fastvit_config(v, MCI[name])
    tower = TIMM_VITS.get(name) if isinstance(name, str) else None
    if tower is None:
        raise InputError(
            f"{v.where}.timm_model_name is {name!r}; jaxvlm converts open_clip's timm image towers only for "
            f"timm's SigLIP, PE-Core and EVA ViTs, ConvNeXts, ViTamins, FastViT MCis (e.g. {next(iter(TIMM_VITS))}), "
            "not this one yet"
        )
    v.only("timm_pool", "map")
    v.only("timm_proj", "none")
    size = v.square("image_size")
    if size != tower.image_size:
        raise InputError(f"{v.where}.image_size is {size}, but timm builds {name} for {tower.image_size}")
    return ViTConfig(
        image_size=tower.image_size,
        patch_size=tower.patch_size,
        width=tower.width,
        depth=tower.depth,
        heads=tower.heads,
        mlp_dim=tower.mlp_dim,
        act=tower.act,
        ln_eps=1e-6,
        patch_bias=True,
        class_token=False,
        pre_norm=False,
        pool="map",
        proj=False,
    )


def _timm_eva_config(v: _Fields, tower: EvaViTConfig) -> EvaViTConfig:
    """A timm Eva trunk (PE-Core's MAP-pooled, EVA's pooled by the class token): with timm_proj null its
    classifier head (with bias) projects to embed_dim, with 'none' there is no head."""
    v.only("timm_pool", "map" if tower.pool == "map" else "token")
    proj = v.only("timm_proj", None, "none") is None
    size, name = v.square("image_size"), v["timm_model_name"]
    if size != tower.image_size:
        raise InputError(f"{v.where}.image_size is {size}, but timm builds {name} for {tower.image_size}")
    return tower.replace(proj=proj, proj_bias=proj)


def _timm_convnext_config(v: _Fields, tower: ConvNeXtConfig) -> ConvNeXtConfig:
    """A timm ConvNeXt trunk (fully convolutional: any image_size) pooled by timm's head (its average, timm_pool
    '' or 'avg', then LayerNorm) and projected by open_clip's head ('linear' or 'mlp'). Dropout and drop path
    change training only."""
    v.only("timm_pool", "", "avg")
    return tower.replace(
        image_size=v.square("image_size"), head=v.only("timm_proj", "linear", "mlp"), proj_bias=v.flag("timm_proj_bias")
    )


def _timm_vitamin_config(v: _Fields, tower: ViTaminConfig) -> ViTaminConfig:
    """A timm ViTamin trunk, pooled by its own average and fc_norm (timm_pool '', which leaves timm's 'avg') and
    projected by open_clip's linear head. timm builds it for its own image size, whatever image_size says: with
    learned positions that is the only size it runs at; without (xlarge), open_clip's image_size is used."""
    v.only("timm_pool", "", "avg")
    v.only("timm_proj", "linear")
    size, name = v.square("image_size"), v["timm_model_name"]
    if tower.pos_embed and size != tower.image_size:
        raise InputError(f"{v.where}.image_size is {size}, but timm builds {name} for {tower.image_size}")
    return tower.replace(image_size=size, proj_bias=v.flag("timm_proj_bias"))


def _timm_fastvit_config(v: _Fields, tower: FastViTConfig) -> FastViTConfig:
    """A timm FastVit MCi trunk (fully convolutional: any image_size) with its own classifier head (with bias) as
    the projection: timm_pool 'avg' and timm_proj null. The multi-branch form; the weights may say folded
    (`jaxvlm.convert.open_clip.matching_form`)."""
    v.only("timm_pool", "avg")
    v.only("timm_proj", None)
    return tower.replace(image_size=v.square("image_size"))


# The HF model configs open_clip's HFTextEncoder builds from hf_model_name's config.json, by model_type:
# transformers' defaults for omitted fields, and what jaxvlm's hf_encoder tower takes from each
HF_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "position_embedding_type": "absolute",
    },
    "roberta": {
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 1,
        "type_vocab_size": 2,
        "position_embedding_type": "absolute",
    },
    "m2m_100": {"activation_function": "relu", "pad_token_id": 1, "scale_embedding": True},
}
HF_TEXT_DEFAULTS["xlm-roberta"] = HF_TEXT_DEFAULTS["roberta"]
HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
# open_clip's hf_pooler_type -> hf_encoder pool; "cls_pooler" reads BERT's pooler where the HF model has one
HF_POOLERS = {"mean_pooler": "mean", "cls_pooler": "cls", "cls_last_hidden_state_pooler": "cls"}


def _hf_text_config(t: _Fields, embed_dim: int, hf_config: Mapping[str, Any], where: str) -> HFTextConfig:
    """open_clip's HFTextEncoder over the HF model whose config.json is ``hf_config``: BERT, RoBERTa,
    XLM-R or M2M100 (NLLB; open_clip keeps its encoder)."""
    model_type = hf_config.get("model_type")
    if model_type not in HF_TEXT_DEFAULTS:
        raise InputError(
            f"{where}: model_type {model_type!r} is a HF text tower jaxvlm cannot build (it builds "
            f"{', '.join(HF_TEXT_DEFAULTS)})"
        )
    values = {k: v for k, v in hf_config.items() if v is not None}
    c = _Fields(values, {**HF_TEXT_DEFAULTS[model_type], **values}, where, model_type)
    pool = HF_POOLERS.get(t.only("hf_pooler_type", *HF_POOLERS))
    proj = t.only("hf_proj_type", "linear", "mlp", None) or "none"
    m2m = model_type == "m2m_100"
    if m2m:
        width, act = c.int("d_model"), c["activation_function"]
        sizes = dict(depth=c.int("encoder_layers"), heads=c.int("encoder_attention_heads"))
        family = dict(
            mlp_dim=c.int("encoder_ffn_dim"),
            ln_eps=1e-5,
            positions="sinusoidal",
            position_ids="after_padding",
            type_vocab_size=0,
            embed_scale=c.flag("scale_embedding"),
            embed_norm=False,
            post_norm=False,
        )
    else:
        width, act = c.int("hidden_size"), c["hidden_act"]
        sizes = dict(depth=c.int("num_hidden_layers"), heads=c.int("num_attention_heads"))
        c.only("position_embedding_type", "absolute")
        family = dict(
            mlp_dim=c.int("intermediate_size"),
            ln_eps=c.number("layer_norm_eps"),
            position_ids="arange" if model_type == "bert" else "after_padding",
            type_vocab_size=c.int("type_vocab_size", low=0),
        )
        if t["hf_pooler_type"] == "cls_pooler":  # the HF model's pooler (dense + tanh) gives pooler_output
            pool = "pooler"
    if act not in HF_ACTIVATIONS:
        raise InputError(f"{where}: activation {act!r}; jaxvlm's hf_encoder computes {', '.join(HF_ACTIVATIONS)}")
    if proj == "none" and width != embed_dim:
        raise InputError(f"{t.where}.hf_proj_type is null but the HF width {width} is not embed_dim {embed_dim}")
    return HFTextConfig(
        vocab_size=c.int("vocab_size"),
        context_length=t.int("context_length"),
        width=width,
        **sizes,
        max_positions=c.int("max_position_embeddings"),
        act=HF_ACTIVATIONS[act],
        pad_id=c.int("pad_token_id", low=0),
        pool=pool,
        proj=proj,
        **family,
    )


def _hub_model_config(repo: str, where: str) -> Mapping[str, Any]:
    """The config.json of hub repo ``repo`` (open_clip's ``hf_model_name``), downloaded as open_clip does."""
    from jaxvlm import hub

    if not isinstance(repo, str) or not repo:
        raise InputError(f"{where}.hf_model_name must be a hub repo name, got {repo!r}")
    try:
        snapshot = hub.download(repo, None, only=["config.json"])
    except InputError as e:
        raise InputError(f"{where}.hf_model_name (its config.json): {e}") from None
    if not (snapshot / "config.json").is_file():
        raise InputError(f"{where}.hf_model_name: hf-hub:{repo} holds no config.json")
    return read_json(snapshot / "config.json")


def _text_config(t: _Fields, quick_gelu: bool, custom_text: bool) -> TransformerTextConfig:
    """open_clip's TextTransformer (CLIP keeps its parts at the top level, CustomTextCLIP and CoCa under
    ``text.``; the converter reads both)."""
    _check_plain_blocks(t)
    proj = t.only("proj_type", "linear", "none") == "linear"  # 'none': the pooled features are the embedding
    width = t.int("width")
    common = dict(
        vocab_size=t.int("vocab_size"),
        context_length=t.int("context_length"),
        width=width,
        depth=t.int("layers"),
        heads=t.int("heads"),
        mlp_dim=int(width * t.number("mlp_ratio")),
        act=_act(t, quick_gelu),
        ln_eps=_ln_eps(t),
        causal=not t.flag("no_causal_mask"),
        proj=proj,
        proj_bias=proj and t.flag("proj_bias"),
    )
    if t.flag("embed_cls"):  # CoCa: the appended class token is pooled, with open_clip's shifted padding mask
        if not custom_text:
            raise InputError(f"{t.where}.embed_cls needs custom_text: open_clip's CLIP class has no text class token")
        return TransformerTextConfig(
            **common, pool="last", append_cls=True, pad_mask="shifted", pad_id=t.int("pad_id", low=0)
        )
    pool = t.only("pool_type", "argmax", "eos", "last", "first")
    return TransformerTextConfig(**common, pool=pool, **({"eos_id": t.int("eos_id", low=0)} if pool == "eos" else {}))


def _decoder_config(m: _Fields, text: TransformerTextConfig, quick_gelu: bool) -> DecoderConfig:
    """CoCa's MultimodalTransformer: open_clip builds it from context_length, width, heads, layers and
    ls_init_value only (4x MLP, default LayerNorm), with the text tower's vocabulary as its output."""
    m.only("ls_init_value")
    width = m.int("width")
    return DecoderConfig(
        vocab_size=text.vocab_size,
        context_length=m.int("context_length"),
        width=width,
        depth=m.int("layers"),
        heads=m.int("heads"),
        mlp_dim=4 * width,
        act="quick_gelu" if quick_gelu else "gelu",
    )


def model_config_from_open_clip(model_cfg: Mapping[str, Any], where: str) -> ModelConfig:
    """The jaxvlm ModelConfig of an open_clip model config (``model_cfg`` of open_clip_config.json, or
    one of open_clip's ``model_configs/*.json``): open_clip's ViT, ModifiedResNet and text transformer (CLIP,
    QuickGELU, CoCa with its attentional pooler and decoder) or timm's SigLIP and PE-Core ViTs with open_clip's
    text tower, or its HFTextEncoder (BERT, RoBERTa, XLM-R, NLLB: sized by hf_model_name's config.json,
    downloaded as open_clip downloads it).

    ``where`` names the architecture in errors. What jaxvlm cannot build (timm towers it has no table of,
    other HF text models, layer scale, ...) and keys open_clip does not know are one InputError naming the field.
    """
    try:
        return _model_config(model_cfg)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def _model_config(cfg: Mapping[str, Any]) -> ModelConfig:
    if not isinstance(cfg, Mapping):
        raise InputError(f"model_cfg must be a JSON object, got {type(cfg).__name__}")
    coca = "multimodal_cfg" in cfg
    top = _Fields(cfg, COCA_FIELDS if coca else CLIP_FIELDS, "model_cfg", "CoCa" if coca else "CLIP")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise InputError(f"model_cfg has no {key}")
    custom_text = top.flag("custom_text")
    if coca and not custom_text:
        raise InputError("model_cfg has multimodal_cfg (CoCa) without custom_text: open_clip builds CoCa only with it")
    quick_gelu = top.flag("quick_gelu")
    vision = _vision_config(_Fields(cfg["vision_cfg"], VISION_FIELDS, "vision_cfg", "CLIPVisionCfg"), quick_gelu)
    text_fields = _Fields(cfg["text_cfg"], TEXT_FIELDS, "text_cfg", "CLIPTextCfg")
    if text_fields["hf_model_name"] is not None:  # open_clip builds these with custom_text
        hf_config = _hub_model_config(text_fields["hf_model_name"], text_fields.where)
        text = _hf_text_config(text_fields, top.int("embed_dim"), hf_config, f"{text_fields.where}.hf_model_name")
    else:
        text = _text_config(text_fields, quick_gelu, custom_text)
    decoder = None
    if coca:
        multimodal = _Fields(cfg["multimodal_cfg"], MULTIMODAL_FIELDS, "multimodal_cfg", "MultimodalCfg")
        decoder = _decoder_config(multimodal, text, quick_gelu)
    top.flag("nonscalar_logit_scale")
    bias = None if top["init_logit_bias"] is None else top.number("init_logit_bias")
    if top["init_logit_scale"] is not None:
        scale = top.number("init_logit_scale")
    else:  # what open_clip (softmax) and open_clip_train's --siglip (sigmoid) start from
        scale = math.log(10.0) if bias is not None else math.log(1 / 0.07)
    return ModelConfig(
        embed_dim=top.int("embed_dim"),
        vision=vision,
        text=text,
        loss="softmax" if bias is None else "sigmoid",  # only the sigmoid loss has a bias
        logit_scale_init=scale,
        logit_bias_init=bias,
        decoder=decoder,
    )


def registered_name(cfg: ModelConfig) -> str | None:
    """The name of the registered architecture (`jaxvlm list`) whose model config is ``cfg``, if any."""
    return next((name for name, arch in ARCHITECTURES.items() if arch.model == cfg), None)


def preprocess_from_open_clip(preprocess_cfg: Mapping[str, Any], image_size: int, where: str) -> PreprocessConfig:
    """open_clip's eval transform for ``preprocess_cfg`` (its PreprocessCfg fields), read as open_clip
    reads it: unknown keys and null values are ignored, ``size`` is the image tower's (open_clip puts
    the model's own there), 'random' interpolation is bicubic at eval, and ``fill_color`` only pads
    for resize_mode 'longest' — which jaxvlm does not do (an error, as other modes and colour modes)."""
    if not isinstance(preprocess_cfg, Mapping):
        raise InputError(f"{where} must be a JSON object, got {type(preprocess_cfg).__name__}")
    values = {k: v for k, v in preprocess_cfg.items() if k in PREPROCESS_FIELDS and v is not None}
    if values.get("mode", "RGB") != "RGB":
        raise InputError(f"{where}.mode is {values['mode']!r}; open_clip and jaxvlm read RGB only")
    resize_mode = values.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        raise InputError(
            f"{where}.resize_mode is {resize_mode!r}; jaxvlm preprocesses with 'shortest' (resize and centre "
            "crop) or 'squash', not open_clip's 'longest' (resize and pad)"
            if resize_mode == "longest"
            else f"{where}.resize_mode is {resize_mode!r}; expected 'shortest' or 'squash'"
        )
    interpolation = values.get("interpolation", "bicubic")
    interpolation = "bicubic" if interpolation == "random" else interpolation  # open_clip's eval transform
    if interpolation not in ("bicubic", "bilinear"):
        raise InputError(f"{where}.interpolation is {interpolation!r}; expected 'bicubic' or 'bilinear'")

    def channels(key: str, default: tuple[float, float, float]) -> Any:
        value = values.get(key, default)  # open_clip repeats one number over the three channels
        return (value,) * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    try:
        return PreprocessConfig(
            image_size=image_size,
            resize_mode=resize_mode,
            interpolation=interpolation,
            mean=channels("mean", OPENAI_MEAN),
            std=channels("std", OPENAI_STD),
        )
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


# open_clip's tokenizer cleaning options (tokenizer.get_clean_fn), which jaxvlm's clean modes repeat
OPEN_CLIP_CLEANS = ("lower", "whitespace", "canonicalize")
# the tokenizer files transformers' AutoTokenizer reads from a directory, most preferred first
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")
TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")  # where the special tokens are named
CLIP_VOCAB_SIZE = 49408  # the ids open_clip's SimpleTokenizer gives (CLIP's BPE)


def tokenizer_from_open_clip(
    src_dir: Path, text_cfg: Mapping[str, Any], context_length: int, tokenizer_path: Path | None, where: str
) -> tuple[TokenizerConfig, Path]:
    """The tokenizer open_clip runs for a repo directory (factory.get_tokenizer with ``local-dir:``),
    and the file to copy: with ``hf_tokenizer_name``, its HFTokenizer over the directory's own tokenizer
    files (tokenizer.json, else a SentencePiece model), or, when it has none, those of the hub repo
    ``hf_tokenizer_name`` (downloaded, as open_clip does); without, its SimpleTokenizer — CLIP's BPE, bundled
    with jaxvlm (a tokenizer.json next to it is not what open_clip runs). ``tokenizer_path`` (--tokenizer)
    replaces the files. The padding and end tokens come from the directory's tokenizer_config.json /
    special_tokens_map.json, as in the HF converter, or are BERT's for a WordPiece tokenizer.json (CLIPA's
    bert-base-uncased names none). ``strip_sep_token`` (CLIPA): the separator id becomes padding."""

    t = _Fields(text_cfg, TEXT_FIELDS, f"{where} text_cfg", "CLIPTextCfg")
    hf_name = t["hf_tokenizer_name"]
    if t["tokenizer_mode"]:
        t.only("tokenizer_mode")
    kwargs = t.kwargs("tokenizer_kwargs", ("clean", "strip_sep_token"))
    clean = kwargs.get("clean", "whitespace" if hf_name else "lower")
    if clean not in OPEN_CLIP_CLEANS:
        raise InputError(
            f"{t.where}.tokenizer_kwargs.clean is {clean!r}; open_clip's are {', '.join(OPEN_CLIP_CLEANS)}"
        )
    if tokenizer_path is not None:
        path = Path(tokenizer_path)
    elif hf_name:
        if not any((src_dir / name).is_file() for name in TOKENIZER_FILES):
            src_dir = _hub_tokenizer(hf_name, t.where)
        path = next(src_dir / name for name in TOKENIZER_FILES if (src_dir / name).is_file())
    else:
        vocab = t["vocab_size"]
        if isinstance(vocab, int) and vocab < CLIP_VOCAB_SIZE:
            raise InputError(
                f"{t.where}.vocab_size {vocab} is smaller than CLIP's BPE vocabulary ({CLIP_VOCAB_SIZE}), the "
                "tokenizer open_clip uses without hf_tokenizer_name: pass the model's tokenizer with --tokenizer"
            )
        return dataclasses.replace(CLIP_TOKENIZER, context_length=context_length, clean=clean), CLIP_BPE_FILE
    family = "bert" if _is_wordpiece(path) else "clip"
    tokenizer, source = hf.tokenizer_config(src_dir, family, hf._Fields({}, {}, where), context_length, path)
    if kwargs.get("strip_sep_token"):
        if tokenizer.kind != "hf_json":
            raise InputError(f"{t.where}.tokenizer_kwargs.strip_sep_token needs a tokenizer.json, not {source}")
        tokenizer = tokenizer.replace(strip_id=_sep_id(Path(source), src_dir, family, tokenizer.pad_id, t.where))
    if tokenizer.kind != "sentencepiece":
        return dataclasses.replace(tokenizer, clean=clean), Path(source)
    if clean != "canonicalize":  # jaxvlm runs SentencePiece as SigLIP's tokenizer: lower case, no punctuation
        raise InputError(
            f"{t.where}.tokenizer_kwargs.clean is {clean!r}; jaxvlm runs a SentencePiece model with open_clip's "
            f"'canonicalize' only: convert with the repo's tokenizer.json instead ({source})"
        )
    return tokenizer, Path(source)


def _is_wordpiece(path: Path) -> bool:
    from tokenizers import Tokenizer, models

    try:
        return path.suffix == ".json" and isinstance(Tokenizer.from_file(str(path)).model, models.WordPiece)
    except Exception:  # the Rust side raises bare Exceptions; hf.tokenizer_config names the unreadable file
        return False


def _sep_id(path: Path, src_dir: Path, family: str, pad_id: int, where: str) -> int:
    """The id of the separator token open_clip's strip_sep_token zeroes: jaxvlm pads it, so padding must be 0."""
    from tokenizers import Tokenizer

    name = hf._special_token(src_dir, "sep_token", hf.TOKENIZER_DEFAULTS[family].get("sep_token", ""))
    sep = Tokenizer.from_file(str(path)).token_to_id(name) if name else None
    if sep is None:
        raise InputError(
            f"{where}.tokenizer_kwargs.strip_sep_token: {path} has no separator token; name it as sep_token in "
            f"{src_dir}/tokenizer_config.json"
        )
    if pad_id != 0:
        raise InputError(
            f"{where}.tokenizer_kwargs.strip_sep_token zeroes the separator, but {path} pads with {pad_id}"
        )
    return sep


def _hub_tokenizer(repo: str, where: str) -> Path:
    """The folder of the tokenizer files of hub repo ``repo`` (open_clip's ``hf_tokenizer_name``), downloaded."""
    from jaxvlm import hub

    try:
        # config.json: its model type names the tokenizer class where no tokenizer_config.json does (XLM-V's repo)
        snapshot = hub.download(repo, None, only=[*TOKENIZER_FILES, *TOKENIZER_CONFIGS, "config.json"])
    except InputError as e:
        raise InputError(f"{where}.hf_tokenizer_name (the repo holds no tokenizer files): {e}") from None
    if not any((snapshot / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"{where}.hf_tokenizer_name: hf-hub:{repo} holds no tokenizer ({', '.join(TOKENIZER_FILES)})")
    return snapshot


def _read_repo_config(src_dir: Path) -> tuple[Path, Mapping[str, Any], Mapping[str, Any]]:

    config_path = src_dir / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(
            f"{src_dir} has no {CONFIG_FILE}: an open_clip source is a hub repo directory holding one, or a "
            "weights file with --model"
        )
    config = read_json(config_path)
    if "model_cfg" not in config:
        raise InputError(f"{config_path} has no model_cfg")
    return config_path, config["model_cfg"], config.get("preprocess_cfg") or {}


def _repo_weights(src_dir: Path) -> Path:
    for name in REPO_WEIGHTS:
        if (src_dir / name).is_file():
            return src_dir / name
    raise InputError(f"{src_dir} holds no open_clip weights ({' or '.join(REPO_WEIGHTS[:3:2])})")


def _check_model_name(model_name: str, cfg: ModelConfig, name: str | None, where: str) -> None:
    """--model given with a repo directory must name the architecture its config describes."""

    named = get_architecture(model_name).model
    if named == cfg:
        return
    mine, theirs = flat_fields(cfg), flat_fields(named)
    diffs = [f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}" for k in {**mine, **theirs} if mine.get(k) != theirs.get(k)]
    raise InputError(
        f"{where} describes {name or 'an architecture without a jaxvlm name'}, not {model_name} "
        f"({'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''}); leave out --model to take the config's"
    )


def convert_repo(src_dir: Path, model_name: str | None = None, tokenizer_path: Path | None = None) -> Converted:
    """An open_clip hub repo directory: architecture and preprocessing from open_clip_config.json,
    weights and tokenizer from the directory (``model_name``, when given, must agree with the config)."""
    src_dir = Path(src_dir)
    config_path, model_cfg, preprocess_cfg = _read_repo_config(src_dir)
    cfg = model_config_from_open_clip(model_cfg, f"{config_path} model_cfg")
    name = registered_name(cfg)
    if model_name:
        _check_model_name(model_name, cfg, name, str(config_path))
    preprocess = preprocess_from_open_clip(preprocess_cfg, cfg.vision.image_size, f"{config_path} preprocess_cfg")
    tokenizer, tokenizer_source = tokenizer_from_open_clip(
        src_dir, model_cfg["text_cfg"], cfg.text.context_length, tokenizer_path, str(config_path)
    )
    weights_path = _repo_weights(src_dir)
    weights = read_weights(weights_path)
    cfg = matching_form(cfg, weights)
    params, batch_stats = convert_variables(weights, cfg, f"{weights_path} as open_clip {name or 'model'}")
    provenance = {"source": "open_clip", "model": name} if name else {"source": "open_clip"}
    provenance.update(config=str(config_path), weights=str(weights_path))
    return Converted(cfg, params, preprocess, tokenizer, Path(tokenizer_source), provenance, batch_stats)
