"""HF Siglip2 (NaFlex) -> jaxvlm: a perturbed tiny Siglip2Model saved as transformers saves it, with
its Pillow image processor and a Gemma-style tokenizer, converted without --model; images of five
aspect ratios preprocessed and embedded as transformers does."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.preprocess import NaFlexImages
from tests.convert.hf_models import features, max_abs, perturbed, tower
from tests.convert.open_clip_models import gemma_tokenizer, photos

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5
PATCH, POSITIONS, BUDGET, CONTEXT = 8, 16, 24, 16


def siglip2_config():
    text = tower(48, 96, 3, 3, vocab_size=400, max_position_embeddings=CONTEXT, projection_size=64, layer_norm_eps=1e-6)
    text.update(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = tower(64, 128, 2, 4, patch_size=PATCH, num_patches=POSITIONS, layer_norm_eps=1e-6)
    return transformers.Siglip2Config(text_config=text, vision_config=vision)


def aspect_ratios() -> list[Image.Image]:
    """Five shapes: square, wide, tall, a thin strip and one smaller than a patch budget's worth."""
    astronaut, cat, coffee = photos()
    return [
        astronaut.resize((96, 96)),
        cat.crop((0, 0, 450, 150)),
        coffee.crop((100, 0, 200, 300)),
        astronaut.crop((0, 200, 512, 240)),
        cat.resize((20, 13)),
    ]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    src = tmp_path_factory.mktemp("siglip2")
    reference = perturbed(transformers.Siglip2Model, siglip2_config())
    reference.save_pretrained(src)
    processor = Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=BUDGET)
    processor.save_pretrained(src)
    gemma_tokenizer(src / "tokenizer", CONTEXT)
    for f in (src / "tokenizer").iterdir():
        f.rename(src / f.name)
    (src / "tokenizer").rmdir()
    out = tmp_path_factory.mktemp("converted") / "model"
    assert main(["convert", "--from", "hf", str(src), str(out)]) == 0
    return reference, processor, src, jaxvlm.load(out, devices=jax.local_devices()[:1])


def test_config_is_naflex(converted):
    _, _, _, model = converted
    vision, pre = model.config.vision, model.preprocess_config
    assert (vision.kind, vision.position_grid, vision.max_num_patches, vision.patch_size) == (
        "naflex_vit",
        4,
        BUDGET,
        PATCH,
    )
    assert (pre.resize_mode, pre.max_num_patches, pre.patch_size, pre.interpolation) == (
        "naflex",
        BUDGET,
        PATCH,
        "bilinear",
    )


def test_preprocessing_equals_the_pillow_processor(converted):
    _, processor, _, model = converted
    images = aspect_ratios()
    expected = processor(images=images, return_tensors="np")
    got = model.preprocess(images)
    assert isinstance(got, NaFlexImages)
    np.testing.assert_array_equal(got.grid, expected["spatial_shapes"])
    np.testing.assert_array_equal(got.mask, expected["pixel_attention_mask"].astype(bool))
    err = max_abs(got.patches, expected["pixel_values"])
    print(f"patches vs Siglip2ImageProcessorPil: max abs {err:.1e}; grids {got.grid.tolist()}")
    assert err <= TOLERANCE
    assert len({tuple(g) for g in got.grid.tolist()}) == 5


def test_embeddings_equal_transformers(converted):
    reference, processor, _, model = converted
    images = aspect_ratios()
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = features(reference.get_image_features(**inputs)).numpy()
    got = model.encode_image(model.preprocess(images))
    err = max_abs(got, expected)
    print(f"image embeddings, 5 aspect ratios, vs Siglip2Model: max abs {err:.1e}")
    assert err <= TOLERANCE
    ids = np.random.default_rng(0).integers(0, 400, size=(3, CONTEXT))
    with torch.no_grad():
        expected_text = features(reference.get_text_features(input_ids=torch.from_numpy(ids))).numpy()
    err = max_abs(model.encode_text(ids), expected_text)
    print(f"text embeddings vs Siglip2Model: max abs {err:.1e}")
    assert err <= TOLERANCE


def test_a_patch_size_other_than_the_models_is_one_line(converted, tmp_path, capsys):
    _, _, src, _ = converted
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "preprocessor_config.json").read_text())
    (bad / "preprocessor_config.json").write_text(json.dumps({**cfg, "patch_size": 16}))
    assert main(["convert", "--from", "hf", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "patch_size 16 is not the model's 8" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_token_ids_are_the_repo_tokenizers(converted):
    _, _, src, model = converted
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    texts = ["a photo of a cat", "Ka to RI, mosu! " * 6, "", "the sky is blue and red"]
    expected = tokenizer(texts, padding="max_length", truncation=True, max_length=CONTEXT)["input_ids"]
    np.testing.assert_array_equal(model.tokenize(texts), np.array(expected))


@pytest.mark.parametrize("target", ["hf", "open_clip"])
def test_export_refuses_naflex_in_one_line(converted, target, tmp_path, capsys):
    _, _, _, model = converted
    assert main(["export", str(model.directory), str(tmp_path / "out"), "--to", target]) == 2
    err = capsys.readouterr().err.strip()
    print(err)
    assert "naflex" in err.lower() and "\n" not in err
    assert not (tmp_path / "out").exists()
