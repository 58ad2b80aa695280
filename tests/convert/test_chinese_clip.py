"""HF Chinese-CLIP (transformers' ChineseCLIPModel: a BERT text tower and CLIP's ViT). A tiny perturbed model saved
with save_pretrained, its tokenizer as OFA-Sys's repos hold it (vocab.txt and tokenizer_config.json, no
tokenizer.json), converts with no --model and matches transformers: token ids and embeddings."""

import json
import shutil

import numpy as np
import pytest
import torch

from jaxvlm.cli import main
from jaxvlm.convert import hf
from jaxvlm.errors import InputError
from tests.convert.hf_models import perturbed
from tests.convert.open_clip_models import load_on_one_device, max_abs
from tests.wordpiece import tiny_bert_tokenizer

transformers = pytest.importorskip("transformers")

CAPTIONS = ["一张猫的照片", "A photo of a CAT.", "ka to ri mo 猫 su ne", "", "the red cat on the blue sky, " * 12]


def tiny_config():
    """ChineseCLIPConfig at tiny sizes, the towers of different widths so that swapped tensors show."""
    text = dict(
        vocab_size=600,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    return transformers.ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("chinese-clip")
    directory = root / "repo"
    perturbed(transformers.ChineseCLIPModel, tiny_config()).save_pretrained(directory)
    bert = tiny_bert_tokenizer(root / "bert")
    vocab = json.loads((bert / "tokenizer.json").read_text())["model"]["vocab"]
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in sorted(vocab, key=vocab.get)))
    shutil.copy(bert / "tokenizer_config.json", directory / "tokenizer_config.json")
    processor = transformers.ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def converted(repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("chinese-clip-converted") / "model"
    assert main(["convert", "--from", "hf", str(repo), str(out)]) == 0
    return out


def test_tiny_chinese_clip_matches_transformers(repo, converted):
    model = load_on_one_device(converted)
    reference = transformers.ChineseCLIPModel.from_pretrained(repo).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(repo)
    ids = model.tokenize(CAPTIONS)
    ref_ids = tokenizer(CAPTIONS, padding="max_length", max_length=ids.shape[1], truncation=True).input_ids
    np.testing.assert_array_equal(ids, ref_ids)
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    with torch.no_grad():
        text = torch.from_numpy(ids).long()
        ref_zt = reference.get_text_features(input_ids=text, attention_mask=(text != 0).long()).pooler_output
        ref_zi = reference.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).pooler_output
    ref_zt = torch.nn.functional.normalize(ref_zt, dim=-1)
    ref_zi = torch.nn.functional.normalize(ref_zi, dim=-1)
    errors = {"image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    print(f"\ntiny ChineseCLIPModel vs transformers max abs error: {errors}; ids {ids[0][:10]}")
    assert errors["image"] <= 1e-5 and errors["text"] <= 1e-5, errors
    t = model.config.text
    assert (t.kind, t.post_norm, t.pool, t.proj, t.position_ids, t.context_length) == (
        "hf_encoder",
        True,
        "cls",
        "linear",
        "arange",
        52,
    )
    assert model.preprocess_config.resize_mode == "squash"


def test_relative_positions_are_refused():
    config = tiny_config().to_dict()
    config["text_config"]["position_embedding_type"] = "relative_key"
    with pytest.raises(InputError, match="position_embedding_type is 'relative_key'; jaxvlm builds 'absolute'"):
        hf.model_config(config, "x")


# OFA-Sys's config.json sizes: (projection_dim, vision (width, layers, heads, patch, image), text (width, layers))
PUBLISHED = {
    "chinese-clip-ViT-B-16": (512, (768, 12, 12, 16, 224), (768, 12)),
    "chinese-clip-ViT-L-14": (768, (1024, 24, 16, 14, 224), (768, 12)),
    "chinese-clip-ViT-L-14-336": (768, (1024, 24, 16, 14, 336), (768, 12)),
    "chinese-clip-ViT-H-14": (1024, (1280, 32, 16, 14, 224), (1024, 24)),
}


def published_config(name):
    projection, (width, layers, heads, patch, image), (text_width, text_layers) = PUBLISHED[name]
    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        patch_size=patch,
        image_size=image,
    )
    text = dict(
        vocab_size=21128,
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=text_width // 64,
    )
    return transformers.ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_registered_architectures_are_the_hub_configs(name):
    """The registered Chinese-CLIP architectures are what the converter reads from OFA-Sys's configs, and the
    hub pairs load."""
    from jaxvlm.models.registry import ARCHITECTURES
    from jaxvlm.pretrained import get_pretrained, list_pretrained

    _, cfg = hf.model_config(published_config(name).to_dict(), name)
    hf._check_model_name(name, cfg, name)  # the same but for numerics each source may set (logit scale init)
    assert cfg.replace(logit_scale_init=0.0) == ARCHITECTURES[name].model.replace(logit_scale_init=0.0)
    assert [get_pretrained(a, t).loads for a, t in list_pretrained() if a == name] == [True]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_keys_and_count_are_transformers(name):
    """ChineseCLIPModel at the published sizes on the meta device: its keys convert to exactly jaxvlm's tree."""
    from unittest import mock

    import jax

    from jaxvlm.convert.common import SourceKeys, check_params
    from jaxvlm.models.registry import ARCHITECTURES

    with torch.device("meta"):
        reference = transformers.ChineseCLIPModel(published_config(name))
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in reference.state_dict().items()}
    cfg = ARCHITECTURES[name].model

    def stack(depth, one_layer, prefix):
        first = {k: np.shape(x) for k, x in one_layer(0).items()}
        for i in range(1, depth):
            assert {k: np.shape(x) for k, x in one_layer(i).items()} == first
        return {f"{prefix}/{k}": np.broadcast_to(np.float32(0), (depth, *s)) for k, s in first.items()}

    src = SourceKeys(state, name, ignore=hf.NON_PARAMETERS)
    with mock.patch.object(hf, "stack_layers", stack), mock.patch("jaxvlm.convert.open_clip.stack_layers", stack):
        params = check_params(cfg, hf.PARAM_READERS["chinese_clip"](src, cfg), name)
    src.check_all_used()
    count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    assert count == sum(p.numel() for p in reference.parameters())
    print(f"\n{name}: {count:_} parameters")
