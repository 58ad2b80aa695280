"""What the ViTamin tests share: tiny timm ViTamins (registered with timm here, built by timm's vitamin.py as its
vitamin_* models are) and jaxvlm's configs of them, and tiny open_clip ViTamin CLIPs around them saved as hub repos
by open_clip's own `save_for_hf`. Importing it needs no torch (tests/models/test_vitamin.py reads the configs)."""

import contextlib
import copy
from unittest import mock

from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.towers import ViTaminConfig
from jaxvlm.preprocess import OPENAI_MEAN, OPENAI_STD

# Two tiny ViTamins at 64 px (a 4 x 4 token grid): one with learned positions and a stem narrower than its first
# stage (that stage's first shortcut pools, then widens), one without positions (timm's xlarge) whose stem is as
# wide as its first stage (that shortcut only pools)
TINY_VITAMINS = {
    "vitamin_jaxvlmtest": ViTaminConfig(
        image_size=64, stem_width=8, dims=(16, 24), depths=(2, 1), width=32, depth=2, heads=2, mlp_dim=64
    ),
    "vitamin_jaxvlmtest_nopos": ViTaminConfig(
        image_size=64,
        stem_width=12,
        dims=(12, 20),
        depths=(1, 2),
        width=24,
        depth=2,
        heads=3,
        mlp_dim=48,
        pos_embed=False,
    ),
}
# open_clip's pretrained table's preprocessing for its ViTamins (OpenAI's, its defaults)
VITAMIN_PREPROCESS = {
    "mean": list(OPENAI_MEAN),
    "std": list(OPENAI_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def tiny_vitamin_cfg(timm_name: str, image_size: int = 64) -> dict:
    """An open_clip ViTamin CLIP config (as model_configs/ViTamin-*.json) around the tiny timm tower ``timm_name``
    (built by timm at 64 px whatever ``image_size`` says, as ViTamin-XL-384's is at 384 and run at 256), with
    open_clip's CLIP text tower (48 wide: neither the embedding's width nor the tower's)."""
    return {
        "embed_dim": 40,
        "vision_cfg": {
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "timm_drop": 0.0,
            "timm_drop_path": 0.1,
            "image_size": image_size,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 2},
        "custom_text": True,
    }


def register_tiny_timm_vitamins() -> None:
    import timm
    from timm.models import register_model
    from timm.models.vitamin import GeGluMlp, VitCfg, VitConvCfg, _create_vitamin

    for name, v in TINY_VITAMINS.items():
        if timm.models.is_model(name):
            continue

        def create(pretrained: bool = False, _name=name, _v=v, **kwargs):
            embed_cfg = VitCfg(
                embed_dim=(*_v.dims, _v.width),
                depths=(*_v.depths, 1),
                stem_width=_v.stem_width,
                conv_cfg=VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6),
                head_type="1d",
            )
            args = dict(
                img_size=_v.image_size,
                embed_dim=_v.width,
                depth=_v.depth,
                num_heads=_v.heads,
                mlp_layer=GeGluMlp,
                mlp_ratio=_v.mlp_dim / _v.width,
                class_token=False,
                global_pool="avg",
                embed_cfg=embed_cfg,
                **({} if _v.pos_embed else {"pos_embed": "none"}),
            )
            return _create_vitamin(_name, pretrained=pretrained, **dict(args, **kwargs))

        create.__name__ = name
        register_model(create)


@contextlib.contextmanager
def tiny_timm_vitamins_known():
    """The tiny timm ViTamins, registered with timm and known to jaxvlm by name (as timm's own are: jaxvlm's table
    of them is checked against timm in tests/convert/test_vitamin.py)."""
    register_tiny_timm_vitamins()
    with mock.patch.dict(converter.TIMM_VITAMINS, TINY_VITAMINS):
        yield


def tiny_vitamin_repo(directory, timm_name: str, image_size: int = 64):
    """A perturbed open_clip CLIP of tiny_vitamin_cfg(timm_name, image_size) saved at ``directory`` by save_for_hf
    (safetensors; no tokenizer files: open_clip runs its CLIP BPE)."""
    import open_clip
    import torch

    from tests.convert.open_clip_models import NoTokenizerFiles, perturbed, save_repo

    register_tiny_timm_vitamins()
    torch.manual_seed(0)
    model_cfg = tiny_vitamin_cfg(timm_name, image_size)
    cfg = {k: v for k, v in copy.deepcopy(model_cfg).items() if k != "custom_text"}
    model = perturbed(open_clip.CustomTextCLIP(**cfg))
    return save_repo(directory, model, NoTokenizerFiles(), model_cfg, VITAMIN_PREPROCESS, safe_serialization=True)
