"""MobileCLIP-S* / MobileCLIP2-S* (open_clip's models over timm's FastVit MCi trunks): tiny perturbed open_clip models
around tiny timm FastVits (a RepMixer stage, an attention stage with RepCPE; BatchNorm or LayerNorm before
attention) saved as hub repos and converted with no --model against what open_clip loads from them; the repo folded
by timm's reparameterize_model converts to the folded form with the same embeddings; `jaxvlm.Model.reparameterize`
folds as timm does; every registered architecture's open_clip config maps to it; full-size key accounting."""

import jax
import numpy as np
import pytest
import torch

from jaxvlm import pretrained
from jaxvlm.cli import main
from jaxvlm.convert import fastvit as fastvit_converter
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.models.registry import ARCHITECTURES
from tests.convert.fastvit_models import TINY_FASTVITS, tiny_fastvit_model, tiny_fastvit_repo, tiny_timm_fastvits_known
from tests.convert.open_clip_models import (
    TOLERANCE,
    assert_full_size_keys_accounted,
    compare_with_open_clip,
    load_on_one_device,
    max_abs,
    photos,
)

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

FASTVIT_CLIPS = sorted(n for n in ARCHITECTURES if ARCHITECTURES[n].model.vision.kind == "fastvit")


@pytest.fixture
def tiny_timm_fastvit():
    with tiny_timm_fastvits_known():
        yield


@pytest.mark.parametrize("timm_name", sorted(TINY_FASTVITS))
def test_fastvit_repo_converts_without_model(timm_name, tmp_path, tiny_timm_fastvit):
    repo = tiny_fastvit_repo(tmp_path / "repo", timm_name)
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, f"open_clip MobileCLIP repo ({timm_name})")
    assert model.config.vision == TINY_FASTVITS[timm_name] and not model.config.vision.reparameterized
    assert not model.config.text.causal and model.batch_stats


@pytest.mark.parametrize("timm_name", sorted(TINY_FASTVITS))
def test_folding_matches_timm_and_the_folded_repo(timm_name, tmp_path, tiny_timm_fastvit):
    """Multi-branch jaxvlm, jaxvlm folded by Model.reparameterize, the repo timm's reparameterize_model folded
    (converted to the folded form, its keys telling) and timm's folded model itself: the same image embeddings, and
    jaxvlm's folded parameters are the ones converted from timm's folded weights."""
    from timm.utils.model import reparameterize_model

    for folded in (False, True):
        repo = tiny_fastvit_repo(tmp_path / f"repo{folded}", timm_name, folded)
        assert main(["convert", "--from", "open_clip", str(repo), str(tmp_path / f"m{folded}")]) == 0
    branches, converted_folded = load_on_one_device(tmp_path / "mFalse"), load_on_one_device(tmp_path / "mTrue")
    folded = branches.reparameterize()
    assert (
        converted_folded.config.vision == folded.config.vision == TINY_FASTVITS[timm_name].replace(reparameterized=True)
    )
    assert branches.config.vision.reparameterized is False  # the loaded model is left as it was
    pixels = branches.preprocess(photos())
    reference = reparameterize_model(tiny_fastvit_model(timm_name))
    with torch.no_grad():
        ref = reference.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True).numpy()
    z = {"multi-branch": branches.encode_image(pixels), "folded": folded.encode_image(pixels)}
    z["converted folded"] = converted_folded.encode_image(pixels)
    errors = {k: max_abs(v, ref) for k, v in z.items()}
    same = jax.tree.map(lambda a, b: max_abs(a, b), folded.variables, converted_folded.variables)
    errors["folded vs converted folded variables"] = max(jax.tree.leaves(same))
    print(f"\n{timm_name}: vs timm's folded model max abs: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert jax.tree.structure(folded.variables) == jax.tree.structure(converted_folded.variables)
    assert max(errors.values()) <= TOLERANCE, errors


def test_registered_fastvit_clips_map_from_open_clips_config():
    assert len(FASTVIT_CLIPS) == 6
    for name in FASTVIT_CLIPS:
        cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model, name
        assert converter.registered_name(cfg) == {"MobileCLIP2-S2": "MobileCLIP-S2"}.get(name, name)  # equal configs


def test_fastvit_pretrained_pairs_load():
    pairs = [pretrained.get_pretrained(*p) for p in pretrained.list_pretrained() if p[0] in FASTVIT_CLIPS]
    assert len(pairs) == 6 and all(p.loads for p in pairs)


def test_mci_table_is_timms():
    """timm's fastvit_mci* built on the meta device, read back into the table's fields."""
    from timm.layers import LayerNorm2d

    for name, v in converter.MCI.items():
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False, num_classes=8)
        stages = list(trunk.stages)
        attention = [type(s.blocks[0]).__name__ == "AttentionBlock" for s in stages]
        got = v.replace(
            layers=tuple(len(s.blocks) for s in stages),
            dims=tuple(s.blocks[0].mlp.fc1.in_channels for s in stages),
            mlp_ratios=tuple(s.blocks[0].mlp.fc1.out_channels / s.blocks[0].mlp.fc1.in_channels for s in stages),
            token_mixers=tuple("attention" if a else "repmixer" for a in attention),
            pos_embs=tuple(not isinstance(s.pos_emb, torch.nn.Identity) for s in stages),
            downsamples=tuple(not isinstance(s.downsample, torch.nn.Identity) for s in stages),
            se_downsamples=tuple(
                hasattr(s.downsample, "proj") and not isinstance(s.downsample.proj[0].se, torch.nn.Identity)
                for s in stages
            ),
            lkc_use_act=not isinstance(stages[1].downsample.proj[0].act, torch.nn.Identity),
            stem_scale_branch=trunk.stem[0].conv_scale is not None,
            attention_norm="layer_norm" if isinstance(stages[-1].blocks[0].norm, LayerNorm2d) else "batch_norm",
            cls_ratio=trunk.final_conv.out_chs / trunk.final_conv.in_chs,
        )
        assert got == v, name


