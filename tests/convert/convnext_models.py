"""What the ConvNeXt tests share: tiny timm ConvNeXts (registered with timm here, built by timm's ConvNeXt class
as its convnext_* models are) and jaxvlm's configs of them, and tiny open_clip ConvNeXt CLIPs around them saved
as hub repos by open_clip's own `save_for_hf`. Importing it needs no torch (tests/models/test_convnext.py reads
the configs)."""

import contextlib
import copy
from unittest import mock

from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.towers import ConvNeXtConfig
from jaxvlm.preprocess import OPENAI_MEAN, OPENAI_STD

# Two tiny ConvNeXts with four stages of different widths and depths, at 64 px (a 2 x 2 final map): as timm's
# convnext_base / _large (LayerNorm eps 1e-6) under open_clip's linear head, and as its convnext_xxlarge (eps
# 1e-5) under open_clip's MLP head
TINY_CONVNEXTS = {
    "convnext_jaxvlmtest": ConvNeXtConfig(image_size=64, depths=(2, 1, 2, 1), dims=(16, 24, 32, 40)),
    "convnext_jaxvlmtest_eps5": ConvNeXtConfig(
        image_size=64, depths=(1, 2, 1, 2), dims=(8, 16, 24, 48), ln_eps=1e-5, head="mlp"
    ),
}
# open_clip's pretrained table's preprocessing for its ConvNeXts
CONVNEXT_PREPROCESS = {
    "mean": list(OPENAI_MEAN),
    "std": list(OPENAI_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def tiny_convnext_cfg(timm_name: str) -> dict:
    """An open_clip ConvNeXt CLIP config (as model_configs/convnext_*.json) around the tiny timm tower
    ``timm_name``, with open_clip's CLIP text tower (48 wide: neither the embedding's width nor a tower's)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": TINY_CONVNEXTS[timm_name].head,
            "timm_drop": 0.0,
            "timm_drop_path": 0.1,
            "image_size": 64,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 2},
    }


def register_tiny_timm_convnexts() -> None:
    import timm
    from timm.models import register_model
    from timm.models.convnext import _create_convnext

    for name, v in TINY_CONVNEXTS.items():
        if timm.models.is_model(name):
            continue

        def create(pretrained: bool = False, _name=name, _v=v, **kwargs):
            args = dict(depths=_v.depths, dims=_v.dims, norm_eps=_v.ln_eps)
            return _create_convnext(_name, pretrained=pretrained, **dict(args, **kwargs))

        create.__name__ = name
        register_model(create)


@contextlib.contextmanager
def tiny_timm_convnexts_known():
    """The tiny timm ConvNeXts, registered with timm and known to jaxvlm by name (as timm's own are: jaxvlm's
    table of them is checked against timm in tests/convert/test_convnext.py)."""
    register_tiny_timm_convnexts()
    with mock.patch.dict(converter.TIMM_CONVNEXTS, TINY_CONVNEXTS):
        yield


def tiny_convnext_repo(directory, timm_name: str):
    """A perturbed open_clip CLIP of tiny_convnext_cfg(timm_name) saved at ``directory`` by save_for_hf
    (safetensors; no tokenizer files: open_clip runs its CLIP BPE)."""
    import open_clip
    import torch

    from tests.convert.open_clip_models import NoTokenizerFiles, perturbed, save_repo

    register_tiny_timm_convnexts()
    torch.manual_seed(0)
    model_cfg = tiny_convnext_cfg(timm_name)
    model = perturbed(open_clip.CLIP(**copy.deepcopy(model_cfg)))
    return save_repo(directory, model, NoTokenizerFiles(), model_cfg, CONVNEXT_PREPROCESS, safe_serialization=True)
