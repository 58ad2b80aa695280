"""open_clip hub repos -> jaxvlm with no --model: random-initialised (and perturbed) tiny open_clip
models saved by open_clip's own `save_for_hf` (open_clip_config.json, weights, tokenizer files),
converted through the CLI from the directory, and compared with what open_clip itself loads from that
directory (`local-dir:`): preprocessing, token ids, embeddings and logits. Also: every open_clip
architecture jaxvlm registers maps from open_clip's own config to exactly the registered one, and
what jaxvlm cannot build is one error line naming the field."""

import copy
import dataclasses
import inspect
import json
import shutil

import numpy as np
import pytest
import torch

from jaxvlm.cli import main
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.errors import InputError
from jaxvlm.models.registry import ARCHITECTURES
from jaxvlm.preprocess import OPENAI_MEAN, OPENAI_STD
from jaxvlm.tokenizers import CLIP_BPE_FILE
from tests.convert.open_clip_models import CAPTIONS, TOLERANCE, load_on_one_device, max_abs, photos
from tests.reference_models import TINY_COCA
from tests.tolerances import assert_close_to_scale

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

# tiny-clip-quickgelu's sizes, so the converted directory records that registered name
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
CLIP_PREPROCESS = {
    "mean": list(OPENAI_MEAN),
    "std": list(OPENAI_STD),
    "interpolation": "bilinear",
    "resize_mode": "shortest",
}

# A SigLIP as open_clip builds ViT-B-16-SigLIP2, at tiny sizes: a timm SigLIP ViT (registered with timm
# below, as timm defines its vit_*_siglip_* models) and open_clip's bidirectional text tower with tanh GELU,
# narrower and deeper than the image tower so that swapped tensors show
TINY_TIMM = "vit_jaxvlmtest_patch8_siglip_32"
TINY_TIMM_VIT = converter.TimmViT(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256, act="gelu")
TINY_SIGLIP_CFG = {
    "embed_dim": 64,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": 32,
        "timm_model_name": TINY_TIMM,
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 256,
        "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": 48,
        "heads": 3,
        "layers": 3,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
        "act_kwargs": {"approximate": "tanh"},
    },
}
SIGLIP_PREPROCESS = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "squash",
}


def register_tiny_timm_siglip() -> None:
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if timm.models.is_model(TINY_TIMM):
        return
    v = TINY_TIMM_VIT

    def vit_jaxvlmtest_patch8_siglip_32(pretrained: bool = False, **kwargs):
        args = dict(
            img_size=v.image_size,
            patch_size=v.patch_size,
            embed_dim=v.width,
            depth=v.depth,
            num_heads=v.heads,
            mlp_ratio=v.mlp_dim / v.width,
            class_token=False,
            global_pool="map",
        )
        return _create_vision_transformer(TINY_TIMM, pretrained=pretrained, **dict(args, **kwargs))

    register_model(vit_jaxvlmtest_patch8_siglip_32)


class NoTokenizerFiles:
    """What save_for_hf saves for open_clip's CLIP BPE (its SimpleTokenizer has no save_pretrained;
    push_to_hf_hub would upload a transformers copy that open_clip never runs)."""

    def save_pretrained(self, directory) -> None:
        pass


def perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():  # every tensor moves off its initial value, so swapped or missed ones show
        for key, value in model.state_dict().items():
            if key != "logit_scale" and value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
    return model.eval()


def save_repo(directory, model, tokenizer, model_cfg, preprocess_cfg, safe_serialization):
    from open_clip.push_to_hf_hub import save_for_hf

    open_clip.set_model_preprocess_cfg(model, {**preprocess_cfg, "size": model_cfg["vision_cfg"]["image_size"]})
    save_for_hf(model, tokenizer, copy.deepcopy(model_cfg), directory, safe_serialization=safe_serialization)
    return directory


