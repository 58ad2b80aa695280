"""PE-Core (open_clip's Perception Encoder models, timm's vit_pe_core_* image towers): tiny perturbed open_clip
models saved as hub repos and converted with no --model against what open_clip loads from them; jaxvlm's table
of timm's PE ViTs read back from timm; every full-size architecture's keys and shapes against open_clip's."""

import json

import numpy as np
import pytest
import torch

from jaxvlm.cli import main
from jaxvlm.convert import open_clip as open_clip_converter
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.errors import InputError
from jaxvlm.models.registry import ARCHITECTURES, CLIP_TOKENIZER
from tests.convert.eva_models import TINY_PE_VITS, tiny_eva_cfg, tiny_eva_repo, tiny_timm_eva_known
from tests.convert.open_clip_models import assert_full_size_keys_accounted, compare_with_open_clip

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

PE_CORE = ["PE-Core-T-16-384", "PE-Core-S-16-384", "PE-Core-B-16", "PE-Core-L-14-336", "PE-Core-bigG-14-448"]


@pytest.fixture
def tiny_timm_pe():
    with tiny_timm_eva_known():
        yield


@pytest.mark.parametrize("timm_name", sorted(TINY_PE_VITS))
def test_pe_core_repo_converts_without_model(timm_name, tmp_path, tiny_timm_pe):
    repo = tiny_eva_repo(tmp_path / "repo", timm_name)
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, f"open_clip PE-Core repo ({timm_name})")
    assert model.config.vision == TINY_PE_VITS[timm_name]
    assert model.preprocess_config.resize_mode == "squash" and model.preprocess_config.interpolation == "bilinear"
    tokenizer = json.loads((out / "config.json").read_text())["tokenizer"]
    assert tokenizer == CLIP_TOKENIZER.replace(context_length=16).to_dict()


def test_registered_pe_core_maps_from_open_clips_config():
    for name in PE_CORE:
        cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model and converter.registered_name(cfg) == name


def test_timm_proj_options(tiny_timm_pe):
    name = "vit_pe_core_jaxvlmtest_patch8_32"
    cfg = tiny_eva_cfg(name)
    unprojected = {**cfg, "embed_dim": 64, "vision_cfg": {**cfg["vision_cfg"], "timm_proj": "none"}}
    assert not converter.model_config_from_open_clip(unprojected, "x").vision.proj
    for key, value in [("timm_proj", "linear"), ("timm_pool", "avg"), ("image_size", 64)]:
        bad = {**cfg, "vision_cfg": {**cfg["vision_cfg"], key: value}}
        with pytest.raises(InputError, match=f"^x: vision_cfg.{key} is"):
            converter.model_config_from_open_clip(bad, "x")


def test_timm_pe_table_is_timms():
    """Every timm PE-Core ViT jaxvlm knows by name, built by timm on the meta device and read back."""
    for name, v in converter.TIMM_EVA_VITS.items():
        if not name.startswith("vit_pe_core_"):
            continue
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False, num_classes=0)
        block, rope, pool = trunk.blocks[0], trunk.rope, trunk.attn_pool
        got = v.replace(
            image_size=trunk.patch_embed.img_size[0],
            patch_size=trunk.patch_embed.patch_size[0],
            width=trunk.embed_dim,
            depth=len(trunk.blocks),
            heads=block.attn.num_heads,
            mlp_dim=block.mlp.fc1.out_features,
            pool_heads=pool.num_heads,
            pool_mlp_dim=pool.mlp.fc1.out_features,
            ln_eps=block.norm1.eps,
            class_token=trunk.cls_token is not None,
            rope_offset=rope.grid_offset,
            rope_ref_grid=None if rope.ref_feat_shape is None else rope.ref_feat_shape[0],
            rope_temperature=rope.temperature,
        )
        assert got == v, name
        # what the converter and EvaViTConfig assume of all of them
        assert trunk.patch_embed.proj.bias is None and trunk.reg_token is None and not trunk.no_embed_class, name
        assert (rope.grid_indexing, rope.in_pixels, rope.rotate_half, rope.grid_type) == ("xy", False, False, "index")
        assert isinstance(trunk.fc_norm, torch.nn.Identity) and block.gamma_1 is None and block.gamma_2 is None, name
        assert isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none", name
        assert isinstance(pool.mlp.act, torch.nn.GELU) and pool.mlp.act.approximate == "none", name
        assert not isinstance(trunk.norm_pre, torch.nn.Identity) and not isinstance(trunk.norm, torch.nn.Identity)


@pytest.mark.slow
@pytest.mark.parametrize("name", PE_CORE)
def test_converter_accounts_for_every_key(name, monkeypatch):
    dropped = ["visual.trunk.head.bias", "visual.trunk.blocks.0.attn.qkv.weight"]
    assert_full_size_keys_accounted(name, monkeypatch, dropped)


@pytest.mark.slow
def test_full_size_pe_core_t_matches_open_clip():
    """PE-Core-T-16-384 at full size (a 24 x 24 patch grid), open_clip's random weights perturbed, its state dict
    converted: the rotary tables at the real grid and head width, end to end."""
    import jax

    from jaxvlm.models import TwoTower
    from tests.convert.open_clip_models import max_abs, perturbed_open_clip_model

    name = "PE-Core-T-16-384"
    reference = perturbed_open_clip_model(name)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params = open_clip_converter.convert_state_dict(state, name)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 384, 384, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer(name)(["a photo of a cat", "a diagram"]).numpy().astype(np.int32)
    out = jax.jit(TwoTower(ARCHITECTURES[name].model).apply)({"params": params}, images, ids)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
    errors = {"image": max_abs(out.image, ref_zi), "text": max_abs(out.text, ref_zt)}
    print(f"\n{name} (perturbed random weights) vs open_clip max abs error: {errors}")
    assert max(errors.values()) <= 1e-5, errors
