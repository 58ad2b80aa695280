"""ConvNeXt (open_clip's convnext_* models, timm's ConvNeXt image towers under open_clip's TimmModel head): tiny
perturbed open_clip models saved as hub repos and converted with no --model against what open_clip loads from
them; jaxvlm's table of timm's ConvNeXts read back from timm; every full-size architecture's keys and shapes
against open_clip's."""

import json

import numpy as np
import pytest
import torch

from jaxvlm.cli import main
from jaxvlm.convert import open_clip as open_clip_converter
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.errors import InputError
from jaxvlm.models.registry import ARCHITECTURES, CLIP_TOKENIZER
from jaxvlm.preprocess import PreprocessConfig
from tests.convert.convnext_models import (
    TINY_CONVNEXTS,
    tiny_convnext_cfg,
    tiny_convnext_repo,
    tiny_timm_convnexts_known,
)
from tests.convert.open_clip_models import assert_full_size_keys_accounted, compare_with_open_clip

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

CONVNEXT = [
    "convnext_base",
    "convnext_base_w",
    "convnext_base_w_320",
    "convnext_large_d",
    "convnext_large_d_320",
    "convnext_xxlarge",
]


@pytest.fixture
def tiny_timm_convnexts():
    with tiny_timm_convnexts_known():
        yield


@pytest.mark.parametrize("timm_name", sorted(TINY_CONVNEXTS))
def test_convnext_repo_converts_without_model(timm_name, tmp_path, tiny_timm_convnexts):
    repo = tiny_convnext_repo(tmp_path / "repo", timm_name)
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, f"open_clip ConvNeXt repo ({timm_name})")
    assert model.config.vision == TINY_CONVNEXTS[timm_name]
    assert model.preprocess_config == PreprocessConfig(image_size=64)  # OpenAI's: shortest side, bicubic
    tokenizer = json.loads((out / "config.json").read_text())["tokenizer"]
    assert tokenizer == CLIP_TOKENIZER.to_dict()


def test_registered_convnext_maps_from_open_clips_config():
    for name in CONVNEXT:
        cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model and converter.registered_name(cfg) == name


def test_preprocessing_is_open_clips_pretrained_tables():
    from jaxvlm import pretrained

    pairs = [pair for pair in pretrained.list_pretrained() if pair[0] in CONVNEXT]
    assert len(pairs) == 12
    for arch, tag in pairs:
        entry = pretrained.get_pretrained(arch, tag)
        assert entry.loads, (arch, tag)
        cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag)
        got = ARCHITECTURES[arch].preprocess
        assert (got.mean, got.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
        assert (got.interpolation, got.resize_mode) == (cfg["interpolation"], cfg["resize_mode"])


def test_timm_options(tiny_timm_convnexts):
    name = "convnext_jaxvlmtest"
    cfg = tiny_convnext_cfg(name)
    avg = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "timm_pool": "avg", "timm_proj_bias": True, "image_size": 96}}
    assert converter.model_config_from_open_clip(avg, "x").vision == TINY_CONVNEXTS[name].replace(
        image_size=96, proj_bias=True
    )
    for key, value in [("timm_proj", "none"), ("timm_pool", "max")]:
        bad = {**cfg, "vision_cfg": {**cfg["vision_cfg"], key: value}}
        with pytest.raises(InputError, match=f"^x: vision_cfg.{key} is"):
            converter.model_config_from_open_clip(bad, "x")


def test_timm_convnext_table_is_timms():
    """Every timm ConvNeXt jaxvlm knows by name, built by timm on the meta device and read back."""
    for name, v in converter.TIMM_CONVNEXTS.items():
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False)
        stages = list(trunk.stages)
        block = stages[0].blocks[0]
        got = v.replace(
            depths=tuple(len(s.blocks) for s in stages),
            dims=tuple(s.blocks[0].conv_dw.out_channels for s in stages),
            patch_size=trunk.stem[0].stride[0],
            kernel_size=block.conv_dw.kernel_size[0],
            mlp_ratio=block.mlp.fc1.out_features // block.mlp.fc1.in_features,
            ln_eps=block.norm.eps,
            layer_scale=block.gamma is not None,
        )
        assert got == v, name
        # what the converter and ConvNeXtConfig assume of all of them
        norms = [trunk.stem[1], trunk.head.norm, *(s.downsample[0] for s in stages[1:])]
        assert all(n.eps == v.ln_eps for n in norms), name
        assert not block.use_conv_mlp and isinstance(block.mlp.act, timm.layers.activations.GELU), name
        assert trunk.stem[0].kernel_size == trunk.stem[0].stride and trunk.stem[0].bias is not None, name
        assert isinstance(trunk.norm_pre, torch.nn.Identity) and trunk.head.global_pool.pool_type == "avg", name
        assert all(s.downsample[1].kernel_size == s.downsample[1].stride == (2, 2) for s in stages[1:]), name


@pytest.mark.slow
@pytest.mark.parametrize("name", CONVNEXT)
def test_converter_accounts_for_every_key(name, monkeypatch):
    head = "visual.head.mlp.fc2.weight" if "large_d" in name else "visual.head.proj.weight"
    dropped = [head, "visual.trunk.stages.2.blocks.5.gamma", "visual.trunk.stages.3.downsample.0.bias"]
    assert_full_size_keys_accounted(name, monkeypatch, dropped)


@pytest.mark.slow
def test_full_size_convnext_base_matches_open_clip():
    """convnext_base at full size (224 px: 56 x 56 down to 7 x 7 maps, the 7 x 7 depthwise kernels as wide as the
    last map), open_clip's random weights perturbed, its state dict converted, end to end."""
    import jax

    from jaxvlm.models import TwoTower
    from tests.convert.open_clip_models import max_abs, perturbed_open_clip_model

    name = "convnext_base"
    reference = perturbed_open_clip_model(name)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params = open_clip_converter.convert_state_dict(state, name)
    images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer(name)(["a photo of a cat", "a diagram"]).numpy().astype(np.int32)
    out = jax.jit(TwoTower(ARCHITECTURES[name].model).apply)({"params": params}, images, ids)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
    errors = {"image": max_abs(out.image, ref_zi), "text": max_abs(out.text, ref_zt)}
    print(f"\n{name} (perturbed random weights) vs open_clip max abs error: {errors}")
    assert max(errors.values()) <= 1e-5, errors
