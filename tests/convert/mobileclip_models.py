"""What the MobileCLIP tests share: tiny timm ViTs (registered with timm here, built by timm's VisionTransformer with
the arguments vision_transformer.py gives vit_large_patch14_clip_224: pre-LN, no patch bias, class token; and as
vision_transformer_hybrid.py builds vit_base_mci_224: a ConvStem with BatchNorm, positions for the patches only) and
jaxvlm's configs of them, and tiny open_clip models around it (MobileCLIP's non-causal text tower) saved as hub repos
by open_clip's own `save_for_hf`."""

import contextlib
import copy
import functools
from unittest import mock

from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.towers import EvaViTConfig

TINY_CLIP_VITS = {
    "vit_jaxvlmtest_patch8_clip_32": EvaViTConfig(
        image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256, pool="cls", rope=False
    ),
    "vit_jaxvlmtest_mci_32": EvaViTConfig(
        image_size=32,
        patch_size=8,
        width=64,
        depth=2,
        heads=4,
        mlp_dim=256,
        pool="cls",
        rope=False,
        ln_eps=1e-6,
        pre_norm=False,
        stem_widths=(16, 24, 64),
        stem_kernels=(2, 2, 2),
        pos_embed_class=False,
    ),
}
# MobileCLIP's tags: no normalisation, bilinear resizing (open_clip's _mccfg)
MOBILECLIP_PREPROCESS = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"}


def tiny_mobileclip_cfg(timm_name: str) -> dict:
    """An open_clip model config (as model_configs/MobileCLIP2-L-14.json) around the tiny timm tower ``timm_name``:
    token pooling, its classifier head projecting to the embedding, and a non-causal text tower."""
    return {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {
            "image_size": 32,
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": "token",
            "timm_proj": None,
            "timm_drop": 0.0,
            "timm_drop_path": 0.1,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 48,
            "heads": 3,
            "layers": 2,
            "no_causal_mask": not TINY_CLIP_VITS[timm_name].stem_widths,  # MobileCLIP-B: causal
        },
    }


def register_tiny_timm_clip_vits() -> None:
    import timm
    from timm.layers import LayerNorm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer
    from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid
    from torch.nn import GELU

    for name, v in TINY_CLIP_VITS.items():
        if timm.models.is_model(name):
            continue
        args = dict(
            img_size=v.image_size,
            patch_size=v.patch_size,
            embed_dim=v.width,
            depth=v.depth,
            num_heads=v.heads,
            mlp_ratio=v.mlp_dim / v.width,
            norm_layer=functools.partial(LayerNorm, eps=v.ln_eps),
        )

        def create(pretrained: bool = False, _name=name, _v=v, _args=args, **kwargs):
            if not _v.stem_widths:
                return _create_vision_transformer(_name, pretrained=pretrained, pre_norm=True, **dict(_args, **kwargs))
            stem = ConvStem(
                channels=_v.stem_widths, stride=_v.stem_kernels, kernel_size=_v.stem_kernels, padding=0, act_layer=GELU
            )
            args = dict(_args, no_embed_class=True, **kwargs)
            args.pop("patch_size")
            return _create_vision_transformer_hybrid(
                _name, backbone=stem, embed_args=dict(proj=False), pretrained=pretrained, **args
            )

        create.__name__ = name
        register_model(create)


@contextlib.contextmanager
def tiny_timm_clip_vits_known():
    """The tiny timm CLIP ViTs, registered with timm and known to jaxvlm by name (as timm's own are)."""
    register_tiny_timm_clip_vits()
    with mock.patch.dict(converter.TIMM_PLAIN_VITS, TINY_CLIP_VITS):
        yield


def tiny_mobileclip_repo(directory, timm_name: str):
    """A perturbed open_clip CustomTextCLIP of tiny_mobileclip_cfg(timm_name) saved at ``directory`` by save_for_hf
    (safetensors; no tokenizer files: open_clip runs its CLIP BPE)."""
    import open_clip
    import torch

    from tests.convert.open_clip_models import NoTokenizerFiles, perturbed, save_repo

    register_tiny_timm_clip_vits()
    torch.manual_seed(0)
    model_cfg = tiny_mobileclip_cfg(timm_name)
    cfg = {k: v for k, v in copy.deepcopy(model_cfg).items() if k != "custom_text"}
    model = perturbed(open_clip.CustomTextCLIP(**cfg))
    with torch.no_grad():  # BatchNorm statistics far from their initial 0 and 1
        for key, value in model.state_dict().items():
            if key.endswith("running_mean"):
                value.add_(0.5 * torch.randn_like(value))
            elif key.endswith("running_var"):
                value.mul_(torch.exp(0.5 * torch.randn_like(value)))
    return save_repo(directory, model, NoTokenizerFiles(), model_cfg, MOBILECLIP_PREPROCESS, safe_serialization=True)
