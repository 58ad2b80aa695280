"""big_vision -> jaxvlm parity.

There is no big_vision package here, so HF's SiglipModel (the reference port of big_vision's
SigLIP numerics: tanh GELU, eps 1e-6, bidirectional text pooled at the last token, MAP head)
stands in for it: a small random SiglipModel, every parameter perturbed, is written out as a
big_vision .npz by the big_vision <-> HF key correspondence (per-layer and stacked blocks, with
and without the `params/` prefix), converted, and compared in float32 against HF run in float64.
SigLIP 2's files differ only in vocabulary and text pre-processing: a Gemma-style SentencePiece model
trained here, and big_vision's pre-processing written op by op from its sources (`big_vision_gemma_tokens`;
big_vision needs TensorFlow, which is not installed) as the reference for the token ids.
"""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxvlm
from jaxvlm import pretrained
from jaxvlm.cli import main
from jaxvlm.convert import big_vision
from jaxvlm.errors import InputError
from jaxvlm.models import registry
from jaxvlm.models.two_tower import TwoTower, contrastive_logits
from tests.convert.big_vision_models import (
    GEMMA_SPECIAL,
    SIGLIP2_SMALL,
    SMALL,
    TINY_SIGLIP,
    big_vision_gemma_tokens,
    gemma_spm,
    hf_siglip,
    hf_siglip2_naflex,
    siglip2_shapes,
    to_big_vision,
    write_npz,
)
from tests.hub_server import HubServer
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


# ---------------------------------------------------------------- SigLIP 2: Gemma's vocabulary and pre-processing

# what big_vision's ASCII-only lower case, the plain SentencePiece encode (punctuation, digits, special-token
# literals kept), the sticky <eos> and the <pad> padding each change; the last is longer than the context
TEXTS = [
    "A photo of a CAT.",
    'an apple with a note saying "ipod"',
    "ZÜRICH Éc ωa жи",
    "",
    "in 1984 <mask> </s> <eos> <unk>",
    "  two  spaces\tand a tab ",
    "ka to ri " * 8,
]
SIGLIP2_FILE = re.compile(r"gs://big_vision/siglip2/siglip2_(?P<variant>[a-z0-9-]+?)(?P<patch>\d+)_(?P<res>\d+)\.npz")
BIG_VISION_VARIANT = {"b": "B", "l": "L", "so400m": "So400m", "g-opt": "g-opt"}  # in the file names
# SIGLIP2_SMALL as a registry architecture: open_clip's SigLIP 2 numerics, its Gemma tokenizer's padding
TINY_SIGLIP2 = registry.siglip2(
    vision={"image_size": 32, "patch_size": 8, "width": 64, "depth": 2, "heads": 4, "mlp_dim": 128},
    text={"vocab_size": 640, "context_length": 16, "width": 48, "depth": 3, "heads": 2, "mlp_dim": 96},
)


