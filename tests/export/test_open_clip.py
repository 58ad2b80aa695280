"""jaxvlm model directories -> open_clip hub repos (`jaxvlm export --to open_clip`), checked in open_clip
itself: the exported folder loaded with `create_model_and_transforms("local-dir:OUT")` and
`get_tokenizer("local-dir:OUT")` (offline) gives jaxvlm's pixels, token ids, embeddings and logits.

Round trips start from perturbed tiny open_clip models saved as hub repos by open_clip's own `save_for_hf`
(tests/convert/open_clip_models.py), converted by jaxvlm, exported, and converted again: the second
conversion gives the same parameters bit for bit. Models jaxvlm initialised itself (saved with
`jaxvlm.model_dir.save`, as after training) export the same way; what open_clip cannot express is refused
with one line and leaves no output.
"""

import copy
import dataclasses
import json

import pytest
from safetensors.numpy import load_file

from jaxvlm import model_dir
from jaxvlm.cli import main
from jaxvlm.convert import convert
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.errors import InputError
from jaxvlm.export import export
from jaxvlm.export import open_clip as exporter
from jaxvlm.models.config import ModelConfig
from jaxvlm.models.registry import ARCHITECTURES
from jaxvlm.models.towers import ViTConfig
from jaxvlm.tokenizers import CLIP_BPE_FILE
from tests.convert.open_clip_models import (
    CLIP_PREPROCESS,
    TINY_CLIP_CFG,
    TINY_SIGLIP_CFG,
    TINY_SIGLIP_UNPROJECTED_CFG,
    TINY_TIMM,
    compare_with_open_clip,
    tiny_clip_repo,
    tiny_siglip_repo,
    tiny_timm_known,
)
from tests.eval.model_dirs import random_model_dir
from tests.export.round_trips import assert_reconverts_exactly
from tests.reference_models import TINY_COCA

open_clip = pytest.importorskip("open_clip")


@pytest.fixture
def tiny_timm():
    with tiny_timm_known():
        yield


def open_clip_config(repo) -> dict:
    return json.loads((repo / "open_clip_config.json").read_text())


# ---------------------------------------------------------------- round trips from open_clip


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    convert("open_clip", tiny_clip_repo(root / "repo"), root / "model")
    return root / "model"


def test_clip_round_trip(clip_model, tmp_path):
    out = export(clip_model, tmp_path / "export", "open_clip")
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert open_clip_config(out)["model_cfg"] == TINY_CLIP_CFG  # the model_cfg open_clip's own repo held
    assert open_clip_config(out)["preprocess_cfg"] == {**CLIP_PREPROCESS, "size": 32, "mode": "RGB"}
    compare_with_open_clip(clip_model, out, "exported tiny CLIP quick_gelu")
    assert_reconverts_exactly(clip_model, "open_clip", out, tmp_path / "again")


@pytest.fixture(scope="module")
def siglip_model(tmp_path_factory, spm_model_file):
    root = tmp_path_factory.mktemp("siglip")
    repo = tiny_siglip_repo(root / "repo", spm_model_file)
    with tiny_timm_known():
        convert("open_clip", repo, root / "model")
    return root / "model"


def test_siglip_round_trip(siglip_model, tmp_path, tiny_timm):
    """A timm SigLIP tower and a tokenizer.json (what open_clip's HFTokenizer saved), canonicalised."""
    out = export(siglip_model, tmp_path / "export", "open_clip", push=None)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    model_cfg = open_clip_config(out)["model_cfg"]
    assert model_cfg["vision_cfg"]["timm_model_name"] == TINY_TIMM
    assert {k: v for k, v in model_cfg["text_cfg"].items() if k != "hf_tokenizer_name"} == {
        k: v for k, v in TINY_SIGLIP_CFG["text_cfg"].items() if k != "hf_tokenizer_name"
    }
    compare_with_open_clip(siglip_model, out, "exported tiny SigLIP (timm tower, tokenizer.json)")
    assert_reconverts_exactly(siglip_model, "open_clip", out, tmp_path / "again")


