"""ViTamin (open_clip's ViTamin-* models, timm's vitamin_* hybrid towers under open_clip's TimmModel head): tiny
perturbed open_clip models saved as hub repos and converted with no --model against what open_clip loads from
them; jaxvlm's table of timm's ViTamins read back from timm; every full-size architecture's keys and shapes
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
from tests.convert.open_clip_models import assert_full_size_keys_accounted, compare_with_open_clip
from tests.convert.vitamin_models import TINY_VITAMINS, tiny_timm_vitamins_known, tiny_vitamin_cfg, tiny_vitamin_repo

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

VITAMIN = sorted(name for name in ARCHITECTURES if name.startswith("ViTamin-"))


@pytest.fixture
def tiny_timm_vitamins():
    with tiny_timm_vitamins_known():
        yield


# the tower without positions run at 96 px, though timm builds it for 64 (as open_clip runs ViTamin-XL-384)
@pytest.mark.parametrize("timm_name, image_size", [("vitamin_jaxvlmtest", 64), ("vitamin_jaxvlmtest_nopos", 96)])
def test_vitamin_repo_converts_without_model(timm_name, image_size, tmp_path, tiny_timm_vitamins):
    repo = tiny_vitamin_repo(tmp_path / "repo", timm_name, image_size)
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, f"open_clip ViTamin repo ({timm_name}, {image_size} px)")
    assert model.config.vision == TINY_VITAMINS[timm_name].replace(image_size=image_size)
    # OpenAI's: shortest side, bicubic
    assert model.preprocess_config == PreprocessConfig(image_size=image_size)
    tokenizer = json.loads((out / "config.json").read_text())["tokenizer"]
    assert tokenizer == CLIP_TOKENIZER.to_dict()


def test_registered_vitamin_maps_from_open_clips_config():
    assert len(VITAMIN) == 15
    for name in VITAMIN:
        cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model, name
    # ViTamin-XL-384 is timm's vitamin_xlarge_384 run at 256 px: the same architecture as ViTamin-XL-256
    assert ARCHITECTURES["ViTamin-XL-384"].model == ARCHITECTURES["ViTamin-XL-256"].model


def test_pretrained_pairs_load_with_open_clips_preprocessing():
    from jaxvlm import pretrained

    pairs = [pair for pair in pretrained.list_pretrained() if pair[0] in VITAMIN]
    assert len(pairs) == 15
    for arch, tag in pairs:
        assert pretrained.get_pretrained(arch, tag).loads, (arch, tag)
        cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag)
        got = ARCHITECTURES[arch].preprocess
        assert (got.mean, got.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
        assert (got.interpolation, got.resize_mode) == (cfg["interpolation"], cfg["resize_mode"])
        assert got.image_size == open_clip.get_model_config(arch)["vision_cfg"]["image_size"]


def test_timm_options(tiny_timm_vitamins):
    cfg = tiny_vitamin_cfg("vitamin_jaxvlmtest")
    avg = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "timm_pool": "avg", "timm_proj_bias": True}}
    got = converter.model_config_from_open_clip(avg, "x").vision
    assert got == TINY_VITAMINS["vitamin_jaxvlmtest"].replace(proj_bias=True)
    for key, value in [("timm_proj", "mlp"), ("timm_pool", "max"), ("image_size", 96)]:
        bad = {**cfg, "vision_cfg": {**cfg["vision_cfg"], key: value}}
        with pytest.raises(InputError, match=f"^x: vision_cfg.{key} is"):
            converter.model_config_from_open_clip(bad, "x")
    # without learned positions timm's tower runs at open_clip's image_size
    nopos = tiny_vitamin_cfg("vitamin_jaxvlmtest_nopos")
    nopos["vision_cfg"]["image_size"] = 96
    assert converter.model_config_from_open_clip(nopos, "x").vision.image_size == 96


def test_timm_vitamin_table_is_timms():
    """Every timm ViTamin jaxvlm knows by name, built by timm on the meta device and read back."""
    for name, v in converter.TIMM_VITAMINS.items():
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False)
        backbone = trunk.patch_embed.backbone
        stages = list(backbone.stages)
        block = trunk.blocks[0]
        got = v.replace(
            image_size=trunk.patch_embed.img_size[0],
            stem_width=backbone.stem.conv1.out_channels,
            dims=tuple(s[0].out_chs for s in stages),
            depths=tuple(len(s) for s in stages),
            width=trunk.embed_dim,
            depth=len(trunk.blocks),
            heads=block.attn.num_heads,
            mlp_dim=block.mlp.w0.out_features,
            pos_embed=trunk.pos_embed is not None,
            ln_eps=block.norm1.eps,
        )
        assert got == v, name
        # what the converter and ViTaminConfig assume of all of them
        mbconvs = [b for s in stages for b in s]
        norms = [backbone.stem.norm1, backbone.pool.norm, block.norm2, block.mlp.norm, trunk.fc_norm]
        norms += [b.pre_norm for b in mbconvs]
        assert all(n.eps == v.ln_eps for n in norms), name
        assert all(b.conv1_1x1.out_channels == v.hidden(b.out_chs) for b in mbconvs), name
        assert all(b.conv2_kxk.kernel_size == (3, 3) and b.conv2_kxk.padding == (1, 1) for b in mbconvs), name
        assert isinstance(trunk.norm, torch.nn.Identity) and trunk.global_pool == "avg", name
        assert trunk.num_prefix_tokens == 0 and block.attn.qkv.bias is not None, name


@pytest.mark.slow
@pytest.mark.parametrize("name", VITAMIN)
def test_converter_accounts_for_every_key(name, monkeypatch):
    backbone = "visual.trunk.patch_embed.backbone"
    dropped = [f"{backbone}.stages.1.0.shortcut.expand.weight", "visual.trunk.blocks.3.mlp.w1.bias"]
    assert_full_size_keys_accounted(name, monkeypatch, dropped)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViTamin-S", "ViTamin-XL-384"])
def test_full_size_vitamin_matches_open_clip(name):
    """At full size (ViTamin-S at 224 px: a 14 x 14 grid; ViTamin-XL-384, timm's 384 px tower without positions,
    at open_clip's 256 px), open_clip's random weights perturbed, its state dict converted, end to end."""
    import jax

    from jaxvlm.models import TwoTower
    from tests.convert.open_clip_models import max_abs, perturbed_open_clip_model

    reference = perturbed_open_clip_model(name)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params = open_clip_converter.convert_state_dict(state, name)
    size = ARCHITECTURES[name].model.vision.image_size
    images = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer(name)(["a photo of a cat", "a diagram"]).numpy().astype(np.int32)
    out = jax.jit(TwoTower(ARCHITECTURES[name].model).apply)({"params": params}, images, ids)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
    errors = {"image": max_abs(out.image, ref_zi), "text": max_abs(out.text, ref_zt)}
    print(f"\n{name} (perturbed random weights) vs open_clip max abs error: {errors}")
    assert max(errors.values()) <= 1e-5, errors