def siglip_tokenizer(spm_model_file, directory, context_length):
    """open_clip's HFTokenizer over a transformers T5 tokenizer of the test's SentencePiece model, padding
    with the end token as SigLIP does: what open_clip's SigLipTokenizer makes, which transformers 5 no
    longer builds from a bare .model file."""
    from open_clip.tokenizer import HFTokenizer

    directory.mkdir()
    shutil.copy(spm_model_file, directory / "spiece.model")
    settings = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "legacy": False, "pad_token": "</s>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return HFTokenizer(str(directory), context_length=context_length, clean="canonicalize")


@pytest.fixture(scope="module")
def clip_repo(tmp_path_factory):
    torch.manual_seed(0)
    model = perturbed(open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CFG)))
    directory = tmp_path_factory.mktemp("repos") / "tiny-clip-repo"
    return save_repo(directory, model, NoTokenizerFiles(), TINY_CLIP_CFG, CLIP_PREPROCESS, safe_serialization=True)


@pytest.fixture(scope="module")
def siglip_repo(tmp_path_factory, spm_model_file):
    register_tiny_timm_siglip()
    torch.manual_seed(0)
    cfg = {k: v for k, v in copy.deepcopy(TINY_SIGLIP_CFG).items() if k != "custom_text"}
    model = perturbed(open_clip.CustomTextCLIP(**cfg))
    directory = tmp_path_factory.mktemp("repos") / "tiny-siglip-repo"
    tokenizer = siglip_tokenizer(
        spm_model_file, directory.parent / "spm", TINY_SIGLIP_CFG["text_cfg"]["context_length"]
    )
    return save_repo(directory, model, tokenizer, TINY_SIGLIP_CFG, SIGLIP_PREPROCESS, safe_serialization=False)


