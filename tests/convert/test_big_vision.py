"""big_vision -> jaxvlm parity.

There is no big_vision package here, so HF's SiglipModel (the reference port of big_vision's
SigLIP numerics: tanh GELU, eps 1e-6, bidirectional text pooled at the last token, MAP head)
stands in for it: a small random SiglipModel, every parameter perturbed, is written out as a
big_vision .npz by the big_vision <-> HF key correspondence (per-layer and stacked blocks, with
and without the `params/` prefix), converted, and compared in float32 against HF run in float64.
"""

import json

import jax
import numpy as np
import pytest

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.convert import big_vision
from jaxvlm.errors import InputError
from jaxvlm.models.two_tower import TwoTower, contrastive_logits
from tests.convert.big_vision_models import SMALL, TINY_SIGLIP, hf_siglip, to_big_vision, write_npz
from tests.tolerances import assert_close_to_scale

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# max abs error of the unit-norm embeddings; the logits (exp(t) * cosine + b) carry the same relative accuracy,
# so theirs is TOLERANCE times exp(t) + |b|, the largest a logit can be (an absolute 1e-5 would fail a trained
# CLIP's exp(t) = 100 on rounding alone)
TOLERANCE = 1e-5


def inputs(model, n_images=3, n_texts=4, seed=0):
    rng = np.random.default_rng(seed)
    vc, tc = model.config.vision_config, model.config.text_config
    pixels = rng.uniform(-1, 1, (n_images, vc.image_size, vc.image_size, 3)).astype(np.float32)
    ids = rng.integers(2, tc.vocab_size, (n_texts, tc.max_position_embeddings)).astype(np.int32)
    ids[0, 3:] = 1  # a short text: sticky EOS, then padding with 1
    ids[1, -1] = 1  # a truncated one: the EOS kept at the end
    return pixels, ids


def reference(model, pixels, ids, img_head=None):
    """HF's normalised image / text features and logits_per_image, in float64."""
    with torch.no_grad():
        px = torch.from_numpy(pixels).double().permute(0, 3, 1, 2)
        tok = torch.from_numpy(ids).long()
        zi = model.get_image_features(pixel_values=px).pooler_output
        if img_head is not None:  # HF's SiglipModel has no image projection; apply big_vision's img/head
            zi = zi @ torch.from_numpy(img_head[0]).double() + torch.from_numpy(img_head[1]).double()
        zt = model.get_text_features(input_ids=tok).pooler_output
        zi, zt = zi / zi.norm(dim=-1, keepdim=True), zt / zt.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * zi @ zt.T + model.logit_bias
        if img_head is None:  # the model's own forward agrees with the sum above
            full = model(input_ids=tok, pixel_values=px).logits_per_image
            assert torch.allclose(full, logits, atol=1e-10)
    return zi.numpy(), zt.numpy(), logits.numpy()


def ours(converted, pixels, ids):
    module, variables = TwoTower(converted.config), {"params": converted.params}
    zi = jax.jit(lambda v, x: module.apply(v, x, method=TwoTower.encode_image))(variables, pixels)
    zt = jax.jit(lambda v, x: module.apply(v, x, method=TwoTower.encode_text))(variables, ids)
    zi2, zt2, _ = jax.jit(module.apply)(variables, pixels, ids)
    np.testing.assert_allclose(zi2, zi, atol=1e-6)
    np.testing.assert_allclose(zt2, zt, atol=1e-6)
    logits = contrastive_logits(zi, zt, converted.params["t"], converted.params.get("b"))
    return np.asarray(zi), np.asarray(zt), np.asarray(logits)


