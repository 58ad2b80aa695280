"""MobileCLIP / MobileCLIP2 (open_clip's MobileCLIP* models): tiny perturbed open_clip models with a MobileCLIP2-L-14
style tower (timm's CLIP ViT, non-causal text) saved as hub repos and converted with no --model against what
open_clip loads from them; every registered architecture's open_clip config maps to it; full-size key accounting."""

import numpy as np
import pytest
import torch

from jaxvlm import pretrained
from jaxvlm.cli import main
from jaxvlm.convert import open_clip as open_clip_converter
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.registry import ARCHITECTURES
from tests.convert.mobileclip_models import TINY_CLIP_VITS, tiny_mobileclip_repo, tiny_timm_clip_vits_known
from tests.convert.open_clip_models import assert_full_size_keys_accounted, compare_with_open_clip

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

# the ViT ones; the FastViT ones (MobileCLIP-S*, MobileCLIP2-S*) are tests/convert/test_fastvit.py's
MOBILECLIP = sorted(
    n for n in ARCHITECTURES if n.startswith("MobileCLIP") and ARCHITECTURES[n].model.vision.kind != "fastvit"
)


@pytest.fixture
def tiny_timm_clip_vit():
    with tiny_timm_clip_vits_known():
        yield


@pytest.mark.parametrize("timm_name", sorted(TINY_CLIP_VITS))
def test_mobileclip_vit_repo_converts_without_model(timm_name, tmp_path, tiny_timm_clip_vit):
    repo = tiny_mobileclip_repo(tmp_path / "repo", timm_name)
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, f"open_clip MobileCLIP repo ({timm_name})")
    assert model.config.vision == TINY_CLIP_VITS[timm_name]
    assert model.config.text.causal == bool(TINY_CLIP_VITS[timm_name].stem_widths)
    assert model.preprocess_config.interpolation == "bilinear" and list(model.preprocess_config.std) == [1.0] * 3


def test_registered_mobileclip_maps_from_open_clips_config():
    assert MOBILECLIP
    for name in MOBILECLIP:
        cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model
        assert converter.registered_name(cfg) == {"MobileCLIP2-B": "MobileCLIP-B"}.get(name, name)  # equal configs


def test_mobileclip_pretrained_pairs_of_registered_architectures_load():
    pairs = [pretrained.get_pretrained(*p) for p in pretrained.list_pretrained() if p[0] in MOBILECLIP]
    assert pairs and all(p.loads for p in pairs)


def test_timm_plain_vit_table_is_timms():
    """The timm ViTs jaxvlm knows by name for MobileCLIP, built by timm on the meta device (with open_clip's token
    pooling) and read back."""
    for name, v in converter.TIMM_PLAIN_VITS.items():
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False, num_classes=0, global_pool="token")
        block, embed = trunk.blocks[0], trunk.patch_embed
        stem = getattr(embed, "backbone", None)
        stem_convs = [layer.conv for layer in stem] if stem is not None else []
        got = v.replace(
            image_size=embed.img_size[0],
            patch_size=embed.img_size[0] // embed.grid_size[0],
            width=trunk.embed_dim,
            depth=len(trunk.blocks),
            heads=block.attn.num_heads,
            mlp_dim=block.mlp.fc1.out_features,
            ln_eps=block.norm1.eps,
            patch_bias=stem is None and embed.proj.bias is not None,
            pre_norm=not isinstance(trunk.norm_pre, torch.nn.Identity),
            class_token=trunk.cls_token is not None,
            stem_widths=tuple(c.out_channels for c in stem_convs),
            stem_kernels=tuple(c.kernel_size[0] for c in stem_convs),
            pos_embed_class=not trunk.no_embed_class,
        )
        assert got == v, name
        assert trunk.reg_token is None and trunk.attn_pool is None, name
        assert isinstance(trunk.fc_norm, torch.nn.Identity) and isinstance(block.ls1, torch.nn.Identity), name
        assert isinstance(block.attn.q_norm, torch.nn.Identity) and block.attn.qkv.bias is not None, name
        assert isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none", name
        for i, c in enumerate(stem_convs):  # kernel = stride, no padding; BatchNorm + GELU between, bias at the end
            assert c.stride == c.kernel_size and c.padding == (0, 0), name
            assert (c.bias is not None) == (i == len(stem_convs) - 1), name
            if c.bias is None:
                bn = stem[i].bn
                assert (bn.eps, bn.momentum, type(bn.act)) == (1e-5, 0.1, torch.nn.GELU), name


@pytest.mark.slow
@pytest.mark.parametrize("name", MOBILECLIP)
def test_converter_accounts_for_every_key(name, monkeypatch):
    assert_full_size_keys_accounted(name, monkeypatch, ["text.positional_embedding", "visual.trunk.head.weight"])


@pytest.mark.slow
def test_full_size_mobileclip_b_matches_open_clip():
    """MobileCLIP-B at full size (the ConvStem's BatchNorm statistics perturbed far from 0 and 1), open_clip's random
    weights perturbed, its state dict converted, end to end in eval mode."""
    import jax

    from jaxvlm.models import TwoTower
    from tests.convert.open_clip_models import max_abs, perturbed_open_clip_model

    name = "MobileCLIP-B"
    reference = perturbed_open_clip_model(name)
    with torch.no_grad():
        for key, value in reference.state_dict().items():
            if key.endswith("running_mean"):
                value.add_(0.5 * torch.randn_like(value))
            elif key.endswith("running_var"):
                value.mul_(torch.exp(0.5 * torch.randn_like(value)))
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params, stats = open_clip_converter.convert_variables(state, name)
    images = np.random.default_rng(0).uniform(-2, 2, (2, 224, 224, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer(name)(["a photo of a cat", "a diagram"]).numpy().astype(np.int32)
    out = jax.jit(TwoTower(ARCHITECTURES[name].model).apply)({"params": params, "batch_stats": stats}, images, ids)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
    errors = {"image": max_abs(out.image, ref_zi), "text": max_abs(out.text, ref_zt)}
    print(f"\n{name} (perturbed random weights and statistics) vs open_clip max abs error: {errors}")
    assert max(errors.values()) <= 1e-5, errors