@pytest.fixture
def tiny_timm_known():
    """jaxvlm knows timm's own SigLIP ViTs by name (checked against timm below); the test's tower joins them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(converter.TIMM_VITS, TINY_TIMM, TINY_TIMM_VIT)
        yield


def convert_and_compare(repo, out, what):
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = load_on_one_device(out)
    reference, _, transform = open_clip.create_model_and_transforms(f"local-dir:{repo}")
    reference.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{repo}")

    pixels = model.preprocess(photos())
    ref_pixels = torch.stack([transform(p) for p in photos()]).permute(0, 2, 3, 1).numpy()
    ids = model.tokenize(CAPTIONS)
    ref_ids = tokenizer(CAPTIONS).numpy()
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    logits = model.logits(zi, zt)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
        scale = float(reference.logit_scale.exp())
        ref_logits = scale * ref_zi @ ref_zt.T
        if reference.logit_bias is not None:
            ref_logits = ref_logits + reference.logit_bias
            scale += abs(float(reference.logit_bias))
    errors = {"pixels": max_abs(pixels, ref_pixels), "image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    print(f"\nopen_clip repo {what} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert np.array_equal(ids, ref_ids), (ids, ref_ids)
    assert errors["pixels"] == 0, errors
    assert errors["image"] <= TOLERANCE and errors["text"] <= TOLERANCE, errors
    assert_close_to_scale(logits, ref_logits.numpy(), rtol_of_scale=TOLERANCE, scale=scale, what=f"{what} logits")
    return model


def saved_tokenizer(directory) -> dict:
    return json.loads((directory / "config.json").read_text())["tokenizer"]


def test_clip_repo_converts_without_model(clip_repo, tmp_path):
    model = convert_and_compare(clip_repo, tmp_path / "model", "tiny CLIP quick_gelu")
    assert model.provenance["model"] == "tiny-clip-quickgelu"  # the registered architecture it equals
    assert model.config == ARCHITECTURES["tiny-clip-quickgelu"].model
    assert model.preprocess_config.interpolation == "bilinear"  # from preprocess_cfg, not the registry's
    assert saved_tokenizer(tmp_path / "model")["kind"] == "clip_bpe"


def test_siglip_repo_converts_without_model(siglip_repo, tmp_path, tiny_timm_known):
    assert (siglip_repo / "open_clip_pytorch_model.bin").is_file()
    model = convert_and_compare(siglip_repo, tmp_path / "model", "tiny SigLIP (timm tower, .bin)")
    assert "model" not in model.provenance  # no registered architecture has these sizes
    assert model.config.text.act == "gelu_tanh" and model.config.vision.act == "gelu"
    tokenizer = saved_tokenizer(tmp_path / "model")
    assert (tokenizer["kind"], tokenizer["clean"]) == ("hf_json", "canonicalize"), tokenizer


def test_model_flag_with_a_repo_is_checked(clip_repo, tmp_path, capsys):
    out = tmp_path / "same"
    assert main(["convert", "--from", "open_clip", str(clip_repo), str(out), "--model", "tiny-clip-quickgelu"]) == 0
    out = tmp_path / "other"
    assert main(["convert", "--from", "open_clip", str(clip_repo), str(out), "--model", "tiny-clip"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tiny-clip-quickgelu, not tiny-clip" in err and "act" in err, err
    assert not out.exists()


def test_a_weights_file_still_needs_model(clip_repo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--from", "open_clip", str(clip_repo / "open_clip_model.safetensors"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--model" in err, err
    assert not out.exists()


def write_config(directory, model_cfg, preprocess_cfg=None):
    directory.mkdir(parents=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    "name, field",
    [
        ("RN50", "vision_cfg.layers"),
        ("convnext_base", "vision_cfg.timm_model_name"),
        ("EVA02-B-16", "vision_cfg.timm_model_name"),
        ("roberta-ViT-B-32", "text_cfg.hf_model_name"),
        ("ViT-B-16-SigLIP", "no tokenizer files"),  # open_clip would download timm/ViT-B-16-SigLIP's
    ],
)
def test_what_jaxvlm_cannot_build_is_one_line(name, field, tmp_path, capsys):
    repo = write_config(tmp_path / name, open_clip.get_model_config(name))
    out = tmp_path / "out"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    print(f"\n{err}")
    assert err.count("\n") == 0 and name in err and field in err, err
    assert not out.exists()


def test_unknown_and_unsupported_options_name_the_field():
    base = copy.deepcopy(TINY_CLIP_CFG)
    cases = [
        ({**base, "new_option": 1}, "model_cfg.new_option"),
        ({**base, "vision_cfg": {**base["vision_cfg"], "ls_init_value": 0.1}}, "vision_cfg.ls_init_value"),
        ({**base, "vision_cfg": {**base["vision_cfg"], "pool_type": "avg"}}, "vision_cfg.pool_type"),
        ({**base, "text_cfg": {**base["text_cfg"], "qk_norm": True}}, "text_cfg.qk_norm"),
        ({**base, "text_cfg": {**base["text_cfg"], "embed_cls": True}}, "text_cfg.embed_cls"),
    ]
    for cfg, field in cases:
        with pytest.raises(InputError, match=f"^arch: {field}"):
            converter.model_config_from_open_clip(cfg, "arch")


def test_preprocess_cfg_is_read_as_open_clip_reads_it():
    read = converter.preprocess_from_open_clip
    p = read({"mean": 0.5, "std": 0.5, "interpolation": "random", "size": 999, "unknown": 1, "std_": None}, 32, "x")
    assert (p.image_size, p.mean, p.std, p.interpolation) == (32, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert read({}, 32, "x") == ARCHITECTURES["tiny-clip"].preprocess
    with pytest.raises(InputError, match="^x.resize_mode is 'longest'"):
        read({"resize_mode": "longest"}, 32, "x")


def test_every_registered_open_clip_architecture_maps_from_open_clips_own_config():
    names = [name for name in ARCHITECTURES if not name.startswith("tiny-")]
    for name in names:
        cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model, name
        assert converter.registered_name(cfg) == name
    print(f"\n{len(names)} architectures map to the registered configs")


def test_the_tiny_references_map_to_the_tiny_architectures():
    """open_clip's arguments of the tiny references (tests/reference_models.py) are jaxvlm's tiny-* configs."""
    coca = {**copy.deepcopy(TINY_COCA), "custom_text": True}
    assert converter.model_config_from_open_clip(coca, "tiny coca") == ARCHITECTURES["tiny-coca"].model
    clip = converter.model_config_from_open_clip(TINY_CLIP_CFG, "tiny clip")
    assert converter.registered_name(clip) == "tiny-clip-quickgelu"


def test_tokenizer_is_the_one_open_clip_runs(tmp_path, spm_model_file):
    read = converter.tokenizer_from_open_clip
    siglip_text = open_clip.get_model_config("ViT-B-16-SigLIP")["text_cfg"]
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(spm_model_file, repo / "spiece.model")
    tokenizer, source = read(repo, siglip_text, 64, None, "x")  # a SentencePiece model only: SigLIP's padding
    assert (tokenizer.kind, tokenizer.pad_id, tokenizer.eos_id) == ("sentencepiece", 1, 1)
    assert source == repo / "spiece.model"
    with pytest.raises(InputError, match="clean is 'whitespace'"):  # jaxvlm's SentencePiece runs canonicalised text
        read(repo, {**siglip_text, "tokenizer_kwargs": {}}, 64, None, "x")
    tokenizer, source = read(tmp_path, siglip_text, 64, spm_model_file, "x")  # --tokenizer, no files in the repo
    assert (tokenizer.kind, source) == ("sentencepiece", spm_model_file)
    (repo / "tokenizer.json").write_text("{}")  # without hf_tokenizer_name open_clip runs CLIP's BPE regardless
    tokenizer, source = read(repo, TINY_CLIP_CFG["text_cfg"], 77, None, "x")
    assert (tokenizer, source) == (ARCHITECTURES["tiny-clip"].tokenizer, CLIP_BPE_FILE)


def test_config_fields_are_open_clips():
    """jaxvlm's tables of open_clip's config fields and defaults are open_clip's own."""
    from open_clip.coca_model import MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    for table, cls in [
        (converter.VISION_FIELDS, CLIPVisionCfg),
        (converter.TEXT_FIELDS, CLIPTextCfg),
        (converter.MULTIMODAL_FIELDS, MultimodalCfg),
    ]:
        assert table == {f.name: f.default for f in dataclasses.fields(cls)}, cls.__name__
    for table, cls in [(converter.CLIP_FIELDS, open_clip.CLIP), (converter.COCA_FIELDS, open_clip.CoCa)]:
        arguments = set(inspect.signature(cls).parameters) - {"cast_dtype"}
        assert set(table) - {"custom_text"} == arguments, cls.__name__


