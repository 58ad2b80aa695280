"""HF transformers -> jaxvlm parity: small random CLIPModel / SiglipModel with every parameter
perturbed, written with save_pretrained, converted, and compared in fp32 with what transformers
computes; plus the converter's refusals and its preprocessing / tokenizer choices."""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

from jaxvlm.convert import hf
from jaxvlm.errors import InputError
from jaxvlm.models.two_tower import TwoTower, contrastive_logits
from jaxvlm.tokenizers import CLIP_BPE_FILE
from tests.convert.hf_models import (
    CASES,
    CONTEXT,
    IMAGE,
    PATCH,
    TOLERANCE,
    VOCAB,
    features,
    max_abs,
    perturbed,
    siglip_config,
    tower,
)
from tests.tolerances import assert_close_to_scale

transformers = pytest.importorskip("transformers")


@dataclasses.dataclass
class Saved:
    name: str
    reference: torch.nn.Module
    directory: pathlib.Path
    make_ids: object
    tokenizer: pathlib.Path  # passed explicitly: the saved directories carry none

    def convert(self, directory=None, model_name=None):
        return hf.convert(directory or self.directory, model_name, self.tokenizer)


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory, spm_model_file):
    model_cls, make_config, make_ids = CASES[request.param]
    reference = perturbed(model_cls, make_config())
    directory = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(directory)
    tokenizer = CLIP_BPE_FILE if request.param.startswith("clip") else spm_model_file
    return Saved(request.param, reference, directory, make_ids, tokenizer)


@pytest.mark.latest
def test_embeddings_and_logits_match(saved):
    name, reference, make_ids = saved.name, saved.reference, saved.make_ids
    converted = saved.convert()
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((3, 3, IMAGE, IMAGE)).astype(np.float32)
    ids = make_ids(rng)
    model, variables = TwoTower(converted.config), {"params": converted.params}
    images = pixels.transpose(0, 2, 3, 1)
    zi = model.apply(variables, images, method="encode_image")
    zt = model.apply(variables, ids.astype(np.int32), method="encode_text")
    logits = contrastive_logits(zi, zt, converted.params["t"], converted.params.get("b"))
    with torch.no_grad():
        px, tids = torch.from_numpy(pixels), torch.from_numpy(ids).long()
        ref_zi = features(reference.get_image_features(pixel_values=px))
        ref_zt = features(reference.get_text_features(input_ids=tids))
        ref_logits = reference(input_ids=tids, pixel_values=px).logits_per_image
    errors = {"image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    print(f"\nhf {name} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e <= TOLERANCE for e in errors.values()), errors
    bias = getattr(reference, "logit_bias", None)
    scale = float(reference.logit_scale.detach().exp()) + (0.0 if bias is None else abs(float(bias.detach())))
    assert_close_to_scale(logits, ref_logits.numpy(), rtol_of_scale=TOLERANCE, scale=scale, what=f"hf {name} logits")


def test_config_mapping(saved):
    name, reference, directory = saved.name, saved.reference, saved.directory
    converted = saved.convert()
    cfg, hf_cfg = converted.config, reference.config
    assert (cfg.vision.width, cfg.vision.depth, cfg.vision.heads, cfg.vision.mlp_dim) == (64, 2, 4, 128)
    assert (cfg.text.width, cfg.text.depth, cfg.text.heads, cfg.text.mlp_dim) == (48, 3, 3, 96)
    assert (cfg.text.vocab_size, cfg.text.context_length) == (VOCAB, CONTEXT)
    assert converted.provenance == {
        "source": "hf",
        "model_type": hf_cfg.model_type,
        "weights": str(directory / "model.safetensors"),
    }
    if name.startswith("clip"):
        act = hf_cfg.text_config.hidden_act
        assert cfg.vision.act == cfg.text.act == act and cfg.embed_dim == 32 and cfg.loss == "softmax"
        assert cfg.text.causal and cfg.vision.class_token and cfg.vision.pre_norm and cfg.logit_bias_init is None
        eos = hf_cfg.text_config.eos_token_id
        assert (cfg.text.pool, cfg.text.eos_id) == (("argmax", None) if eos == 2 else ("eos", eos))
        assert converted.preprocess.resize_mode == "shortest"
    else:
        assert cfg.vision.act == cfg.text.act == "gelu_tanh" and cfg.vision.ln_eps == cfg.text.ln_eps == 1e-6
        assert cfg.vision.pool == "map" and not cfg.vision.class_token and cfg.text.pool == "last"
        assert not cfg.text.causal and cfg.text.proj_bias and cfg.logit_bias_init == -10.0
        assert converted.preprocess.resize_mode == "squash" and converted.preprocess.mean == (0.5, 0.5, 0.5)


