"""Named architectures: the open_clip names, with each source's preprocessing and tokenizer.

Architectures only: weights come from the converters. SigLIP entries follow open_clip's
numerics (timm's exact GELU); the big_vision and HF converters switch `act` to tanh GELU,
which is what those implementations compute.
"""

from __future__ import annotations

import dataclasses
import math

from jaxvlm.errors import InputError
from jaxvlm.models.config import DecoderConfig, ModelConfig, TextConfig, VisionConfig
from jaxvlm.preprocess import INCEPTION_MEAN, INCEPTION_STD, PreprocessConfig
from jaxvlm.tokenizers import TokenizerConfig


@dataclasses.dataclass(frozen=True)
class Architecture:
    model: ModelConfig
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig


CLIP_TOKENIZER = TokenizerConfig(kind="clip_bpe", file="bpe_simple_vocab_16e6.txt.gz", context_length=77)
SIGLIP_TOKENIZER_FILE = "tokenizer.model"


def clip(image_size, patch, width, depth, text_width, text_depth, embed_dim, act="gelu", vocab=49408, context=77):
    vision = VisionConfig(
        image_size=image_size, patch_size=patch, width=width, depth=depth, heads=width // 64, mlp_dim=4 * width, act=act
    )
    text = TextConfig(
        vocab_size=vocab,
        context_length=context,
        width=text_width,
        depth=text_depth,
        heads=text_width // 64,
        mlp_dim=4 * text_width,
        act=act,
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        PreprocessConfig(image_size=image_size),
        dataclasses.replace(CLIP_TOKENIZER, context_length=context),
    )


def siglip(image_size, patch, width, depth, heads, mlp_dim, text_depth=None, context=64, vocab=32000, act="gelu"):
    eps = 1e-6
    vision = VisionConfig(
        image_size=image_size,
        patch_size=patch,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        act=act,
        ln_eps=eps,
        patch_bias=True,
        class_token=False,
        pre_norm=False,
        pool="map",
        proj=False,
    )
    text = TextConfig(
        vocab_size=vocab,
        context_length=context,
        width=width,
        depth=text_depth or depth,
        heads=heads,
        mlp_dim=mlp_dim,
        act=act,
        ln_eps=eps,
        causal=False,
        pool="last",
        proj=True,
        proj_bias=True,
    )
    model = ModelConfig(
        embed_dim=width,
        vision=vision,
        text=text,
        loss="sigmoid",
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0,
    )
    tokenizer = TokenizerConfig(
        kind="sentencepiece",
        file=SIGLIP_TOKENIZER_FILE,
        context_length=context,
        clean="canonicalize",
        pad_id=1,
        eos_id=1,
    )
    return Architecture(
        model,
        PreprocessConfig(image_size=image_size, resize_mode="squash", mean=INCEPTION_MEAN, std=INCEPTION_STD),
        tokenizer,
    )


def coca(image_size, patch, width, depth, text_width, text_depth, text_heads, embed_dim, vocab=49408, pool_heads=None):
    """open_clip's CoCa: with ``pool_heads`` the ViT's tokens go through the 256-query attentional
    pooler (its first query is the contrastive one), otherwise the class token is pooled and the
    patch tokens feed the decoder."""
    context = 76  # text positions; the appended cls token takes the 77th
    pool = {"pool": "attn_pool", "attn_pool_heads": pool_heads} if pool_heads else {}
    vision = VisionConfig(
        image_size=image_size, patch_size=patch, width=width, depth=depth, heads=width // 64, mlp_dim=4 * width, **pool
    )
    text = TextConfig(
        vocab_size=vocab,
        context_length=context,
        width=text_width,
        depth=text_depth,
        heads=text_heads,
        mlp_dim=4 * text_width,
        pool="last",
        append_cls=True,
        pad_mask="shifted",
    )
    decoder = DecoderConfig(
        vocab_size=vocab,
        context_length=context,
        width=text_width,
        depth=text.depth,
        heads=text_heads,
        mlp_dim=4 * text_width,
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax", decoder=decoder),
        PreprocessConfig(image_size=image_size),
        dataclasses.replace(CLIP_TOKENIZER, context_length=context),
    )


def _coca_family() -> dict[str, Architecture]:
    return {
        "coca_ViT-B-32": coca(224, 32, 768, 12, 512, 12, 8, 512, pool_heads=8),
        "coca_ViT-L-14": coca(224, 14, 1024, 24, 768, 12, 12, 768, pool_heads=8),
        "coca_base": coca(288, 18, 768, 12, 768, 12, 12, 512, vocab=64000),
        "tiny-coca": coca(32, 8, 64, 2, 32, 2, 2, 32, pool_heads=2),
    }


def _clip_family() -> dict[str, Architecture]:
    sizes = {
        "ViT-B-32": (224, 32, 768, 12, 512, 12, 512),
        "ViT-B-16": (224, 16, 768, 12, 512, 12, 512),
        "ViT-L-14": (224, 14, 1024, 24, 768, 12, 768),
        "ViT-L-14-336": (336, 14, 1024, 24, 768, 12, 768),
        "tiny-clip": (32, 8, 64, 2, 64, 2, 32),
    }
    archs = {}
    for name, args in sizes.items():
        archs[name] = clip(*args)
        archs[f"{name}-quickgelu"] = clip(*args, act="quick_gelu")
    return archs


def _siglip_family() -> dict[str, Architecture]:
    b16 = (16, 768, 12, 12, 3072)
    so400m = (14, 1152, 27, 16, 4304)
    return {
        "ViT-B-16-SigLIP": siglip(224, *b16),
        "ViT-B-16-SigLIP-256": siglip(256, *b16),
        "ViT-B-16-SigLIP-384": siglip(384, *b16),
        "ViT-L-16-SigLIP-256": siglip(256, 16, 1024, 24, 16, 4096),
        "ViT-SO400M-14-SigLIP": siglip(224, *so400m, context=16),
        "ViT-SO400M-14-SigLIP-384": siglip(384, *so400m),
        "tiny-siglip": siglip(32, 8, 64, 2, 4, 256, context=16),
    }


ARCHITECTURES: dict[str, Architecture] = {**_clip_family(), **_siglip_family(), **_coca_family()}


def list_models() -> list[str]:
    return sorted(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InputError(f"unknown model '{name}'; `jaxvlm list` shows the known ones") from None
