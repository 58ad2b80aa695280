"""Named architectures: the open_clip names, with each source's preprocessing and tokenizer.

Architectures only: weights come from the converters. SigLIP entries follow open_clip's
numerics (timm's GELU in the image tower, exact or tanh as timm builds each model; open_clip's in the
text tower, tanh for SigLIP 2); the big_vision and HF converters switch `act` to tanh GELU, which is
what those implementations compute.
"""

from __future__ import annotations

import dataclasses
import math

from jaxvlm.errors import InputError
from jaxvlm.models.config import DecoderConfig, ModelConfig
from jaxvlm.models.towers import (
    ConvNeXtConfig,
    EfficientNetConfig,
    EvaViTConfig,
    HFTextConfig,
    NaFlexViTConfig,
    TransformerTextConfig,
    ViTaminConfig,
    ViTConfig,
)
from jaxvlm.models.towers.fastvit import MCI
from jaxvlm.models.towers.modified_resnet import ModifiedResNetConfig
from jaxvlm.preprocess import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, PreprocessConfig
from jaxvlm.tokenizers import TokenizerConfig


@dataclasses.dataclass(frozen=True)
class Architecture:
    model: ModelConfig
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig


CLIP_TOKENIZER = TokenizerConfig(kind="clip_bpe", file="bpe_simple_vocab_16e6.txt.gz", context_length=77)
SIGLIP_TOKENIZER_FILE = "tokenizer.model"


