"""What the PE-Core and EVA tests share: tiny timm Eva ViTs (registered with timm here, built by timm's Eva class
with the arguments eva.py gives its vit_pe_core_* / eva_giant_* / eva02_*_clip_* models) and jaxvlm's configs of
them, tiny open_clip models around them saved as hub repos by open_clip's own `save_for_hf`, and the zero-copy
stand-ins that account for a full-size model's keys. Importing it needs no torch (tests/models/test_eva_vit.py
reads the configs)."""

import contextlib
import copy
import functools
from unittest import mock

from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.towers import EvaViTConfig

_TINY = dict(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=192)
# Two tiny PE ViTs: as PE-Core T/S/B/L (class token, rotary grid from 1, scaled to a reference grid: 3 here,
# not the 4 x 4 patch grid, so the scaling shows), and as PE-Core bigG (no class token, grid from 0, unscaled).
# The MAP head has fewer heads and a wider MLP than the blocks, so swapped sizes show.
_PE = dict(_TINY, pool_heads=2, pool_mlp_dim=256)
TINY_PE_VITS = {
    "vit_pe_core_jaxvlmtest_patch8_32": EvaViTConfig(**_PE, class_token=True, rope_offset=1.0, rope_ref_grid=3),
    "vit_pe_core_jaxvlmtestnocls_patch8_32": EvaViTConfig(
        **_PE, class_token=False, rope_offset=0.0, rope_ref_grid=None
    ),
}
# Three tiny EVA ViTs, as the registry's EVA01-g (GELU MLP, packed q/k/v with q and v biases), EVA02-B/L (SwiGLU
# with its sub-LN, separate q/k/v, an LN before the out projection, 'ij' RoPE from 0 scaled to a reference grid of
# 3) and EVA02-E (post-LN blocks): class-token pooling, LayerNorm eps 1e-6, patch bias, no pre-LN.
_EVA = dict(_TINY, pool="cls", ln_eps=1e-6, patch_bias=True, pre_norm=False, key_bias=False, rope=False)
TINY_EVA_VITS = {
    "eva_jaxvlmtest_patch8_32": EvaViTConfig(**_EVA),
    "eva02_jaxvlmtest_patch8_clip_32": EvaViTConfig(
        **{**_EVA, "rope": True},
        mlp="swiglu",
        mlp_norm=True,
        attn_norm=True,
        rope_indexing="ij",
        rope_offset=0.0,
        rope_ref_grid=3,
    ),
    "eva02_jaxvlmtestpost_patch8_clip_32": EvaViTConfig(**_EVA, post_norm=True),
}
TINY_EVA_TOWERS = {**TINY_PE_VITS, **TINY_EVA_VITS}
PE_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}
EVA_PREPROCESS = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def tiny_eva_cfg(timm_name: str) -> dict:
    """An open_clip model config (as model_configs/PE-Core-*.json and EVA*.json) around the tiny timm tower
    ``timm_name``: its classifier head projects to the embedding (timm_proj null), pooled as timm_pool says
    ('map' for PE-Core, 'token' for EVA), and open_clip's causal text tower over CLIP's BPE, narrower than the
    image tower."""
    pool = "map" if TINY_EVA_TOWERS[timm_name].pool == "map" else "token"
    return {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {
            "image_size": 32,
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": pool,
            "timm_proj": None,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 3},
    }


def timm_eva_args(v: EvaViTConfig) -> dict:
    """timm's Eva arguments of a tiny tower, as eva.py's vit_pe_core_*, eva_giant_* and eva02_*_clip_* give them
    (timm_pool and the classifier head come from open_clip)."""
    from timm.layers import LayerNorm

    common = dict(
        img_size=v.image_size,
        patch_size=v.patch_size,
        embed_dim=v.width,
        depth=v.depth,
        num_heads=v.heads,
        mlp_ratio=v.mlp_dim / v.width,
        class_token=v.class_token,
        norm_layer=functools.partial(LayerNorm, eps=v.ln_eps),
    )
    ref = None if v.rope_ref_grid is None else (v.rope_ref_grid, v.rope_ref_grid)
    rope = dict(use_rot_pos_emb=True, ref_feat_shape=ref, rope_grid_offset=v.rope_offset)
    if v.pool == "map":  # PE-Core
        return dict(
            common,
            **rope,
            attn_type="rope",
            use_pre_transformer_norm=True,
            rope_grid_indexing="xy",
            attn_pool_num_heads=v.pool_heads,
            attn_pool_mlp_ratio=v.pool_mlp_dim / v.width,
        )
    if v.post_norm:  # EVA02-E
        return dict(common, use_post_norm=True)
    if v.mlp == "swiglu":  # EVA02 B / L
        return dict(common, **rope, qkv_fused=False, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True)
    return common  # EVA01


def register_tiny_timm_eva() -> None:
    import timm
    from timm.models import register_model
    from timm.models.eva import _create_eva

    for name, v in TINY_EVA_TOWERS.items():
        if timm.models.is_model(name):
            continue

        def create(pretrained: bool = False, _name=name, _v=v, **kwargs):
            return _create_eva(_name, pretrained=pretrained, **dict(timm_eva_args(_v), **kwargs))

        create.__name__ = name
        register_model(create)


@contextlib.contextmanager
def tiny_timm_eva_known():
    """The tiny timm Eva ViTs, registered with timm and known to jaxvlm by name (as timm's own are: jaxvlm's
    table of them is checked against timm in tests/convert/test_pe_core.py and test_eva.py)."""
    register_tiny_timm_eva()
    with mock.patch.dict(converter.TIMM_EVA_VITS, TINY_EVA_TOWERS):
        yield


def tiny_eva_repo(directory, timm_name: str):
    """A perturbed open_clip CustomTextCLIP of tiny_eva_cfg(timm_name) saved at ``directory`` by save_for_hf
    (safetensors; no tokenizer files: open_clip runs its CLIP BPE)."""
    import open_clip
    import torch

    from tests.convert.open_clip_models import NoTokenizerFiles, perturbed, save_repo

    register_tiny_timm_eva()
    torch.manual_seed(0)
    model_cfg = tiny_eva_cfg(timm_name)
    cfg = {k: v for k, v in copy.deepcopy(model_cfg).items() if k != "custom_text"}
    model = perturbed(open_clip.CustomTextCLIP(**cfg))
    preprocess = PE_PREPROCESS if timm_name in TINY_PE_VITS else EVA_PREPROCESS
    return save_repo(directory, model, NoTokenizerFiles(), model_cfg, preprocess, safe_serialization=True)
