"""EVA01 / EVA02 (open_clip's EVA models, timm's eva_giant_* / eva02_*_clip_* image towers): tiny perturbed open_clip
models with EVA01-, EVA02- and EVA02-E-style towers saved as hub repos and converted with no --model against what
open_clip loads from them; jaxvlm's table of timm's EVA ViTs read back from timm; every full-size architecture's keys
and shapes against open_clip's."""

import numpy as np
import pytest
import torch

from jaxvlm import pretrained
from jaxvlm.cli import main
from jaxvlm.convert import open_clip as open_clip_converter
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.errors import InputError
from jaxvlm.models.registry import ARCHITECTURES
from tests.convert.eva_models import TINY_EVA_VITS, tiny_eva_cfg, tiny_eva_repo, tiny_timm_eva_known
from tests.convert.open_clip_models import assert_full_size_keys_accounted, compare_with_open_clip

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

EVA = ["EVA01-g-14", "EVA01-g-14-plus", "EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336", "EVA02-E-14", "EVA02-E-14-plus"]


@pytest.fixture
def tiny_timm_eva():
    with tiny_timm_eva_known():
        yield


@pytest.mark.parametrize("timm_name", sorted(TINY_EVA_VITS))
def test_eva_repo_converts_without_model(timm_name, tmp_path, tiny_timm_eva):
    repo = tiny_eva_repo(tmp_path / "repo", timm_name)
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, f"open_clip EVA repo ({timm_name})")
    assert model.config.vision == TINY_EVA_VITS[timm_name]
    assert model.preprocess_config.resize_mode == "shortest" and model.preprocess_config.interpolation == "bicubic"


def test_registered_eva_maps_from_open_clips_config():
    for name in EVA:
        cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model and converter.registered_name(cfg) == name


def test_eva_pretrained_pairs_load():
    pairs = [pretrained.get_pretrained(*p) for p in pretrained.list_pretrained() if p[0].startswith("EVA")]
    assert sorted({p.arch for p in pairs}) == sorted(EVA) and all(p.loads for p in pairs)
    for p in pairs:
        preprocess = ARCHITECTURES[p.arch].preprocess
        assert (list(preprocess.mean), list(preprocess.std)) == (p.preprocess["mean"], p.preprocess["std"]), p.arch
        assert (preprocess.interpolation, preprocess.resize_mode) == ("bicubic", "shortest"), p.arch


def test_timm_pool_options(tiny_timm_eva):
    cfg = tiny_eva_cfg("eva_jaxvlmtest_patch8_32")
    for key, value in [("timm_pool", "avg"), ("timm_pool", "map"), ("timm_proj", "linear"), ("image_size", 64)]:
        bad = {**cfg, "vision_cfg": {**cfg["vision_cfg"], key: value}}
        with pytest.raises(InputError, match=f"^x: vision_cfg.{key} is"):
            converter.model_config_from_open_clip(bad, "x")


def test_timm_eva_table_is_timms():
    """Every timm EVA ViT jaxvlm knows by name, built by timm on the meta device (with open_clip's token pooling)
    and read back."""
    for name, v in converter.TIMM_EVA_VITS.items():
        if name.startswith("vit_pe_core_"):
            continue
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False, num_classes=0, global_pool="token")
        block, rope = trunk.blocks[0], trunk.rope
        swiglu = hasattr(block.mlp, "fc1_g")
        got = v.replace(
            image_size=trunk.patch_embed.img_size[0],
            patch_size=trunk.patch_embed.patch_size[0],
            width=trunk.embed_dim,
            depth=len(trunk.blocks),
            heads=block.attn.num_heads,
            mlp_dim=(block.mlp.fc1_g if swiglu else block.mlp.fc1).out_features,
            mlp="swiglu" if swiglu else "gelu",
            mlp_norm=not isinstance(block.mlp.norm, torch.nn.Identity),
            attn_norm=not isinstance(block.attn.norm, torch.nn.Identity),
            post_norm=type(block).__name__ == "EvaBlockPostNorm",
            ln_eps=block.norm1.eps,
            patch_bias=trunk.patch_embed.proj.bias is not None,
            pre_norm=not isinstance(trunk.norm_pre, torch.nn.Identity),
            class_token=trunk.cls_token is not None,
            rope=rope is not None,
            **(
                dict(
                    rope_indexing=rope.grid_indexing,
                    rope_offset=rope.grid_offset,
                    rope_ref_grid=None if rope.ref_feat_shape is None else rope.ref_feat_shape[0],
                    rope_temperature=rope.temperature,
                )
                if rope is not None
                else {}
            ),
        )
        assert got == v, name
        # what the converter and EvaViTConfig assume of all of them
        assert trunk.reg_token is None and not trunk.no_embed_class and trunk.attn_pool is None, name
        assert isinstance(trunk.fc_norm, torch.nn.Identity) and not isinstance(trunk.norm, torch.nn.Identity), name
        assert getattr(block, "gamma_1", None) is None and getattr(block, "gamma_2", None) is None, name
        assert block.attn.k_bias is None or block.attn.k_proj is None, name  # a zero buffer, or no key bias
        assert (block.attn.k_proj is None) or block.attn.k_proj.bias is None, name
        if rope is not None:
            assert (rope.in_pixels, rope.rotate_half, rope.grid_type) == (False, False, "index"), name
        if not swiglu:
            assert isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none", name


@pytest.mark.slow
@pytest.mark.parametrize("name", EVA)
def test_converter_accounts_for_every_key(name, monkeypatch):
    blocks = "visual.trunk.blocks.0"
    dropped = ["visual.trunk.head.bias", f"{blocks}.norm1.weight", f"{blocks}.attn.proj.weight"]
    assert_full_size_keys_accounted(name, monkeypatch, dropped)


@pytest.mark.slow
def test_full_size_eva02_b_matches_open_clip():
    """EVA02-B-16 at full size (a 14 x 14 patch grid whose rotary coordinates are scaled to 16 x 16, 64-wide
    heads), open_clip's random weights perturbed, its state dict converted, end to end."""
    import jax

    from jaxvlm.models import TwoTower
    from tests.convert.open_clip_models import max_abs, perturbed_open_clip_model

    name = "EVA02-B-16"
    reference = perturbed_open_clip_model(name)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params = open_clip_converter.convert_state_dict(state, name)
    images = np.random.default_rng(0).uniform(-2, 2, (2, 224, 224, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer(name)(["a photo of a cat", "a diagram"]).numpy().astype(np.int32)
    out = jax.jit(TwoTower(ARCHITECTURES[name].model).apply)({"params": params}, images, ids)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
    errors = {"image": max_abs(out.image, ref_zi), "text": max_abs(out.text, ref_zt)}
    print(f"\n{name} (perturbed random weights) vs open_clip max abs error: {errors}")
    assert max(errors.values()) <= 1e-5, errors