def assert_parity(label, model, got, want):
    """(image embeddings, text embeddings, logits) against the reference's: the unit-norm embeddings
    within TOLERANCE, the logits within TOLERANCE times exp(t) + |b|."""
    errors = {n: float(np.max(np.abs(np.asarray(g, np.float64) - w))) for n, g, w in zip(("image", "text"), got, want)}
    print(f"\nbig_vision {label} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e <= TOLERANCE for e in errors.values()), errors
    scale = float(model.logit_scale.detach().exp()) + abs(float(model.logit_bias.detach()))
    assert_close_to_scale(got[2], want[2], rtol_of_scale=TOLERANCE, scale=scale, what=f"big_vision {label} logits")


def check_parity(label, converted, model, img_head=None):
    pixels, ids = inputs(model)
    assert_parity(label, model, ours(converted, pixels, ids), reference(model, pixels, ids, img_head))


# ---------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def small():
    return hf_siglip(SMALL)


@pytest.mark.parametrize(
    "layout,prefix,with_img_head",
    [("per_layer", "", False), ("stacked", "params/", False), ("per_layer", "params/", True), ("stacked", "", True)],
)
def test_inferred_architecture_matches_hf(small, tmp_path, spm_model_file, layout, prefix, with_img_head):
    img_head = None
    if with_img_head:  # an image tower with an out_dim: img/head projects 64 -> 32, so must the text head
        model = hf_siglip({**SMALL, "text": {**SMALL["text"], "projection_size": 32}}, seed=1)
        rng = np.random.default_rng(1)
        img_head = (rng.normal(0, 0.1, (64, 32)), rng.normal(0, 0.1, (32,)))
    else:
        model = small
    npz = write_npz(
        tmp_path / "ckpt.npz", to_big_vision(model, stacked=layout == "stacked", prefix=prefix, img_head=img_head)
    )
    converted = big_vision.convert(npz, None, spm_model_file)

    cfg = converted.config
    v, t = cfg.vision, cfg.text
    assert (v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim) == (32, 8, 64, 2, 4, 128)
    assert (t.vocab_size, t.context_length, t.width, t.depth, t.heads, t.mlp_dim) == (1000, 12, 48, 3, 2, 96)
    assert (v.act, t.act, v.ln_eps, t.ln_eps) == ("gelu_tanh", "gelu_tanh", 1e-6, 1e-6)
    assert (v.pool, v.class_token, v.pre_norm, v.patch_bias) == ("map", False, False, True)
    assert (t.pool, t.causal, t.proj, t.proj_bias) == ("last", False, True, True)
    assert (v.proj, v.proj_bias, cfg.embed_dim) == ((True, True, 32) if with_img_head else (False, False, 64))
    assert cfg.loss == "sigmoid" and cfg.logit_bias_init is not None
    assert converted.provenance == {"source": "big_vision", "weights": str(npz), "layout": layout}
    check_parity(f"{layout} prefix={prefix!r} img_head={with_img_head}", converted, model, img_head)


@pytest.mark.latest
def test_named_tiny_siglip_matches_hf(tmp_path, spm_model_file):
    model = hf_siglip(TINY_SIGLIP, seed=2)
    npz = write_npz(tmp_path / "ckpt.npz", to_big_vision(model, stacked=True, prefix="params/"))
    named = big_vision.convert(npz, "tiny-siglip", spm_model_file)
    # the registry architecture with tanh GELU is exactly what the shapes say
    assert named.config == big_vision.convert(npz, None, spm_model_file).config
    assert named.config.vision.act == named.config.text.act == "gelu_tanh"
    assert named.provenance["model"] == "tiny-siglip"
    check_parity("tiny-siglip (named)", named, model)
    arrays = to_big_vision(model, stacked=True, prefix="params/")
    del arrays["params/b"]
    with pytest.raises(InputError, match="missing key 'b'"):
        big_vision.convert(write_npz(tmp_path / "no_b.npz", arrays), "tiny-siglip", spm_model_file)


def test_extra_text_posemb_is_summed(small, tmp_path, spm_model_file):
    """Early text towers carry a second posemb at txt/Encoder_0/pos_embedding; the two add up."""
    arrays = to_big_vision(small, stacked=False)
    pos = arrays["txt/pos_embedding"]
    arrays["txt/pos_embedding"], arrays["txt/Encoder_0/pos_embedding"] = 0.25 * pos, 0.75 * pos
    converted = big_vision.convert(write_npz(tmp_path / "ckpt.npz", arrays), None, spm_model_file)
    check_parity("split text posemb", converted, small)


def test_preprocess_and_tokenizer_configs(small, tmp_path, spm_model_file):
    converted = big_vision.convert(
        write_npz(tmp_path / "ckpt.npz", to_big_vision(small, stacked=False)), None, spm_model_file
    )
    pp, tok = converted.preprocess, converted.tokenizer
    assert (pp.image_size, pp.resize_mode, pp.interpolation, pp.mean, pp.std) == (
        32,
        "squash",
        "bilinear",
        (0.5,) * 3,
        (0.5,) * 3,
    )
    assert (tok.kind, tok.context_length, tok.pad_id, tok.eos_id) == ("sentencepiece", 12, 1, 1)
    assert converted.tokenizer_source == spm_model_file


def test_cli_end_to_end(small, tmp_path, spm_model_file):
    npz = write_npz(tmp_path / "ckpt.npz", to_big_vision(small, stacked=True, prefix="params/"))
    out = tmp_path / "model"
    assert main(["convert", "--from", "big_vision", str(npz), str(out), "--tokenizer", str(spm_model_file)]) == 0
    assert json.loads((out / "config.json").read_text())["provenance"]["layout"] == "stacked"
    loaded = jaxvlm.load(out)
    pixels, _ = inputs(small)
    ids = loaded.tokenize(["a photo of a cat", "ka to ri mo su ne " * 5])
    assert ids.shape == (2, 12) and ids[0, -1] == 1 and ids[1, -1] == 1  # sticky EOS, padded with 1
    zi, zt = loaded.encode_image(pixels), loaded.encode_text(ids)
    ref_zi, ref_zt, ref_logits = reference(small, pixels, ids)
    assert_parity("via CLI + jaxvlm.load", small, (zi, zt, loaded.logits(zi, zt)), (ref_zi, ref_zt, ref_logits))


# ---------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def small_arrays(small):
    return to_big_vision(small, stacked=False)


def _convert(tmp_path, arrays, tokenizer, model_name=None):
    return big_vision.convert(write_npz(tmp_path / "bad.npz", arrays), model_name, tokenizer)


def test_extra_key_is_refused(small_arrays, tmp_path, spm_model_file):
    arrays = {**small_arrays, "img/extra/kernel": np.zeros((2, 2), np.float32)}
    with pytest.raises(InputError, match="unused source keys.*img/extra/kernel"):
        _convert(tmp_path, arrays, spm_model_file)


@pytest.mark.parametrize(
    "missing",
    [
        "txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/bias",
        "img/Transformer/encoderblock_0/LayerNorm_0/scale",
        "img/MAPHead_0/LayerNorm_0/scale",
        "t",
    ],
)
def test_missing_key_is_refused(small_arrays, tmp_path, spm_model_file, missing):
    arrays = {k: v for k, v in small_arrays.items() if k != missing}
    with pytest.raises(InputError, match=f"missing key '{missing}'"):
        _convert(tmp_path, arrays, spm_model_file)


def test_without_bias_is_a_softmax_two_tower(small_arrays, tmp_path, spm_model_file):
    converted = _convert(tmp_path, {k: v for k, v in small_arrays.items() if k != "b"}, spm_model_file)
    assert converted.config.loss == "softmax" and converted.config.logit_bias_init is None
    assert "b" not in converted.params


def test_missing_stacked_key_is_refused(small, tmp_path, spm_model_file):
    arrays = to_big_vision(small, stacked=True, prefix="params/")
    del arrays["params/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/key/bias"]
    with pytest.raises(
        InputError, match="missing key 'img/Transformer/encoderblock/MultiHeadDotProductAttention_0/key/bias'"
    ):
        _convert(tmp_path, arrays, spm_model_file)


def test_pickled_npz_is_refused(tmp_path, spm_model_file):
    npz = tmp_path / "pickled.npz"
    np.savez(npz, **{"img/embedding/kernel": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(InputError, match="pickled"):
        big_vision.convert(npz, None, spm_model_file)


@pytest.mark.parametrize(
    "name,message",
    [
        ("tiny-siglip", r"not this architecture: vision.mlp_dim 128 \(model: 256\), text.vocab_size 1000"),
        ("ViT-B-16-SigLIP", r"not this architecture: embed_dim 64 \(model: 768\)"),
        ("ViT-B-32", "not a SigLIP architecture"),
    ],
)
def test_mismatching_model_name_is_refused(small_arrays, tmp_path, spm_model_file, name, message):
    with pytest.raises(InputError, match=message):
        _convert(tmp_path, small_arrays, spm_model_file, model_name=name)


def test_tokenizer_is_required(small_arrays, tmp_path, spm_model_file):
    with pytest.raises(InputError, match="--tokenizer"):
        _convert(tmp_path, small_arrays, None)
    not_spm = tmp_path / "vocab.txt"
    not_spm.write_text("hello\nworld\n")
    with pytest.raises(InputError, match="not a SentencePiece model"):
        _convert(tmp_path, small_arrays, not_spm)
    with pytest.raises(InputError, match="no such tokenizer"):
        _convert(tmp_path, small_arrays, tmp_path / "absent.model")


def test_siglip2_text_pre_processing_is_refused_by_name(tmp_path, spm_model_file):
    """big_vision's SigLIP 2 checkpoints tokenize with Gemma's tokenizer, which this converter does not write yet."""
    npz = write_npz(tmp_path / "x.npz", {"t": np.zeros(1, np.float32)})
    with pytest.raises(InputError, match="ViT-B-16-SigLIP2 runs a hf_json tokenizer; .* SigLIP 1 text pre-processing"):
        big_vision.convert(npz, "ViT-B-16-SigLIP2", spm_model_file)
