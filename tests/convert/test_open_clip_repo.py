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
from safetensors.numpy import load_file

from jaxvlm.cli import main
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.convert.open_clip import convert_state_dict
from jaxvlm.errors import InputError
from jaxvlm.models.registry import ARCHITECTURES
from jaxvlm.tokenizers import CLIP_BPE_FILE
from tests.convert.open_clip_models import (
    TINY_CLIP_CFG,
    TINY_SIGLIP_UNPROJECTED_CFG,
    compare_with_open_clip,
    tiny_clip_repo,
    tiny_siglip2_repo,
    tiny_siglip_repo,
    tiny_timm_known,
)
from tests.reference_models import TINY_COCA

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def clip_repo(tmp_path_factory):
    return tiny_clip_repo(tmp_path_factory.mktemp("repos") / "tiny-clip-repo")


@pytest.fixture(scope="module")
def siglip_repo(tmp_path_factory, spm_model_file):
    return tiny_siglip_repo(tmp_path_factory.mktemp("repos") / "tiny-siglip-repo", spm_model_file, False)


@pytest.fixture(scope="module")
def siglip2_repo(tmp_path_factory):
    return tiny_siglip2_repo(tmp_path_factory.mktemp("repos") / "tiny-siglip2-repo")


@pytest.fixture
def tiny_timm():
    """jaxvlm knows timm's own SigLIP ViTs by name (checked against timm below); the test's tower joins them."""
    with tiny_timm_known():
        yield


def convert_and_compare(repo, out, what):
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    return compare_with_open_clip(out, repo, f"open_clip repo {what}")


def saved_tokenizer(directory) -> dict:
    return json.loads((directory / "config.json").read_text())["tokenizer"]


def test_clip_repo_converts_without_model(clip_repo, tmp_path):
    model = convert_and_compare(clip_repo, tmp_path / "model", "tiny CLIP quick_gelu")
    assert model.provenance["model"] == "tiny-clip-quickgelu"  # the registered architecture it equals
    assert model.config == ARCHITECTURES["tiny-clip-quickgelu"].model
    assert model.preprocess_config.interpolation == "bilinear"  # from preprocess_cfg, not the registry's
    assert saved_tokenizer(tmp_path / "model")["kind"] == "clip_bpe"


def test_siglip_repo_converts_without_model(siglip_repo, tmp_path, tiny_timm):
    assert (siglip_repo / "open_clip_pytorch_model.bin").is_file()
    model = convert_and_compare(siglip_repo, tmp_path / "model", "tiny SigLIP (timm tower, .bin)")
    assert "model" not in model.provenance  # no registered architecture has these sizes
    assert model.config.text.act == "gelu_tanh" and model.config.vision.act == "gelu"
    tokenizer = saved_tokenizer(tmp_path / "model")
    assert (tokenizer["kind"], tokenizer["clean"]) == ("hf_json", "canonicalize"), tokenizer


def test_siglip2_repo_converts_without_model(siglip2_repo, tmp_path, tiny_timm):
    """SigLIP 2's text side: Gemma's tokenizer.json (BPE with byte fallback, <eos> appended, <pad> 0), which
    jaxvlm records as the registry's SigLIP 2 architectures do."""
    model = convert_and_compare(siglip2_repo, tmp_path / "model", "tiny SigLIP 2 (Gemma tokenizer.json)")
    assert model.config.text.act == "gelu_tanh" and model.config.text.width < model.config.vision.width
    context = model.config.text.context_length
    registered = ARCHITECTURES["ViT-B-16-SigLIP2"].tokenizer.replace(context_length=context)
    assert saved_tokenizer(tmp_path / "model") == registered.to_dict()
    ids = model.tokenize(["a photo of a cat"])[0]
    assert 1 in ids and ids[-1] == 0 and 2 not in ids  # <eos>, padded with <pad>, no <bos>


def test_unprojected_siglip_repo_converts(spm_model_file, tmp_path, tiny_timm):
    """A text tower without text_projection (proj_type 'none', as ViT-SO400M-16-SigLIP-i18n-256's): its pooled
    features are the text embedding; a state dict that still has a projection is refused."""
    repo = tiny_siglip_repo(tmp_path / "repo", spm_model_file, model_cfg=TINY_SIGLIP_UNPROJECTED_CFG)
    model = convert_and_compare(repo, tmp_path / "model", "tiny SigLIP without text projection")
    assert not model.config.text.proj and model.config.text.width == model.config.embed_dim
    weights = load_file(repo / "open_clip_model.safetensors")
    weights["text.text_projection"] = np.zeros((64, 64), np.float32)
    with pytest.raises(InputError, match="unused source keys, e.g. text.text_projection"):
        convert_state_dict(weights, model.config)


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
        ("swin_base_patch4_window7_224", "vision_cfg.timm_model_name"),
        # the HF text tower's config.json is downloaded from hf_model_name's repo, as open_clip does
        ("roberta-ViT-B-32", "text_cfg.hf_model_name (its config.json): hf-hub:roberta-base"),
        # no tokenizer files: timm/ViT-B-16-SigLIP's are downloaded, as open_clip does (the suite runs offline)
        ("ViT-B-16-SigLIP", "text_cfg.hf_tokenizer_name (the repo holds no tokenizer files): hf-hub:timm/"),
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
        ({**base, "vision_cfg": {**base["vision_cfg"], "pool_type": "none"}}, "vision_cfg.pool_type"),
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


def test_every_registered_open_clip_architecture_maps_from_open_clips_own_config(tmp_path):
    from tests.convert.hf_text_models import hf_configs_offline, published_hf_configs

    # SigLIP 2 NaFlex is transformers' and big_vision's, Chinese-CLIP and ALIGN transformers': open_clip has no config
    # for them
    only_hf = ("tiny-", "chinese-clip-", "ALIGN-")
    names = [n for n in ARCHITECTURES if not n.startswith(only_hf) and not n.endswith("-NaFlex")]
    for name in names:
        with hf_configs_offline(published_hf_configs(), tmp_path):  # HF text towers: their hf_model_name's config
            cfg = converter.model_config_from_open_clip(open_clip.get_model_config(name), name)
        assert cfg == ARCHITECTURES[name].model, name
        # open_clip configs that are equal name the first of them
        assert converter.registered_name(cfg) == {
            "MobileCLIP2-B": "MobileCLIP-B",
            "MobileCLIP2-S2": "MobileCLIP-S2",
            "ViTamin-XL-384": "ViTamin-XL-256",
        }.get(name, name)
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