@pytest.fixture(scope="module")
def gemma_spm_file(tmp_path_factory):
    return gemma_spm(tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def small_siglip2():
    return hf_siglip(SIGLIP2_SMALL, seed=4, special=GEMMA_SPECIAL)


def siglip2_rows():
    """The big_vision SigLIP 2 fixed-resolution rows of the pretrained table."""
    rows = [pretrained.get_pretrained(*pair) for pair in jaxvlm.list_pretrained()]
    return [e for e in rows if e.weights_url and SIGLIP2_FILE.fullmatch(e.weights_url)]


def assert_big_vision_tokens(ids, spm_file, texts, length):
    want = big_vision_gemma_tokens(spm_file, texts, length)
    np.testing.assert_array_equal(ids, want)
    print(f"\ntoken ids identical to big_vision's SigLIP 2 pre-processing for {len(texts)} texts")


def test_siglip2_via_cli_matches_hf_and_big_vision_tokens(small_siglip2, tmp_path, gemma_spm_file):
    """A SigLIP 2-style checkpoint (scan layout, `params/` prefix) with a Gemma-style vocabulary, converted
    without --model: big_vision's text pre-processing id for id, embeddings as HF's SiglipModel's."""
    npz = write_npz(tmp_path / "ckpt.npz", to_big_vision(small_siglip2, stacked=True, prefix="params/"))
    converted = big_vision.convert(npz, None, gemma_spm_file)
    t, tok = converted.config.text, converted.tokenizer
    assert (t.vocab_size, t.context_length, t.width, t.proj, converted.config.embed_dim) == (640, 16, 48, True, 64)
    assert (tok.kind, tok.clean, tok.encode, tok.pad_id, tok.eos_id) == ("sentencepiece", "ascii_lower", "plain", 0, 1)

    out = tmp_path / "model"
    assert main(["convert", "--from", "big_vision", str(npz), str(out), "--tokenizer", str(gemma_spm_file)]) == 0
    loaded = jaxvlm.load(out)
    ids = loaded.tokenize(TEXTS)
    assert_big_vision_tokens(ids, gemma_spm_file, TEXTS, 16)
    pixels, _ = inputs(small_siglip2)
    zi, zt = loaded.encode_image(pixels), loaded.encode_text(ids)
    want = reference(small_siglip2, pixels, ids)
    assert_parity(
        "SigLIP 2 (Gemma vocabulary) via CLI + jaxvlm.load", small_siglip2, (zi, zt, loaded.logits(zi, zt)), want
    )


def test_the_siglip1_rules_would_tokenize_otherwise(tmp_path, gemma_spm_file):
    """The SigLIP 2 rules matter on TEXTS: SigLIP's (canonicalised, HF's SiglipTokenizer) give other ids."""
    from jaxvlm.tokenizers import TokenizerConfig, build_tokenizer

    cfg = TokenizerConfig("sentencepiece", gemma_spm_file.name, 16, clean="ascii_lower", pad_id=0, eos_id=1)
    ids = {
        encode: build_tokenizer(cfg.replace(encode=encode), gemma_spm_file.parent)(TEXTS)
        for encode in ("plain", "hf_siglip")
    }
    assert_big_vision_tokens(ids["plain"], gemma_spm_file, TEXTS, 16)
    differs = [text for text, a, b in zip(TEXTS, ids["plain"], ids["hf_siglip"]) if not np.array_equal(a, b)]
    assert len(differs) >= 4, differs
    lower = build_tokenizer(cfg.replace(encode="plain", clean="lower"), gemma_spm_file.parent)(TEXTS)
    assert not np.array_equal(lower[2], ids["plain"][2])  # str.lower lowers Ü and É too; TensorFlow's does not


def test_a_siglip2_pair_loads_through_the_gcs_stand_in(small_siglip2, tmp_path, gemma_spm_file, monkeypatch):
    """A SigLIP 2 pair (a tiny registry architecture standing in for the published ones) loads by name:
    weights and Gemma tokenizer fetched from $JAXVLM_GCS_ENDPOINT, converted once, reloaded offline."""
    npz = write_npz(tmp_path / "tiny.npz", to_big_vision(small_siglip2, stacked=True))
    arch, url = "tiny-siglip2", "gs://big_vision/siglip2/tiny.npz"
    monkeypatch.setitem(registry.ARCHITECTURES, arch, TINY_SIGLIP2)
    row = pretrained.Pretrained(
        arch, url, None, None, False, {}, weights_url=url, tokenizer_url="gs://big_vision/gemma_tokenizer.model"
    )
    monkeypatch.setitem(pretrained._table(), (arch, url), row)
    assert row.loads
    monkeypatch.setenv("JAXVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubServer(tmp_path / "repos") as server:
        server.static |= {"big_vision/siglip2/tiny.npz": npz, "big_vision/gemma_tokenizer.model": gemma_spm_file}
        monkeypatch.setenv("JAXVLM_GCS_ENDPOINT", server.endpoint)
        model = jaxvlm.load(arch, pretrained=url)
    ids = model.tokenize(TEXTS)
    assert_big_vision_tokens(ids, gemma_spm_file, TEXTS, 16)
    pixels, _ = inputs(small_siglip2)
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    want = reference(small_siglip2, pixels, ids)
    assert_parity("SigLIP 2 pair via the GCS stand-in", small_siglip2, (zi, zt, model.logits(zi, zt)), want)
    assert model.provenance["model"] == arch
    assert not [p for p in (tmp_path / "cache").rglob("*.npz*") if p.is_file()]  # downloads go once converted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JAXVLM_GCS_ENDPOINT", "http://127.0.0.1:9")
    assert jaxvlm.load(arch, pretrained=url).directory == model.directory


def test_the_siglip2_rows_load():
    rows = siglip2_rows()
    assert len(rows) == 15 and all(e.loads for e in rows), [e.arch for e in rows if not e.loads]
    assert {e.tokenizer_url for e in rows} == {"gs://big_vision/gemma_tokenizer.model"}


@pytest.mark.parametrize(
    "name,tokenizer,message",
    [
        ("ViT-B-16-SigLIP2", "t5", "ViT-B-16-SigLIP2 was trained on texts padded with id 0, but .* SigLIP's T5"),
        ("tiny-siglip", "gemma", "tiny-siglip was trained on texts padded with id 1, but .* SigLIP 2's Gemma"),
    ],
)
def test_a_tokenizer_of_the_other_generation_is_refused(
    tmp_path, spm_model_file, gemma_spm_file, name, tokenizer, message
):
    npz = write_npz(tmp_path / "x.npz", {"t": np.zeros(1, np.float32)})
    with pytest.raises(InputError, match=message):
        big_vision.convert(npz, name, spm_model_file if tokenizer == "t5" else gemma_spm_file)


def shapes_only(shapes):
    """Zero-strided float32 arrays of these shapes: a full-size checkpoint that takes no memory to hold."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


@pytest.mark.slow
@pytest.mark.parametrize("entry", siglip2_rows(), ids=lambda e: e.architecture)
def test_every_siglip2_row_converts_at_full_size(monkeypatch, gemma_spm_file, entry):
    """Key and shape accounting of each published SigLIP 2 checkpoint, its layout written from big_vision's
    ViT variants and the demo colab's model config (out_dim [None, image width]; g-opt's text tower So400m)."""
    m = SIGLIP2_FILE.fullmatch(entry.weights_url)
    variant = BIG_VISION_VARIANT[m["variant"]]
    shapes = siglip2_shapes(variant, int(m["patch"]), int(m["res"]), "So400m" if variant == "g-opt" else variant)
    monkeypatch.setattr(big_vision, "read_weights", lambda path: shapes_only(shapes))
    converted = big_vision.convert(Path(entry.weights_url), entry.architecture, gemma_spm_file)
    assert converted.config == big_vision.named_config(entry.architecture)
    assert (converted.tokenizer.context_length, converted.tokenizer.pad_id, converted.tokenizer.clean) == (
        64,
        0,
        "ascii_lower",
    )


def test_a_named_architecture_keeps_its_image_size_for_the_same_patch_grid():
    """A 384-px So400m/14 (big_vision's so400m_384 files) has a 27 x 27 grid, which reads as 378 px."""
    weights = shapes_only(siglip2_shapes("So400m", 14, 384, "So400m", vocab=32000))
    assert big_vision.infer_config(weights, "x").vision.image_size == 378
    cfg = big_vision.named_config("ViT-SO400M-14-SigLIP-384")
    assert big_vision._check_named(cfg, weights, "x").vision.image_size == 384
    with pytest.raises(InputError, match=r"vision.image_size 378 \(model: 224\)"):
        big_vision._check_named(big_vision.named_config("ViT-SO400M-14-SigLIP"), weights, "x")


def test_encode_is_a_sentencepiece_choice():
    from jaxvlm.tokenizers import TokenizerConfig

    with pytest.raises(InputError, match="tokenizer encode 'plain' is for kind 'sentencepiece' only"):
        TokenizerConfig("hf_json", "tokenizer.json", 16, encode="plain")
    with pytest.raises(InputError, match="tokenizer encode is 'raw'; expected one of hf_siglip, plain"):
        TokenizerConfig("sentencepiece", "tokenizer.model", 16, encode="raw")


def test_siglip2_naflex_matches_hf_siglip2(tmp_path, gemma_spm_file):
    """A NaFlex checkpoint in big_vision's layout (patch Dense, [g, g, w] positions; scan layout) converted
    without --model: images of several patch grids embed as transformers' Siglip2Model embeds them."""
    from jaxvlm.preprocess import NaFlexImages

    model = hf_siglip2_naflex(SIGLIP2_SMALL, seed=5)
    npz = write_npz(tmp_path / "naflex.npz", to_big_vision(model, stacked=True, prefix="params/"))
    converted = big_vision.convert(npz, None, gemma_spm_file)
    v, pre = converted.config.vision, converted.preprocess
    assert (v.kind, v.patch_size, v.position_grid, pre.resize_mode, pre.patch_size) == ("naflex_vit", 8, 4, "naflex", 8)

    rng = np.random.default_rng(0)
    grids, length = [(2, 7), (4, 4), (3, 5), (1, 1)], 20
    patches = rng.uniform(-1, 1, (len(grids), length, 8 * 8 * 3)).astype(np.float32)
    mask = np.arange(length)[None] < np.array([r * c for r, c in grids])[:, None]
    images = NaFlexImages(patches * mask[..., None], mask, np.array(grids, np.int32))
    _, ids = inputs(hf_siglip(SIGLIP2_SMALL))
    with torch.no_grad():
        zi = model.get_image_features(
            pixel_values=torch.from_numpy(images.patches).double(),
            pixel_attention_mask=torch.from_numpy(mask).long(),
            spatial_shapes=torch.from_numpy(images.grid).long(),
        ).pooler_output
        zt = model.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output
        zi, zt = zi / zi.norm(dim=-1, keepdim=True), zt / zt.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * zi @ zt.T + model.logit_bias
    assert_parity("SigLIP 2 NaFlex", model, ours(converted, images, ids), (zi.numpy(), zt.numpy(), logits.numpy()))


def test_the_naflex_rows_load():
    rows = [pretrained.get_pretrained(*pair) for pair in jaxvlm.list_pretrained()]
    naflex = [e for e in rows if e.weights_url and e.weights_url.endswith("_naflex.npz")]
    assert len(naflex) == 2 and all(e.loads for e in naflex)