@pytest.mark.slow
@pytest.mark.parametrize("name", FASTVIT_CLIPS)
def test_converter_accounts_for_every_key(name, monkeypatch):
    """Full size, shapes only: every open_clip key used once, parameters and BatchNorm statistics counted."""
    views = lambda blocks: {k: np.broadcast_to(x, (len(blocks), *x.shape)) for k, x in blocks[0].items()}  # noqa: E731
    monkeypatch.setattr(fastvit_converter, "stack_blocks", views)
    assert_full_size_keys_accounted(name, monkeypatch, ["text.positional_embedding", "visual.trunk.head.fc.weight"])


@pytest.mark.slow
def test_full_size_mobileclip_s1_matches_open_clip():
    """MobileCLIP-S1 at full size (BatchNorm statistics perturbed far from 0 and 1), open_clip's random weights
    perturbed, its state dict converted; through `jaxvlm.Model` as loaded (multi-branch) and reparameterized."""
    from jaxvlm.api import Model
    from jaxvlm.convert import open_clip as open_clip_converter
    from jaxvlm.tokenizers import CLIP_BPE_FILE, build_tokenizer
    from tests.convert.open_clip_models import perturbed_open_clip_model

    name = "MobileCLIP-S1"
    reference = perturbed_open_clip_model(name)
    with torch.no_grad():
        for key, value in reference.state_dict().items():
            if key.endswith("running_mean"):
                value.add_(0.5 * torch.randn_like(value))
            elif key.endswith("running_var"):
                value.mul_(torch.exp(0.5 * torch.randn_like(value)))
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params, stats = open_clip_converter.convert_variables(state, name)
    arch = ARCHITECTURES[name]
    model = Model(
        arch.model, params, arch.preprocess, build_tokenizer(arch.tokenizer, CLIP_BPE_FILE.parent), batch_stats=stats
    )
    folded = model.reparameterize()
    images = np.random.default_rng(0).uniform(0, 1, (2, 256, 256, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer(name)(["a photo of a cat", "a diagram"]).numpy().astype(np.int32)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True).numpy()
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True).numpy()
    errors = {
        "image": max_abs(model.encode_image(images), ref_zi),
        "folded image": max_abs(folded.encode_image(images), ref_zi),
        "text": max_abs(model.encode_text(ids), ref_zt),
    }
    print(f"\n{name} full size vs open_clip max abs: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOLERANCE, errors