def timm_act(module: torch.nn.Module) -> str:
    """jaxvlm's name of a timm activation layer: torch's GELU, or timm's GELU / GELUTanh ('gelu_tanh')."""
    if isinstance(module, torch.nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    return {"GELU": "gelu", "GELUTanh": "gelu_tanh"}[type(module).__name__]


def test_timm_table_is_timms():
    """Every timm SigLIP ViT jaxvlm knows by name, built by timm on the meta device and read back."""
    for name, v in converter.TIMM_VITS.items():
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False, num_classes=0, weight_init="skip")
        block = trunk.blocks[0]
        got = converter.TimmViT(
            image_size=trunk.patch_embed.img_size[0],
            patch_size=trunk.patch_embed.patch_size[0],
            width=trunk.embed_dim,
            depth=len(trunk.blocks),
            heads=block.attn.num_heads,
            mlp_dim=block.mlp.fc1.out_features,
            act=timm_act(block.mlp.act),
        )
        assert got == v, name
        # what the converter and ViTConfig assume of all of them
        assert trunk.cls_token is None and trunk.reg_token is None and trunk.global_pool == "map", name
        assert isinstance(trunk.norm_pre, torch.nn.Identity) and isinstance(trunk.fc_norm, torch.nn.Identity), name
        assert isinstance(block.ls1, torch.nn.Identity) and isinstance(block.attn.q_norm, torch.nn.Identity), name
        assert block.norm1.eps == 1e-6 and trunk.patch_embed.proj.bias is not None, name
        assert timm_act(trunk.attn_pool.mlp.act) == v.act, name
