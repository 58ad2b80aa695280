"""What the FastViT tests share: tiny timm FastVit MCi-style trunks (registered with timm here, built by timm's own
_create_fastvit: a RepMixer stage, then an attention stage with a conditional positional encoding and a
squeeze-excite downsampling; with BatchNorm (mci0..2) or LayerNorm (mci3 / mci4) before attention), jaxvlm's configs
of them, and tiny open_clip MobileCLIP models around them saved as hub repos by open_clip's own `save_for_hf`, in
the multi-branch form or folded by timm's reparameterize_model."""

import contextlib
import copy
import functools
from unittest import mock

from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.towers.fastvit import FastViTConfig
from tests.convert.mobileclip_models import MOBILECLIP_PREPROCESS

TINY_FASTVITS = {
    f"fastvit_jaxvlmtest_{norm}": FastViTConfig(
        image_size=64,
        layers=(1, 2),
        dims=(16, 32),
        mlp_ratios=(2.0, 3.0),
        token_mixers=("repmixer", "attention"),
        pos_embs=(False, True),
        downsamples=(False, True),
        se_downsamples=(False, True),
        attention_norm=norm,
        stem_scale_branch=norm == "batch_norm",
    )
    for norm in ("batch_norm", "layer_norm")
}


def timm_args(v: FastViTConfig) -> dict:
    """timm FastVit's arguments for ``v`` (as timm's fastvit_mci* pass them)."""
    from timm.layers import LayerNorm2d
    from timm.models.fastvit import RepConditionalPosEnc

    pos = functools.partial(RepConditionalPosEnc, spatial_shape=(v.pos_kernel,) * 2)
    args = dict(
        layers=v.layers,
        embed_dims=v.dims,
        mlp_ratios=v.mlp_ratios,
        downsamples=v.downsamples,
        se_downsamples=v.se_downsamples,
        pos_embs=tuple(pos if p else None for p in v.pos_embs),
        token_mixers=v.token_mixers,
        lkc_use_act=v.lkc_use_act,
        stem_use_scale_branch=v.stem_scale_branch,
    )
    if v.attention_norm == "layer_norm":
        args["norm_layer"] = functools.partial(LayerNorm2d, eps=1e-5)
    return args


def register_tiny_timm_fastvits() -> None:
    import timm
    from timm.models import register_model
    from timm.models.fastvit import _create_fastvit

    for name, v in TINY_FASTVITS.items():
        if timm.models.is_model(name):
            continue

        def create(pretrained: bool = False, _name=name, _v=v, **kwargs):
            return _create_fastvit(_name, pretrained=pretrained, **dict(timm_args(_v), **kwargs))

        create.__name__ = name
        register_model(create)


@contextlib.contextmanager
def tiny_timm_fastvits_known():
    """The tiny timm FastVits, registered with timm and known to jaxvlm by name (as timm's fastvit_mci* are)."""
    register_tiny_timm_fastvits()
    with mock.patch.dict(converter.MCI, TINY_FASTVITS):
        yield


def tiny_fastvit_cfg(timm_name: str) -> dict:
    """An open_clip model config (as model_configs/MobileCLIP-S1.json) around the tiny timm trunk ``timm_name``."""
    return {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {
            "image_size": 64,
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": None,
            "timm_drop": 0.0,
            "timm_drop_path": 0.0,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 48,
            "heads": 3,
            "layers": 2,
            "no_causal_mask": True,
        },
    }


def tiny_fastvit_model(timm_name: str):
    """A perturbed open_clip CustomTextCLIP of tiny_fastvit_cfg(timm_name), BatchNorm statistics far from 0 and 1."""
    import open_clip
    import torch

    from tests.convert.open_clip_models import perturbed

    register_tiny_timm_fastvits()
    torch.manual_seed(0)
    cfg = {k: v for k, v in copy.deepcopy(tiny_fastvit_cfg(timm_name)).items() if k != "custom_text"}
    model = perturbed(open_clip.CustomTextCLIP(**cfg))
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_mean"):
                value.add_(0.5 * torch.randn_like(value))
            elif key.endswith("running_var"):
                value.mul_(torch.exp(0.5 * torch.randn_like(value)))
    return model.eval()


def tiny_fastvit_repo(directory, timm_name: str, folded: bool = False):
    """tiny_fastvit_model(timm_name) saved at ``directory`` by save_for_hf, folded by timm's reparameterize_model
    when ``folded`` (open_clip then loads it only into a folded trunk; jaxvlm reads the form from the keys)."""
    from timm.utils.model import reparameterize_model

    from tests.convert.open_clip_models import NoTokenizerFiles, save_repo

    model = tiny_fastvit_model(timm_name)
    if folded:
        model = reparameterize_model(model)
    model_cfg = tiny_fastvit_cfg(timm_name)
    return save_repo(directory, model, NoTokenizerFiles(), model_cfg, MOBILECLIP_PREPROCESS, safe_serialization=True)