def test_unprojected_siglip_round_trip(spm_model_file, tmp_path, tiny_timm):
    """A text tower without projection (ViT-SO400M-16-SigLIP-i18n-256's) exports as proj_type 'none' with no
    text_projection, and converts back exactly."""
    repo = tiny_siglip_repo(tmp_path / "repo", spm_model_file, model_cfg=TINY_SIGLIP_UNPROJECTED_CFG)
    convert("open_clip", repo, tmp_path / "model")
    out = export(tmp_path / "model", tmp_path / "export", "open_clip", push=None)
    assert open_clip_config(out)["model_cfg"]["text_cfg"]["proj_type"] == "none"
    assert not any("text_projection" in k for k in load_file(out / "open_clip_model.safetensors"))
    assert_reconverts_exactly(tmp_path / "model", "open_clip", out, tmp_path / "again")


@pytest.fixture(scope="module")
def coca_export(tiny_coca, tmp_path_factory):
    """CoCa: attentional pooler (separate q/k/v weights), appended class token, the caption decoder."""
    _, directory = tiny_coca
    return directory, export(directory, tmp_path_factory.mktemp("coca") / "export", "open_clip")


def test_coca_round_trip(coca_export, tmp_path):
    directory, out = coca_export
    model_cfg = open_clip_config(out)["model_cfg"]
    assert {k: model_cfg[k] for k in TINY_COCA} == TINY_COCA  # the arguments the reference CoCa was built with
    open_clip.create_model_and_transforms(f"local-dir:{out}")  # loads the state dict strictly
    assert_reconverts_exactly(directory, "open_clip", out, tmp_path / "again")


@pytest.mark.slow  # compiling jaxvlm's CoCa takes the time
def test_coca_matches_open_clip(coca_export):
    compare_with_open_clip(*coca_export, "exported tiny CoCa", decoder=True)


def open_clip_arguments(model_cfg: dict) -> dict:
    """What open_clip builds a model_cfg into: its config dataclasses over their defaults, the tokenizer's
    fields apart, an MLP ratio as the width it gives, and of multimodal_cfg the fields CoCa's decoder reads."""
    from open_clip.coca_model import MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    coca = "multimodal_cfg" in model_cfg
    top = converter.COCA_FIELDS if coca else converter.CLIP_FIELDS
    out = {**{k: v for k, v in top.items() if v is not None}, **copy.deepcopy(model_cfg)}
    for key, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg), ("multimodal_cfg", MultimodalCfg)):
        if key in out:
            fields = dataclasses.asdict(cls(**out[key]))
            fields["mlp_ratio"] = int(fields["width"] * fields["mlp_ratio"])  # open_clip's MLP width
            out[key] = fields
    for key in ("hf_tokenizer_name", "tokenizer_kwargs"):
        out["text_cfg"].pop(key)
    if coca:
        read = ("context_length", "width", "heads", "layers", "ls_init_value")  # coca_model._build_text_decoder_tower
        out["multimodal_cfg"] = {k: out["multimodal_cfg"][k] for k in read}
    return out


def test_registered_architectures_export_as_open_clips_own_configs():
    """Every open_clip architecture jaxvlm registers exports to a model_cfg that builds what open_clip's own
    model_configs/*.json builds (CLIP, QuickGELU, SigLIP's timm towers, CoCa): those whose towers the exporter
    writes (plain ViTs and transformer text towers); the other kinds are refused in one line."""
    names = []
    for name in (name for name in ARCHITECTURES if name in open_clip.list_models()):
        try:  # as `write` checks: what the exporter cannot express is refused (tested below), not written
            ours = exporter.model_config_to_open_clip(ARCHITECTURES[name].model)
            exporter._check_reads_back(ours, ARCHITECTURES[name].model)
        except InputError:
            continue
        assert open_clip_arguments(ours) == open_clip_arguments(open_clip.get_model_config(name)), name
        names.append(name)
    print(f"\n{len(names)} registered architectures export as open_clip's own configs")


# ---------------------------------------------------------------- models jaxvlm built


def test_jaxvlm_clip_exports(tmp_path):
    directory = random_model_dir(tmp_path / "model", "tiny-clip")
    out = export(directory, tmp_path / "export", "open_clip")
    assert "quick_gelu" not in open_clip_config(out)["model_cfg"]  # tiny-clip runs exact GELU
    compare_with_open_clip(directory, out, "exported jaxvlm tiny-clip")
    assert_reconverts_exactly(directory, "open_clip", out, tmp_path / "again")