def test_legacy_sub_config_dicts(saved, tmp_path):
    """transformers < 4.2x wrote text_config_dict / vision_config_dict, which override text_config."""
    legacy = tmp_path / "legacy"
    shutil.copytree(saved.directory, legacy)
    config = json.loads((legacy / "config.json").read_text())
    config["text_config_dict"], config["text_config"] = config["text_config"], None
    config["vision_config_dict"] = {"layer_norm_eps": 1e-3}
    (legacy / "config.json").write_text(json.dumps(config))
    expected = saved.convert().config
    assert saved.convert(legacy).config == expected.replace(vision=dataclasses.replace(expected.vision, ln_eps=1e-3))


def edited_copy(directory, tmp_path, **changes):
    out = tmp_path / "edited"
    shutil.copytree(directory, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in changes.items():
        section, field = key.split("__")
        config[section][field] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vision_config__num_hidden_layers": 3}, "missing key"),
        ({"text_config__num_hidden_layers": 2}, "unused source keys"),
        ({"text_config__intermediate_size": 64}, "has shape"),
    ],
)
def test_config_of_another_architecture_is_refused(saved, tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        saved.convert(edited_copy(saved.directory, tmp_path, **change))


def test_bad_directories_are_refused(saved, tmp_path):
    directory = saved.directory
    with pytest.raises(InputError, match="no config.json"):
        hf.convert(tmp_path, None)
    with pytest.raises(InputError, match="not a directory"):
        hf.convert(directory / "model.safetensors", None)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="model_type is 'bert'"):
        hf.convert(bert, None)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(directory / "config.json", no_weights)
    with pytest.raises(InputError, match="holds no weights"):
        hf.convert(no_weights, None)
    with pytest.raises(InputError, match="is not a tiny-clip"):
        saved.convert(model_name="tiny-clip")