def clip(*, embed_dim: int, vision: dict, text: dict, act: str = "gelu") -> Architecture:
    """open_clip's CLIP ViTs: the CLIP BPE vocabulary, 77 positions and 64-wide text heads with 4x MLPs.
    The image tower's heads are ``head_width`` wide (64 unless given) and its MLP is
    ``int(width * mlp_ratio)`` (4x unless given), as open_clip's vision_cfg says."""
    context = text.get("context_length", 77)
    vision = dict(vision)
    width, head_width, mlp_ratio = vision["width"], vision.pop("head_width", 64), vision.pop("mlp_ratio", 4.0)
    vision = ViTConfig(heads=width // head_width, mlp_dim=int(width * mlp_ratio), act=act, **vision)
    text = TransformerTextConfig(
        **{"vocab_size": 49408, "context_length": context, **text},
        heads=text["width"] // 64,
        mlp_dim=4 * text["width"],
        act=act,
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        PreprocessConfig(image_size=vision.image_size),
        dataclasses.replace(CLIP_TOKENIZER, context_length=context),
    )


SIGLIP_TOKENIZER = TokenizerConfig(
    kind="sentencepiece", file=SIGLIP_TOKENIZER_FILE, context_length=64, clean="canonicalize", pad_id=1, eos_id=1
)
# SigLIP 2's Gemma tokenizer as open_clip runs it: its HFTokenizer over the repo's tokenizer.json (whose
# post-processor appends <eos>, id 1; no <bos>), texts canonicalised, padded on the right with <pad> (id 0):
# what `jaxvlm.convert.open_clip_repo` records for such a repo
GEMMA_TOKENIZER = TokenizerConfig(
    kind="hf_json", file="tokenizer.json", context_length=64, clean="canonicalize", pad_id=0
)


def siglip(
    *, vision: dict, text: dict, act: str = "gelu", tokenizer: TokenizerConfig = SIGLIP_TOKENIZER
) -> Architecture:
    """SigLIP: MAP-pooled ViT without class token or pre-LN, bidirectional text tower pooled at the
    last position and projected (with bias) to the embedding, as wide as the image tower; sigmoid loss
    with scale 10 and bias -10. Either tower's fields override these: its ``act`` (timm's image towers
    and open_clip's text tower pick their GELU apart), and the text tower's width, heads and mlp_dim
    (the image tower's unless given) and its projection (``proj`` False: none, open_clip's proj_type 'none')."""
    eps = 1e-6
    vision = ViTConfig(
        **{"act": act, **vision}, ln_eps=eps, patch_bias=True, class_token=False, pre_norm=False, pool="map", proj=False
    )
    text = TransformerTextConfig(
        **{
            "vocab_size": 32000,
            "context_length": 64,
            "depth": vision.depth,
            "width": vision.width,
            "heads": vision.heads,
            "mlp_dim": vision.mlp_dim,
            "act": act,
            "proj": True,
            "proj_bias": True,
            **text,
        },
        ln_eps=eps,
        causal=False,
        pool="last",
    )
    model = ModelConfig(
        embed_dim=vision.width,
        vision=vision,
        text=text,
        loss="sigmoid",
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0,
    )
    return Architecture(
        model,
        PreprocessConfig(image_size=vision.image_size, resize_mode="squash", mean=INCEPTION_MEAN, std=INCEPTION_STD),
        dataclasses.replace(tokenizer, context_length=text.context_length),
    )


def siglip2(*, vision: dict, text: dict) -> Architecture:
    """open_clip's SigLIP 2 at a fixed resolution: SigLIP with Gemma's 256k vocabulary and tanh GELU in
    the text tower (its act_kwargs), the image tower's GELU being timm's for that model."""
    return siglip(vision=vision, text={"vocab_size": 256000, "act": "gelu_tanh", **text}, tokenizer=GEMMA_TOKENIZER)


def siglip2_naflex(*, vision: dict, text: dict) -> Architecture:
    """SigLIP 2 NaFlex (HF's Siglip2Model, big_vision's NaFlex checkpoints): SigLIP 2's text tower and a
    NaFlex image tower (`jaxvlm.models.towers.naflex_vit`) with 16 x 16 learned positions, tanh GELU,
    images resized (bilinear) to fit 256 patches at their own aspect ratio, as Siglip2ImageProcessor does."""
    fixed = siglip2(vision={"image_size": 256, **vision}, text=text)
    naflex = NaFlexViTConfig(**vision, act="gelu_tanh", ln_eps=1e-6, position_grid=16, max_num_patches=256)
    preprocess = dataclasses.replace(
        fixed.preprocess, resize_mode="naflex", interpolation="bilinear", patch_size=naflex.patch_size
    )
    return dataclasses.replace(fixed, model=dataclasses.replace(fixed.model, vision=naflex), preprocess=preprocess)


def tiny_siglip_naflex() -> Architecture:
    """jaxvlm's test size of a NaFlex SigLIP (training tests, `jaxvlm plan` tests): tiny-siglip's towers
    with 8 px patches on a 4 x 4 position grid, 16 patches per image, and CLIP's bundled BPE (no
    tokenizer file to fetch)."""
    vision = {"patch_size": 8, "width": 64, "depth": 2, "heads": 4, "mlp_dim": 256}
    text = {"context_length": 16, "vocab_size": 49408}
    fixed = siglip(vision={"image_size": 32, **vision}, text=text, tokenizer=CLIP_TOKENIZER)
    naflex = NaFlexViTConfig(**vision, position_grid=4, max_num_patches=16)
    preprocess = dataclasses.replace(fixed.preprocess, resize_mode="naflex", patch_size=8, max_num_patches=16)
    return dataclasses.replace(fixed, model=dataclasses.replace(fixed.model, vision=naflex), preprocess=preprocess)


def coca(*, embed_dim: int, vision: dict, text: dict) -> Architecture:
    """open_clip's CoCa: with ``attn_pool_heads`` the ViT's tokens go through the 256-query
    attentional pooler (its first query is the contrastive one), otherwise the class token is
    pooled and the patch tokens feed the decoder. The decoder mirrors the text tower."""
    context = 76  # text positions; the appended cls token takes the 77th
    vision = ViTConfig(
        **{"pool": "attn_pool" if "attn_pool_heads" in vision else "cls", **vision},
        heads=vision["width"] // 64,
        mlp_dim=4 * vision["width"],
    )
    text = TransformerTextConfig(
        **{"vocab_size": 49408, **text},
        context_length=context,
        mlp_dim=4 * text["width"],
        pool="last",
        append_cls=True,
        pad_mask="shifted",
    )
    decoder = DecoderConfig(
        vocab_size=text.vocab_size,
        context_length=context,
        width=text.width,
        depth=text.depth,
        heads=text.heads,
        mlp_dim=text.mlp_dim,
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax", decoder=decoder),
        PreprocessConfig(image_size=vision.image_size),
        dataclasses.replace(CLIP_TOKENIZER, context_length=context),
    )


def _clip_family() -> dict[str, Architecture]:
    sizes = {
        "ViT-B-32": {
            "embed_dim": 512,
            "vision": {"image_size": 224, "patch_size": 32, "width": 768, "depth": 12},
            "text": {"width": 512, "depth": 12},
        },
        "ViT-B-16": {
            "embed_dim": 512,
            "vision": {"image_size": 224, "patch_size": 16, "width": 768, "depth": 12},
            "text": {"width": 512, "depth": 12},
        },
        "ViT-L-14": {
            "embed_dim": 768,
            "vision": {"image_size": 224, "patch_size": 14, "width": 1024, "depth": 24},
            "text": {"width": 768, "depth": 12},
        },
        "ViT-L-14-336": {
            "embed_dim": 768,
            "vision": {"image_size": 336, "patch_size": 14, "width": 1024, "depth": 24},
            "text": {"width": 768, "depth": 12},
        },
        "ViT-B-32-256": {
            "embed_dim": 512,
            "vision": {"image_size": 256, "patch_size": 32, "width": 768, "depth": 12},
            "text": {"width": 512, "depth": 12},
        },
        "ViT-B-16-plus-240": {
            "embed_dim": 640,
            "vision": {"image_size": 240, "patch_size": 16, "width": 896, "depth": 12},
            "text": {"width": 640, "depth": 12},
        },
        "ViT-H-14": {
            "embed_dim": 1024,
            "vision": {"image_size": 224, "patch_size": 14, "width": 1280, "depth": 32, "head_width": 80},
            "text": {"width": 1024, "depth": 24},
        },
        "ViT-H-14-378": {
            "embed_dim": 1024,
            "vision": {"image_size": 378, "patch_size": 14, "width": 1280, "depth": 32, "head_width": 80},
            "text": {"width": 1024, "depth": 24},
        },
        "ViT-g-14": {
            "embed_dim": 1024,
            "vision": {
                "image_size": 224,
                "patch_size": 14,
                "width": 1408,
                "depth": 40,
                "head_width": 88,
                "mlp_ratio": 4.3637,
            },
            "text": {"width": 1024, "depth": 24},
        },
        "ViT-bigG-14": {
            "embed_dim": 1280,
            "vision": {
                "image_size": 224,
                "patch_size": 14,
                "width": 1664,
                "depth": 48,
                "head_width": 104,
                "mlp_ratio": 4.9231,
            },
            "text": {"width": 1280, "depth": 32},
        },
        "tiny-clip": {
            "embed_dim": 32,
            "vision": {"image_size": 32, "patch_size": 8, "width": 64, "depth": 2},
            "text": {"width": 64, "depth": 2},
        },
    }
    no_quickgelu = {"ViT-B-32-256", "ViT-B-16-plus-240", "ViT-g-14"}  # open_clip has no '-quickgelu' config of these
    archs = {}
    for name, fields in sizes.items():
        archs[name] = clip(**fields)
        if name not in no_quickgelu:
            archs[f"{name}-quickgelu"] = clip(**fields, act="quick_gelu")
    return archs


def _siglip_family() -> dict[str, Architecture]:
    # the image towers: timm's vit_{base,large,so400m,giantopt}_patch*_siglip_* (open_clip's timm_model_name),
    # with timm's GELU for each (exact unless "gelu_tanh" is given)
    b16 = {"patch_size": 16, "width": 768, "depth": 12, "heads": 12, "mlp_dim": 3072}
    b32 = {**b16, "patch_size": 32}
    l16 = {"patch_size": 16, "width": 1024, "depth": 24, "heads": 16, "mlp_dim": 4096}
    so400m = {"patch_size": 14, "width": 1152, "depth": 27, "heads": 16, "mlp_dim": 4304}
    so400m16 = {**so400m, "patch_size": 16}
    gopt16 = {"patch_size": 16, "width": 1536, "depth": 40, "heads": 16, "mlp_dim": 6144}
    tanh = {"act": "gelu_tanh"}
    # ViT-gopt's text tower is SO400M's (1152 wide, mlp_ratio 3.7362), projected to the 1536-wide embedding
    so400m_text = {"width": 1152, "depth": 27, "heads": 16, "mlp_dim": 4304}
    return {
        "ViT-B-16-SigLIP": siglip(vision={"image_size": 224, **b16}, text={}),
        "ViT-B-16-SigLIP-256": siglip(vision={"image_size": 256, **b16}, text={}),
        "ViT-B-16-SigLIP-384": siglip(vision={"image_size": 384, **b16}, text={}),
        "ViT-B-16-SigLIP-512": siglip(vision={"image_size": 512, **b16}, text={}),
        "ViT-L-16-SigLIP-256": siglip(vision={"image_size": 256, **l16}, text={}),
        "ViT-L-16-SigLIP-384": siglip(vision={"image_size": 384, **l16}, text={}),
        "ViT-SO400M-14-SigLIP": siglip(vision={"image_size": 224, **so400m}, text={"context_length": 16}),
        "ViT-SO400M-14-SigLIP-378": siglip(vision={"image_size": 378, **so400m}, text={}),
        "ViT-SO400M-14-SigLIP-384": siglip(vision={"image_size": 384, **so400m}, text={}),
        # multilingual: mT5's 250k SentencePiece vocabulary, laid out as T5's (pad 0, eos 1)
        "ViT-B-16-SigLIP-i18n-256": siglip(vision={"image_size": 256, **b16}, text={"vocab_size": 250000}),
        # its text tower is as wide as the embedding and unprojected (open_clip's proj_type 'none')
        "ViT-SO400M-16-SigLIP-i18n-256": siglip(
            vision={"image_size": 256, **so400m16, **tanh},
            text={"vocab_size": 250000, "proj": False, "proj_bias": False},
        ),
        "ViT-B-32-SigLIP2-256": siglip2(vision={"image_size": 256, **b32, **tanh}, text={}),
        "ViT-B-16-SigLIP2": siglip2(vision={"image_size": 224, **b16}, text={}),
        "ViT-B-16-SigLIP2-256": siglip2(vision={"image_size": 256, **b16}, text={}),
        "ViT-B-16-SigLIP2-384": siglip2(vision={"image_size": 384, **b16}, text={}),
        "ViT-B-16-SigLIP2-512": siglip2(vision={"image_size": 512, **b16}, text={}),
        "ViT-L-16-SigLIP2-256": siglip2(vision={"image_size": 256, **l16}, text={}),
        "ViT-L-16-SigLIP2-384": siglip2(vision={"image_size": 384, **l16}, text={}),
        "ViT-L-16-SigLIP2-512": siglip2(vision={"image_size": 512, **l16, **tanh}, text={}),
        "ViT-SO400M-14-SigLIP2": siglip2(vision={"image_size": 224, **so400m}, text={}),
        "ViT-SO400M-14-SigLIP2-378": siglip2(vision={"image_size": 378, **so400m}, text={}),
        "ViT-SO400M-16-SigLIP2-256": siglip2(vision={"image_size": 256, **so400m16, **tanh}, text={}),
        "ViT-SO400M-16-SigLIP2-384": siglip2(vision={"image_size": 384, **so400m16, **tanh}, text={}),
        "ViT-SO400M-16-SigLIP2-512": siglip2(vision={"image_size": 512, **so400m16, **tanh}, text={}),
        "ViT-gopt-16-SigLIP2-256": siglip2(vision={"image_size": 256, **gopt16, **tanh}, text=so400m_text),
        "ViT-gopt-16-SigLIP2-384": siglip2(vision={"image_size": 384, **gopt16, **tanh}, text=so400m_text),
        "ViT-B-16-SigLIP2-NaFlex": siglip2_naflex(vision=b16, text={}),
        "ViT-SO400M-16-SigLIP2-NaFlex": siglip2_naflex(vision=so400m16, text={}),
        "tiny-siglip": siglip(
            vision={"image_size": 32, "patch_size": 8, "width": 64, "depth": 2, "heads": 4, "mlp_dim": 256},
            text={"context_length": 16},
        ),
        "tiny-siglip-naflex": tiny_siglip_naflex(),
    }


def _coca_family() -> dict[str, Architecture]:
    return {
        "coca_ViT-B-32": coca(
            embed_dim=512,
            vision={"image_size": 224, "patch_size": 32, "width": 768, "depth": 12, "attn_pool_heads": 8},
            text={"width": 512, "depth": 12, "heads": 8},
        ),
        "coca_ViT-L-14": coca(
            embed_dim=768,
            vision={"image_size": 224, "patch_size": 14, "width": 1024, "depth": 24, "attn_pool_heads": 8},
            text={"width": 768, "depth": 12, "heads": 12},
        ),
        "coca_base": coca(
            embed_dim=512,
            vision={"image_size": 288, "patch_size": 18, "width": 768, "depth": 12},
            text={"width": 768, "depth": 12, "heads": 12, "vocab_size": 64000},
        ),
        "tiny-coca": coca(
            embed_dim=32,
            vision={"image_size": 32, "patch_size": 8, "width": 64, "depth": 2, "attn_pool_heads": 2},
            text={"width": 32, "depth": 2, "heads": 2},
        ),
    }


# MetaCLIP 2 worldwide's text side: XLM-V's tokenizer.json as open_clip's HFTokenizer runs it (transformers'
# XLMRobertaTokenizer over the file): whitespace-cleaned text, <s> ... </s>, padded with <pad> (id 1)
XLM_V_TOKENIZER = TokenizerConfig(
    kind="hf_json", file="tokenizer.json", context_length=77, clean="whitespace", pad_id=1, whitespace_split=True
)


def metaclip2_worldwide(*, embed_dim: int, vision: dict, text: dict, act: str = "gelu") -> Architecture:
    """open_clip's MetaCLIP 2 worldwide: a CLIP ViT whose text tower reads XLM-V's 901,629-piece vocabulary
    and pools at the first end token (</s>, id 2), not at CLIP's largest id."""
    text = {"vocab_size": 901629, "pool": "eos", "eos_id": 2, **text}
    return dataclasses.replace(clip(embed_dim=embed_dim, vision=vision, text=text, act=act), tokenizer=XLM_V_TOKENIZER)


def _metaclip2_family() -> dict[str, Architecture]:
    h14 = {"embed_dim": 1024, "text": {"width": 1024, "depth": 24}}
    h14_vision = {"patch_size": 14, "width": 1280, "depth": 32, "head_width": 80}
    big_g14 = {"embed_dim": 1280, "text": {"width": 1280, "depth": 32}}
    big_g14_vision = {"patch_size": 14, "width": 1664, "depth": 48, "head_width": 104, "mlp_ratio": 4.9231}
    return {
        "ViT-H-14-worldwide": metaclip2_worldwide(**h14, vision={"image_size": 224, **h14_vision}),
        "ViT-H-14-worldwide-quickgelu": metaclip2_worldwide(
            **h14, vision={"image_size": 224, **h14_vision}, act="quick_gelu"
        ),
        "ViT-H-14-worldwide-378": metaclip2_worldwide(**h14, vision={"image_size": 378, **h14_vision}),
        "ViT-bigG-14-worldwide": metaclip2_worldwide(**big_g14, vision={"image_size": 224, **big_g14_vision}),
        "ViT-bigG-14-worldwide-378": metaclip2_worldwide(**big_g14, vision={"image_size": 378, **big_g14_vision}),
    }


# CLIPA's text side: bert-base-uncased's tokenizer.json (WordPiece, lower case, [CLS] ... [SEP]) as open_clip's
# HFTokenizer runs it: whitespace-cleaned text, padded with [PAD] (0), and [SEP] (102) zeroed (strip_sep_token)
CLIPA_TOKENIZER = TokenizerConfig(
    kind="hf_json", file="tokenizer.json", context_length=32, clean="whitespace", strip_id=102
)


def clipa(*, embed_dim: int, vision: dict, text: dict) -> Architecture:
    """open_clip's CLIPA: a CLIP ViT without pre-LN that averages its patch tokens (the class token left
    out) and normalises the average (final_ln_after_pool); a bidirectional text tower over BERT's WordPiece
    ids pooled at the last position; squashed, bilinear, ImageNet-normalised images."""
    vision = {**vision, "pre_norm": False, "pool": "gap", "norm_after_pool": True}
    text = {"vocab_size": 32000, "context_length": 32, "causal": False, "pool": "last", **text}
    arch = clip(embed_dim=embed_dim, vision=vision, text=text)
    preprocess = PreprocessConfig(
        image_size=arch.model.vision.image_size,
        resize_mode="squash",
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    return dataclasses.replace(arch, preprocess=preprocess, tokenizer=CLIPA_TOKENIZER)


def _clipa_family() -> dict[str, Architecture]:
    l14 = {"embed_dim": 768, "text": {"width": 768, "depth": 12}}
    l14_vision = {"patch_size": 14, "width": 1024, "depth": 24}
    h14 = {"embed_dim": 1024, "text": {"width": 1024, "depth": 24}}
    h14_vision = {"patch_size": 14, "width": 1280, "depth": 32, "head_width": 80}
    big_g14 = {"embed_dim": 1280, "text": {"width": 1280, "depth": 32}}
    big_g14_vision = {"patch_size": 14, "width": 1664, "depth": 48, "head_width": 104, "mlp_ratio": 4.9231}
    archs = {}
    for name, sizes, vision in [("L", l14, l14_vision), ("H", h14, h14_vision), ("bigG", big_g14, big_g14_vision)]:
        archs[f"ViT-{name}-14-CLIPA"] = clipa(**sizes, vision={"image_size": 224, **vision})
        archs[f"ViT-{name}-14-CLIPA-336"] = clipa(**sizes, vision={"image_size": 336, **vision})
    return archs


def pe_core(*, embed_dim: int, vision: dict, text: dict) -> Architecture:
    """open_clip's PE-Core (Meta's Perception Encoder): timm's PE ViT (`jaxvlm.models.towers.eva_vit`: 2-D
    RoPE, an 8-head MAP head with a 4x MLP, its classifier head projecting with bias) and open_clip's causal
    text tower over CLIP's BPE with 4x MLPs; squashed, bilinear images normalised to [-1, 1]."""
    vision = EvaViTConfig(**vision, pool_heads=8, pool_mlp_dim=4 * vision["width"])
    text = TransformerTextConfig(vocab_size=49408, **text, mlp_dim=4 * text["width"])
    preprocess = PreprocessConfig(
        image_size=vision.image_size,
        resize_mode="squash",
        interpolation="bilinear",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        preprocess,
        dataclasses.replace(CLIP_TOKENIZER, context_length=text.context_length),
    )


def _pe_core_family() -> dict[str, Architecture]:
    # timm's vit_pe_core_*: rope_ref_grid is its ref_feat_shape; the gigantic one has no class token and
    # its rotary grid starts at 0
    def vision(image_size, patch_size, width, depth, heads, mlp_dim, ref_grid, class_token=True, offset=1.0):
        return dict(
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            depth=depth,
            heads=heads,
            mlp_dim=mlp_dim,
            rope_ref_grid=ref_grid,
            class_token=class_token,
            rope_offset=offset,
        )

    def text(width, heads, depth, context_length=32):
        return dict(width=width, heads=heads, depth=depth, context_length=context_length)

    return {
        "PE-Core-T-16-384": pe_core(embed_dim=512, vision=vision(384, 16, 192, 12, 3, 768, 24), text=text(512, 8, 12)),
        "PE-Core-S-16-384": pe_core(embed_dim=512, vision=vision(384, 16, 384, 12, 6, 1536, 24), text=text(512, 8, 12)),
        "PE-Core-B-16": pe_core(embed_dim=1024, vision=vision(224, 16, 768, 12, 12, 3072, 14), text=text(1024, 16, 24)),
        "PE-Core-L-14-336": pe_core(
            embed_dim=1024, vision=vision(336, 14, 1024, 24, 16, 4096, 24), text=text(1024, 16, 24)
        ),
        "PE-Core-bigG-14-448": pe_core(
            embed_dim=1280,
            vision=vision(448, 14, 1536, 50, 16, 8960, 32, class_token=False, offset=0.0),
            text=text(1280, 20, 24, context_length=72),
        ),
    }


def convnext(*, embed_dim: int, vision: dict, text: dict) -> Architecture:
    """open_clip's ConvNeXt CLIPs: timm's ConvNeXt (`jaxvlm.models.towers.convnext`) under open_clip's TimmModel
    head, and open_clip's CLIP text tower (CLIP's BPE, 77 positions, 64-wide heads, 4x MLPs); OpenAI's
    preprocessing."""
    vision = ConvNeXtConfig(**vision)
    text = TransformerTextConfig(
        vocab_size=49408, context_length=77, **text, heads=text["width"] // 64, mlp_dim=4 * text["width"]
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        PreprocessConfig(image_size=vision.image_size),
        CLIP_TOKENIZER,
    )


def _convnext_family() -> dict[str, Architecture]:
    # timm's convnext_base / _large / _xxlarge (the xxlarge with LayerNorm eps 1e-5); the _d models project
    # through open_clip's MLP head (timm_proj 'mlp')
    base = {"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)}
    large = {"depths": (3, 3, 27, 3), "dims": (192, 384, 768, 1536), "head": "mlp"}
    xxlarge = {"depths": (3, 4, 30, 3), "dims": (384, 768, 1536, 3072), "ln_eps": 1e-5}
    return {
        "convnext_base": convnext(embed_dim=512, vision={"image_size": 224, **base}, text={"width": 512, "depth": 12}),
        "convnext_base_w": convnext(
            embed_dim=640, vision={"image_size": 256, **base}, text={"width": 640, "depth": 12}
        ),
        "convnext_base_w_320": convnext(
            embed_dim=640, vision={"image_size": 320, **base}, text={"width": 640, "depth": 12}
        ),
        "convnext_large_d": convnext(
            embed_dim=768, vision={"image_size": 256, **large}, text={"width": 768, "depth": 16}
        ),
        "convnext_large_d_320": convnext(
            embed_dim=768, vision={"image_size": 320, **large}, text={"width": 768, "depth": 16}
        ),
        "convnext_xxlarge": convnext(
            embed_dim=1024, vision={"image_size": 256, **xxlarge}, text={"width": 1024, "depth": 24}
        ),
    }


VITAMIN_SIZES = {"": 224, "-256": 256, "-336": 336, "-384": 384}  # ViTamin-L(2) name suffix: image size


def vitamin(*, embed_dim: int, vision: dict, text: dict) -> Architecture:
    """open_clip's ViTamin CLIPs: timm's vitamin_* towers (`jaxvlm.models.towers.vitamin`: two MBConv stages of
    2 and 4 blocks, the first as wide as the stem, GeGLU MLPs 2x wide) under open_clip's linear head, and
    open_clip's CLIP text tower (CLIP's BPE, 77 positions, 4x MLPs); OpenAI's preprocessing."""
    vision = dict(vision)
    stem, dim, width = vision.pop("stem_width"), vision.pop("dim"), vision["width"]
    vision = ViTaminConfig(stem_width=stem, dims=(stem, dim), depths=(2, 4), mlp_dim=2 * width, **vision)
    text = TransformerTextConfig(vocab_size=49408, context_length=77, **text, mlp_dim=4 * text["width"])
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        PreprocessConfig(image_size=vision.image_size),
        CLIP_TOKENIZER,
    )


def _vitamin_family() -> dict[str, Architecture]:
    # timm's vitamin_small / _base / _large(2) / _xlarge; the xlarge towers have no position embedding, and
    # open_clip runs ViTamin-XL-384 (timm's vitamin_xlarge_384) at 256 px
    towers = {  # stem width, second stage's channels, ViT width, depth, heads
        "S": (64, 128, 384, 14, 6),
        "B": (128, 256, 768, 14, 12),
        "L": (160, 320, 1024, 31, 16),
        "XL": (192, 384, 1152, 32, 16),
    }
    models = {  # name: tower, image size, embed_dim and text tower (width, heads, depth)
        "ViTamin-S": ("S", 224, 384, (384, 6, 12)),
        "ViTamin-S-LTT": ("S", 224, 768, (768, 12, 12)),
        "ViTamin-B": ("B", 224, 512, (512, 8, 12)),
        "ViTamin-B-LTT": ("B", 224, 768, (768, 12, 12)),
        **{f"ViTamin-L{s}": ("L", size, 768, (768, 12, 12)) for s, size in VITAMIN_SIZES.items()},
        **{f"ViTamin-L2{s}": ("L", size, 1024, (1024, 16, 24)) for s, size in VITAMIN_SIZES.items()},
        "ViTamin-XL-256": ("XL", 256, 1152, (1152, 16, 27)),
        "ViTamin-XL-336": ("XL", 336, 1152, (1152, 16, 27)),
        "ViTamin-XL-384": ("XL", 256, 1152, (1152, 16, 27)),
    }
    family = {}
    for name, (tower, image_size, embed_dim, (text_width, text_heads, text_depth)) in models.items():
        stem, dim, width, depth, heads = towers[tower]
        vision = dict(image_size=image_size, stem_width=stem, dim=dim, width=width, depth=depth, heads=heads)
        family[name] = vitamin(
            embed_dim=embed_dim,
            vision={**vision, "pos_embed": tower != "XL"},
            text={"width": text_width, "heads": text_heads, "depth": text_depth},
        )
    return family


def eva(*, embed_dim: int, vision: dict, text: dict) -> Architecture:
    """open_clip's EVA01 / EVA02: timm's Eva towers (`jaxvlm.models.towers.eva_vit`: LayerNorm eps 1e-6, patch
    embedding with bias and no LN after it, keys without bias, class-token pooling, the classifier head
    projecting with bias) and open_clip's causal text tower over CLIP's BPE with 4x MLPs; OpenAI's preprocessing."""
    common = dict(ln_eps=1e-6, patch_bias=True, pre_norm=False, key_bias=False, pool="cls", rope=False)
    vision = EvaViTConfig(**{**common, **vision})
    text = TransformerTextConfig(vocab_size=49408, context_length=77, **text, mlp_dim=4 * text["width"])
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        PreprocessConfig(image_size=vision.image_size),
        CLIP_TOKENIZER,
    )


def _eva_family() -> dict[str, Architecture]:
    # timm's eva_giant_patch14_224, eva02_*_clip_*: EVA02 B / L have SwiGLU with an LN inside, an LN before
    # the attention's out projection and 2-D RoPE ('ij' grid from 0, scaled to a 16 x 16 reference grid);
    # EVA02-E has plain GELU MLPs and post-LN blocks
    eva01_g = dict(image_size=224, patch_size=14, width=1408, depth=40, heads=16, mlp_dim=6144)
    eva02 = dict(
        mlp="swiglu", mlp_norm=True, attn_norm=True, rope=True, rope_indexing="ij", rope_offset=0.0, rope_ref_grid=16
    )
    eva02_b = dict(image_size=224, patch_size=16, width=768, depth=12, heads=12, mlp_dim=2048, **eva02)
    eva02_l = dict(patch_size=14, width=1024, depth=24, heads=16, mlp_dim=2730, **eva02)
    eva02_e = dict(image_size=224, patch_size=14, width=1792, depth=64, heads=16, mlp_dim=15360, post_norm=True)

    def text(width, heads, depth):
        return dict(width=width, heads=heads, depth=depth)

    return {
        "EVA01-g-14": eva(embed_dim=1024, vision=eva01_g, text=text(768, 12, 12)),
        "EVA01-g-14-plus": eva(embed_dim=1024, vision=eva01_g, text=text(1024, 16, 24)),
        "EVA02-B-16": eva(embed_dim=512, vision=eva02_b, text=text(512, 8, 12)),
        "EVA02-L-14": eva(embed_dim=768, vision=dict(image_size=224, **eva02_l), text=text(768, 12, 12)),
        "EVA02-L-14-336": eva(embed_dim=768, vision=dict(image_size=336, **eva02_l), text=text(768, 12, 12)),
        "EVA02-E-14": eva(embed_dim=1024, vision=eva02_e, text=text(1024, 16, 24)),
        "EVA02-E-14-plus": eva(embed_dim=1024, vision=eva02_e, text=text(1280, 20, 32)),
    }


def mobileclip(
    *, embed_dim: int, vision: EvaViTConfig, text_width: int, causal: bool, preprocess: dict | None = None
) -> Architecture:
    """open_clip's MobileCLIP / MobileCLIP2 with a timm ViT image tower (as `jaxvlm.models.towers.eva_vit` expresses
    it) and open_clip's 12-layer text tower over CLIP's BPE, causal or not as its text_cfg's no_causal_mask says.
    OpenAI's preprocessing unless ``preprocess`` says otherwise; it differs by tag (mean, std, interpolation), and
    the pretrained table carries each tag's."""
    text = TransformerTextConfig(
        vocab_size=49408,
        context_length=77,
        width=text_width,
        depth=12,
        heads=text_width // 64,
        mlp_dim=4 * text_width,
        causal=causal,
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        PreprocessConfig(image_size=vision.image_size, **(preprocess or {})),
        CLIP_TOKENIZER,
    )


# MobileCLIP's tags (open_clip's _mccfg): no normalisation, bilinear resizing
MOBILECLIP_PREPROCESS = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")
# timm's vit_base_mci_224: ViT-B/16 (LayerNorm eps 1e-6, no pre-LN) behind a ConvStem (4 x 4, 2 x 2, 2 x 2 convolutions,
# BatchNorm and GELU between), positions for the patches only
TIMM_VIT_B_MCI = EvaViTConfig(
    image_size=224,
    patch_size=16,
    width=768,
    depth=12,
    heads=12,
    mlp_dim=3072,
    pool="cls",
    rope=False,
    ln_eps=1e-6,
    pre_norm=False,
    stem_widths=(192, 192, 768),
    stem_kernels=(4, 2, 2),
    pos_embed_class=False,
)
# timm's vit_large_patch14_clip_224 (a plain pre-LN CLIP ViT, exact GELU, no patch bias) with open_clip's token
# pooling and its classifier head as the projection
TIMM_VIT_L14_CLIP = EvaViTConfig(
    image_size=224, patch_size=14, width=1024, depth=24, heads=16, mlp_dim=4096, pool="cls", rope=False
)


def _mobileclip_family() -> dict[str, Architecture]:
    b = dict(embed_dim=512, vision=TIMM_VIT_B_MCI, text_width=512, causal=True, preprocess=MOBILECLIP_PREPROCESS)
    return {
        "MobileCLIP-B": mobileclip(**b),
        "MobileCLIP2-B": mobileclip(**b),
        "MobileCLIP2-L-14": mobileclip(embed_dim=768, vision=TIMM_VIT_L14_CLIP, text_width=768, causal=False),
        # timm's FastViT MCi towers (`jaxvlm.models.towers.fastvit`), multi-branch, non-causal text towers
        **{
            name: mobileclip(
                embed_dim=width, vision=MCI[mci], text_width=width, causal=False, preprocess=MOBILECLIP_PREPROCESS
            )
            for name, mci, width in (
                ("MobileCLIP-S1", "fastvit_mci1", 512),
                ("MobileCLIP-S2", "fastvit_mci2", 512),
                ("MobileCLIP2-S0", "fastvit_mci0", 512),
                ("MobileCLIP2-S2", "fastvit_mci2", 512),
                ("MobileCLIP2-S3", "fastvit_mci3", 768),
                ("MobileCLIP2-S4", "fastvit_mci4", 768),
            )
        },
    }


# open_clip's HFTextEncoder towers, sized as the config.json of each hf_model_name on the hub says, their
# tokenizer.json run as open_clip's HFTokenizer runs it (whitespace-cleaned, padded with <pad>, id 1;
# XLMRobertaTokenizer splits on whitespace first)
ROBERTA_TOKENIZER = TokenizerConfig(
    kind="hf_json", file="tokenizer.json", context_length=77, clean="whitespace", pad_id=1
)
XLM_R_TOKENIZER = dataclasses.replace(ROBERTA_TOKENIZER, whitespace_split=True)
NLLB_TOKENIZER = ROBERTA_TOKENIZER


def roberta_text(*, vocab_size: int, width: int, depth: int, heads: int) -> HFTextConfig:
    """roberta-base / xlm-roberta-*: post-LN BERT layers, positions counted after the padding id (514 rows),
    one token type, mean-pooled over the non-padding tokens, open_clip's default MLP projection."""
    return HFTextConfig(
        vocab_size=vocab_size,
        context_length=77,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=4 * width,
        max_positions=514,
        ln_eps=1e-5,
        pad_id=1,
        position_ids="after_padding",
        type_vocab_size=1,
        pool="mean",
        proj="mlp",
    )


def nllb_text(*, depth: int, mlp_dim: int) -> HFTextConfig:
    """facebook/nllb-200-distilled-*'s encoder (M2M100): scaled embeddings, sinusoidal positions, pre-LN ReLU
    layers and a final norm; the first token (the language code) pooled and projected linearly."""
    return HFTextConfig(
        vocab_size=256206,
        context_length=77,
        width=1024,
        depth=depth,
        heads=16,
        mlp_dim=mlp_dim,
        max_positions=1024,
        act="relu",
        ln_eps=1e-5,
        pad_id=1,
        positions="sinusoidal",
        position_ids="after_padding",
        type_vocab_size=0,
        embed_scale=True,
        embed_norm=False,
        post_norm=False,
        pool="cls",
        proj="linear",
    )


def with_hf_text(arch: Architecture, text: HFTextConfig, tokenizer: TokenizerConfig) -> Architecture:
    return dataclasses.replace(arch, model=dataclasses.replace(arch.model, text=text), tokenizer=tokenizer)


def _hf_text_family() -> dict[str, Architecture]:
    b32 = {"image_size": 224, "patch_size": 32, "width": 768, "depth": 12}
    h14 = {"image_size": 224, "patch_size": 14, "width": 1280, "depth": 32, "head_width": 80}
    clip_text = {"width": 512, "depth": 1}  # replaced by the HF tower

    def vit(embed_dim: int, vision: dict, act: str = "gelu") -> Architecture:
        return clip(embed_dim=embed_dim, vision=vision, text=clip_text, act=act)

    def siglip_vit(vision: dict, act: str) -> Architecture:
        return siglip(vision={"image_size": 384, **vision}, text={}, act=act)

    xlm_r_base = roberta_text(vocab_size=250002, width=768, depth=12, heads=12)
    xlm_r_large = roberta_text(vocab_size=250002, width=1024, depth=24, heads=16)
    nllb_600m, nllb_1b = nllb_text(depth=12, mlp_dim=4096), nllb_text(depth=24, mlp_dim=8192)
    base16 = {"patch_size": 16, "width": 768, "depth": 12, "heads": 12, "mlp_dim": 3072}
    so400m14 = {"patch_size": 14, "width": 1152, "depth": 27, "heads": 16, "mlp_dim": 4304}
    return {
        "roberta-ViT-B-32": with_hf_text(
            vit(512, b32, act="quick_gelu"),
            roberta_text(vocab_size=50265, width=768, depth=12, heads=12),
            ROBERTA_TOKENIZER,
        ),
        "xlm-roberta-base-ViT-B-32": with_hf_text(vit(512, b32), xlm_r_base, XLM_R_TOKENIZER),
        "xlm-roberta-large-ViT-H-14": with_hf_text(vit(1024, h14), xlm_r_large, XLM_R_TOKENIZER),
        "nllb-clip-base": with_hf_text(vit(512, b32), nllb_600m, NLLB_TOKENIZER),
        "nllb-clip-large": with_hf_text(vit(1024, h14), nllb_1b, NLLB_TOKENIZER),
        "nllb-clip-base-siglip": with_hf_text(siglip_vit(base16, "gelu"), nllb_600m, NLLB_TOKENIZER),
        "nllb-clip-large-siglip": with_hf_text(siglip_vit(so400m14, "gelu"), nllb_1b, NLLB_TOKENIZER),
    }


def modified_resnet_clip(*, embed_dim: int, vision: dict, text_width: int, act: str = "gelu") -> Architecture:
    """OpenAI's ResNet CLIPs (`jaxvlm.models.towers.modified_resnet`): attention-pool heads 64 wide (open_clip's
    width * 32 // head_width), the CLIP text tower (``act``: quick_gelu tags set only its activation)."""
    vision = ModifiedResNetConfig(**vision, heads=vision["width"] * 32 // 64)
    text = TransformerTextConfig(
        vocab_size=49408,
        context_length=77,
        width=text_width,
        depth=12,
        heads=text_width // 64,
        mlp_dim=4 * text_width,
        act=act,
    )
    return Architecture(
        ModelConfig(embed_dim=embed_dim, vision=vision, text=text, loss="softmax"),
        PreprocessConfig(image_size=vision.image_size),
        CLIP_TOKENIZER,
    )


def _modified_resnet_family() -> dict[str, Architecture]:
    sizes = {  # name: embed_dim, image_size, layers, width, text width
        "RN50": (1024, 224, (3, 4, 6, 3), 64, 512),
        "RN101": (512, 224, (3, 4, 23, 3), 64, 512),
        "RN50x4": (640, 288, (4, 6, 10, 6), 80, 640),
        "RN50x16": (768, 384, (6, 8, 18, 8), 96, 768),
        "RN50x64": (1024, 448, (3, 15, 36, 10), 128, 1024),
    }
    archs = {}
    for name, (embed_dim, image_size, layers, width, text_width) in sizes.items():
        fields = dict(
            embed_dim=embed_dim, vision=dict(image_size=image_size, layers=layers, width=width), text_width=text_width
        )
        archs[name] = modified_resnet_clip(**fields)
        archs[f"{name}-quickgelu"] = modified_resnet_clip(**fields, act="quick_gelu")
    return archs


# Chinese-CLIP (OFA-Sys's transformers repos): CLIP ViTs with quick GELU and a Chinese RoBERTa-wwm text tower,
# which is BERT's architecture (post-LN, positions from 0, two token types, [PAD] 0), its first token projected;
# texts of up to 52 WordPiece ids (cn_clip's context), images squashed
CHINESE_CLIP_TOKENIZER = TokenizerConfig(kind="hf_json", file="tokenizer.json", context_length=52, clean="none")


def chinese_clip(*, embed_dim: int, vision: dict, text_width: int, text_depth: int) -> Architecture:
    arch = clip(embed_dim=embed_dim, vision=vision, text={"width": 512, "depth": 1}, act="quick_gelu")
    text = HFTextConfig(
        vocab_size=21128,
        context_length=52,
        width=text_width,
        depth=text_depth,
        heads=text_width // 64,
        mlp_dim=4 * text_width,
        max_positions=512,
        pool="cls",
        proj="linear",
    )
    preprocess = PreprocessConfig(image_size=arch.model.vision.image_size, resize_mode="squash")
    return dataclasses.replace(with_hf_text(arch, text, CHINESE_CLIP_TOKENIZER), preprocess=preprocess)


def _chinese_clip_family() -> dict[str, Architecture]:
    b16 = {"image_size": 224, "patch_size": 16, "width": 768, "depth": 12}
    l14 = {"patch_size": 14, "width": 1024, "depth": 24}
    h14 = {"image_size": 224, "patch_size": 14, "width": 1280, "depth": 32, "head_width": 80}
    base, large = {"text_width": 768, "text_depth": 12}, {"text_width": 1024, "text_depth": 24}
    return {
        "chinese-clip-ViT-B-16": chinese_clip(embed_dim=512, vision=b16, **base),
        "chinese-clip-ViT-L-14": chinese_clip(embed_dim=768, vision={"image_size": 224, **l14}, **base),
        "chinese-clip-ViT-L-14-336": chinese_clip(embed_dim=768, vision={"image_size": 336, **l14}, **base),
        "chinese-clip-ViT-H-14": chinese_clip(embed_dim=1024, vision=h14, **large),
    }


# ALIGN (kakaobrain/align-base, transformers' AlignModel): EfficientNet-B7 at 289 px pooled by its mean, unprojected;
# BERT-base's first token projected with a bias; bert-base-uncased's WordPiece padded to 64; images squashed to 346
# and centre-cropped, x / 127.5 - 1
def _align_family() -> dict[str, Architecture]:
    text = HFTextConfig(
        vocab_size=30522,
        context_length=64,
        width=768,
        depth=12,
        heads=12,
        mlp_dim=3072,
        max_positions=512,
        pool="cls",
        proj="linear",
        proj_bias=True,
    )
    model = ModelConfig(embed_dim=640, vision=EfficientNetConfig(image_size=289), text=text, logit_scale_init=0.0)
    preprocess = PreprocessConfig(
        image_size=289,
        resize_mode="squash",
        interpolation="bilinear",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        resize_size=346,
    )
    tokenizer = TokenizerConfig(kind="hf_json", file="tokenizer.json", context_length=64, clean="none")
    return {"ALIGN-base": Architecture(model, preprocess, tokenizer)}


ARCHITECTURES: dict[str, Architecture] = {
    **_clip_family(),
    **_siglip_family(),
    **_coca_family(),
    **_metaclip2_family(),
    **_clipa_family(),
    **_pe_core_family(),
    **_modified_resnet_family(),
    **_hf_text_family(),
    **_chinese_clip_family(),
    **_align_family(),
    **_eva_family(),
    **_mobileclip_family(),
    **_convnext_family(),
    **_vitamin_family(),
}


def list_models() -> list[str]:
    return sorted(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InputError(f"unknown model '{name}'; `jaxvlm list` shows the known ones") from None