@pytest.fixture(scope="module")
def jaxvlm_siglip(tmp_path_factory, spm_model_file):
    """tiny-siglip (its ViT has the tiny timm model's shape) with a SentencePiece tokenizer, SigLIP's padding."""
    return random_model_dir(tmp_path_factory.mktemp("siglip") / "model", "tiny-siglip", tokenizer_source=spm_model_file)


def test_jaxvlm_siglip_exports(jaxvlm_siglip, tmp_path, tiny_timm):
    out = export(jaxvlm_siglip, tmp_path / "export", "open_clip")
    assert (out / "spiece.model").is_file() and not (out / "tokenizer.json").exists()
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "SiglipTokenizer" and settings["pad_token"] == "</s>", settings
    compare_with_open_clip(jaxvlm_siglip, out, "exported jaxvlm tiny-siglip (SentencePiece)")
    assert_reconverts_exactly(jaxvlm_siglip, "open_clip", out, tmp_path / "again")


def test_hub_repo_names_its_own_tokenizer(jaxvlm_siglip, tmp_path, tiny_timm):
    model = model_dir.load(jaxvlm_siglip)
    exporter.write(model, jaxvlm_siglip, tmp_path, repo_id="me/tiny-siglip")
    assert open_clip_config(tmp_path)["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == "me/tiny-siglip"


# ---------------------------------------------------------------- refusals


def test_cli_refuses_with_one_line_and_no_output(jaxvlm_siglip, tmp_path, capsys):
    """tiny-siglip's ViT has no timm model of its shape (the tests' tiny one is not registered here)."""
    out = tmp_path / "out"
    assert main(["export", str(jaxvlm_siglip), str(out), "--to", "open_clip"]) == 2
    err = capsys.readouterr().err.strip()
    print(f"\n{err}")
    assert err.count("\n") == 0 and "timm" in err and "image_size 32, patch_size 8, width 64" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def replaced(arch, model=None, preprocess=None, tokenizer=None):
    """``arch``'s model directory (without weights) with parts replaced."""
    return model_dir.ModelDir(
        model or arch.model, preprocess or arch.preprocess, tokenizer or arch.tokenizer, {}, params=None
    )


class OtherTower(ViTConfig):
    kind = "convnext"


def _cases():
    clip = ARCHITECTURES["tiny-clip"]
    m = clip.model
    vision, text = m.vision, m.text
    return [
        (replaced(clip, dataclasses.replace(m, vision=dataclasses.replace(vision, pos_embed="sincos2d"))), "pos_embed"),
        (replaced(clip, dataclasses.replace(m, vision=dataclasses.replace(vision, pre_norm=False))), "pre_norm"),
        (replaced(clip, dataclasses.replace(m, text=dataclasses.replace(text, pad_mask="exact"))), "pad_mask"),
        (replaced(clip, dataclasses.replace(m, vision=dataclasses.replace(vision, act="quick_gelu"))), "one tower"),
        (replaced(clip, dataclasses.replace(m, loss="sigmoid")), "logit_bias"),
        (replaced(clip, preprocess=dataclasses.replace(clip.preprocess, image_size=64)), "image_size 64"),
        (replaced(clip, tokenizer=dataclasses.replace(clip.tokenizer, clean="none")), "clean 'none'"),
        (replaced(clip, tokenizer=dataclasses.replace(clip.tokenizer, pad_id=3)), "pad_id 3"),
        (replaced(clip, tokenizer=dataclasses.replace(clip.tokenizer, context_length=20)), "context_length 20"),
    ]


def test_what_open_clip_cannot_express_is_one_line(tmp_path):
    for model, field in _cases():
        out = tmp_path / field.replace(" ", "_").replace("'", "")
        out.mkdir()
        with pytest.raises(InputError) as e:
            exporter.write(model, CLIP_BPE_FILE.parent, out)
        print(f"\n{e.value}")
        assert "\n" not in str(e.value) and field in str(e.value), (field, str(e.value))
    m = ARCHITECTURES["tiny-clip"].model
    cfg = ModelConfig(embed_dim=m.embed_dim, vision=OtherTower(**dataclasses.asdict(m.vision)), text=m.text)
    with pytest.raises(InputError, match="^open_clip cannot express an image tower of kind 'convnext'"):
        exporter.model_config_to_open_clip(cfg)