def test_sharded_and_bin_weights(saved, tmp_path):
    name, reference, directory = saved.name, saved.reference, saved.directory
    expected = flatten_dict(saved.convert().params)
    sharded = tmp_path / "sharded"
    reference.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    # A pytorch_model.bin as older transformers wrote it: with the position_ids buffers.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(directory / "config.json", legacy)
    state = dict(reference.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(CONTEXT)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange((IMAGE // PATCH) ** 2 + name.startswith("clip"))[None]
    torch.save(state, legacy / "pytorch_model.bin")
    for other in (sharded, legacy):
        got = flatten_dict(saved.convert(other).params)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value, err_msg=str(key))
    state["text_model.extra.weight"] = torch.zeros(2)
    torch.save(state, legacy / "pytorch_model.bin")
    with pytest.raises(InputError, match="text_model.extra.weight"):
        saved.convert(legacy)


# ---------------------------------------------------------------- model names, tokenizers, preprocessing


def tiny_siglip_dir(tmp_path):
    """A SigLIP of exactly the registry's tiny-siglip shape."""
    text = tower(64, 256, 2, 4, vocab_size=32000, max_position_embeddings=16)
    vision = tower(64, 256, 2, 4, image_size=32, patch_size=8)
    directory = tmp_path / "tiny-siglip"
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    transformers.SiglipModel(config).save_pretrained(directory)
    return directory


def test_model_name_must_agree(tmp_path, spm_model_file):
    directory = tiny_siglip_dir(tmp_path)
    transformers.SiglipTokenizer(str(spm_model_file)).save_pretrained(directory)
    converted = hf.convert(directory, "tiny-siglip")
    assert converted.config.vision.act == "gelu_tanh"  # HF's numerics, whatever the registry entry says
    with pytest.raises(InputError, match="is not a ViT-B-16-SigLIP"):
        hf.convert(directory, "ViT-B-16-SigLIP")
    with pytest.raises(InputError, match="unknown model"):
        hf.convert(directory, "no-such-model")


def test_siglip_sentencepiece_tokenizer_end_to_end(tmp_path, spm_model_file):
    """SiglipTokenizer's files in the directory -> pad = eos = '</s>', canonicalised text; the CLI
    output loads and reproduces HF's tokenizer ids and text embeddings."""
    import jaxvlm
    from jaxvlm.cli import main

    reference = perturbed(transformers.SiglipModel, siglip_config())
    directory = tmp_path / "siglip"
    reference.save_pretrained(directory)
    tokenizer = transformers.SiglipTokenizer(str(spm_model_file))
    tokenizer.save_pretrained(directory)
    converted = hf.convert(directory, None)
    assert converted.tokenizer.kind == "sentencepiece" and converted.tokenizer.clean == "canonicalize"
    assert (
        (converted.tokenizer.pad_id, converted.tokenizer.eos_id)
        == (1, 1)
        == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    )
    assert converted.tokenizer.context_length == CONTEXT and converted.tokenizer_source == directory / "spiece.model"
    assert main(["convert", "--from", "hf", str(directory), str(tmp_path / "out")]) == 0
    model = jaxvlm.load(tmp_path / "out")
    texts = ["a photo of the cat.", "Ka-to RIMO sushi, dog!", "red sky " * 10]
    ids = model.tokenize(texts)
    ref_ids = tokenizer(texts, padding="max_length", max_length=CONTEXT, truncation=True).input_ids
    np.testing.assert_array_equal(ids, np.asarray(ref_ids))
    with torch.no_grad():
        ref = features(reference.get_text_features(input_ids=torch.from_numpy(ids).long()))
    error = max_abs(model.encode_text(ids), ref)
    print(f"\nhf siglip through the CLI: text max abs error {error:.2e}")
    assert error <= TOLERANCE


def test_tokenizer_choice(saved, tmp_path):
    name, directory = saved.name, saved.directory
    with pytest.raises(InputError, match="--tokenizer"):
        hf.convert(directory, None)  # the directory carries none, and vocab 1000 is not OpenAI's BPE
    if not name.startswith("clip"):
        return
    converted = hf.convert(directory, None, CLIP_BPE_FILE)
    assert converted.tokenizer.kind == "clip_bpe" and converted.tokenizer.context_length == CONTEXT

    from tokenizers import Tokenizer, models

    words = ["<|startoftext|>", "<|endoftext|>", "<pad>", "a", "cat"]
    with_json = tmp_path / "with_json"
    shutil.copytree(directory, with_json)
    Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>")).save(
        str(with_json / "tokenizer.json")
    )
    converted = hf.convert(with_json, None)
    assert (converted.tokenizer.kind, converted.tokenizer.file, converted.tokenizer.clean) == (
        "hf_json",
        "tokenizer.json",
        "none",
    )
    assert converted.tokenizer.pad_id == 1  # CLIPTokenizer's default pad token, <|endoftext|>
    (with_json / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<pad>"}}))
    assert hf.convert(with_json, None).tokenizer.pad_id == 2


def test_clip_bpe_fallback_for_openai_vocab(tmp_path):
    text = tower(64, 256, 2, 1, vocab_size=49408, max_position_embeddings=77, hidden_act="gelu")
    vision = tower(64, 256, 2, 1, image_size=32, patch_size=8, hidden_act="gelu")
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    directory = tmp_path / "tiny-clip"
    transformers.CLIPModel(config).save_pretrained(directory)
    converted = hf.convert(directory, "tiny-clip")
    assert converted.tokenizer.kind == "clip_bpe" and converted.tokenizer_source == CLIP_BPE_FILE
    assert converted.tokenizer.context_length == 77 and converted.config.text.pool == "eos"
    assert converted.config.text.eos_id == 49407


def test_preprocessor_config(saved, tmp_path):
    name, directory = saved.name, saved.directory
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    if name.startswith("clip"):
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": IMAGE}, crop_size=IMAGE, image_mean=mean, image_std=std, resample=2
        )
        mode = "shortest"
    else:
        processor = transformers.SiglipImageProcessor(
            size={"height": IMAGE, "width": IMAGE}, image_mean=mean, image_std=std
        )
        mode = "squash"
    processor.save_pretrained(copy)
    pre = saved.convert(copy).preprocess
    assert (pre.image_size, pre.resize_mode, pre.mean, pre.std) == (IMAGE, mode, mean, std)
    assert pre.interpolation == ("bilinear" if name.startswith("clip") else "bicubic")
    bad = json.loads((copy / "preprocessor_config.json").read_text())
    bad["size"] = {"shortest_edge": IMAGE + 4} if name.startswith("clip") else {"height": IMAGE, "width": IMAGE + 4}
    (copy / "preprocessor_config.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="preprocessor_config.json"):
        saved.convert(copy)
