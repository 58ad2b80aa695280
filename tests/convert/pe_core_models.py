"""What the PE-Core tests share: tiny timm PE ViTs (registered with timm here, built by timm's Eva class as its
vit_pe_core_* models are) and jaxvlm's configs of them, and tiny open_clip PE-Core models around them saved as
hub repos by open_clip's own `save_for_hf`. Importing it needs no torch (tests/models/test_pe_vit.py reads the
configs)."""

import contextlib
import copy
import functools
from unittest import mock

from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.towers import PeViTConfig

# Two tiny PE ViTs: as PE-Core T/S/B/L (class token, rotary grid from 1, scaled to a reference grid: 3 here,
# not the 4 x 4 patch grid, so the scaling shows), and as PE-Core bigG (no class token, grid from 0, unscaled).
# The MAP head has fewer heads and a wider MLP than the blocks, so swapped sizes show.
_TINY = dict(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=192, pool_heads=2, pool_mlp_dim=256)
TINY_PE_VITS = {
    "vit_pe_core_jaxvlmtest_patch8_32": PeViTConfig(**_TINY, class_token=True, rope_offset=1.0, rope_ref_grid=3),
    "vit_pe_core_jaxvlmtestnocls_patch8_32": PeViTConfig(
        **_TINY, class_token=False, rope_offset=0.0, rope_ref_grid=None
    ),
}
PE_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}


def tiny_pe_cfg(timm_name: str) -> dict:
    """An open_clip PE-Core model config (as model_configs/PE-Core-*.json) around the tiny timm tower
    ``timm_name``: its classifier head projects to the embedding (timm_proj null), and open_clip's causal text
    tower over CLIP's BPE, narrower than the image tower."""
    return {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {
            "image_size": 32,
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": None,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 3},
    }


def timm_pe_args(v: PeViTConfig) -> dict:
    """timm's Eva arguments of a PE ViT, as eva.py's vit_pe_core_* give them."""
    from timm.layers import LayerNorm

    ref = None if v.rope_ref_grid is None else (v.rope_ref_grid, v.rope_ref_grid)
    return dict(
        img_size=v.image_size,
        patch_size=v.patch_size,
        embed_dim=v.width,
        depth=v.depth,
        num_heads=v.heads,
        mlp_ratio=v.mlp_dim / v.width,
        global_pool="map",
        attn_type="rope",
        class_token=v.class_token,
        use_pre_transformer_norm=True,
        use_rot_pos_emb=True,
        ref_feat_shape=ref,
        rope_grid_offset=v.rope_offset,
        rope_grid_indexing="xy",
        attn_pool_num_heads=v.pool_heads,
        attn_pool_mlp_ratio=v.pool_mlp_dim / v.width,
        norm_layer=functools.partial(LayerNorm, eps=v.ln_eps),
    )


def register_tiny_timm_pe() -> None:
    import timm
    from timm.models import register_model
    from timm.models.eva import _create_eva

    for name, v in TINY_PE_VITS.items():
        if timm.models.is_model(name):
            continue

        def create(pretrained: bool = False, _name=name, _v=v, **kwargs):
            return _create_eva(_name, pretrained=pretrained, **dict(timm_pe_args(_v), **kwargs))

        create.__name__ = name
        register_model(create)


@contextlib.contextmanager
def tiny_timm_pe_known():
    """The tiny timm PE ViTs, registered with timm and known to jaxvlm by name (as timm's own are: jaxvlm's
    table of them is checked against timm in tests/convert/test_pe_core.py)."""
    register_tiny_timm_pe()
    with mock.patch.dict(converter.TIMM_PE_VITS, TINY_PE_VITS):
        yield


def tiny_pe_repo(directory, timm_name: str):
    """A perturbed open_clip CustomTextCLIP of tiny_pe_cfg(timm_name) saved at ``directory`` by save_for_hf
    (safetensors; no tokenizer files: open_clip runs its CLIP BPE)."""
    import open_clip
    import torch

    from tests.convert.open_clip_models import NoTokenizerFiles, perturbed, save_repo

    register_tiny_timm_pe()
    torch.manual_seed(0)
    model_cfg = tiny_pe_cfg(timm_name)
    cfg = {k: v for k, v in copy.deepcopy(model_cfg).items() if k != "custom_text"}
    model = perturbed(open_clip.CustomTextCLIP(**cfg))
    return save_repo(directory, model, NoTokenizerFiles(), model_cfg, PE_PREPROCESS, safe_serialization=True)
