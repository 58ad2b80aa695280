"""jaxvlm -> HF transformers export: model directories (converted from transformers, or built by jaxvlm and
saved as after training) written with `jaxvlm export --to hf`, loaded back with AutoModel / AutoTokenizer /
AutoImageProcessor, and compared with what jaxvlm computes: embeddings, logits, token ids and pixels;
the export converted back gives the same parameters; what transformers cannot express is refused."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.convert import convert
from jaxvlm.convert import hf as convert_hf
from jaxvlm.errors import InputError
from jaxvlm.export import export, hf
from jaxvlm.models.registry import get_architecture
from jaxvlm.tokenizers import CLIP_BPE_FILE, TokenizerConfig, build_tokenizer
from tests.convert.hf_models import (
    CONTEXT,
    TOLERANCE,
    clip_config,
    clip_ids,
    features,
    max_abs,
    perturbed,
    siglip_config,
    siglip_ids,
)
from tests.eval.model_dirs import random_model_dir
from tests.export.round_trips import assert_reconverts_exactly
from tests.tolerances import assert_close_to_scale

transformers = pytest.importorskip("transformers")

CLIP_VOCAB = 49408  # a model directory's vocabulary must hold its tokenizer's: CLIP BPE's 49408 ids
# Punctuation, upper case, runs of whitespace, digits, accents, empty, and over-long (truncated at the context).
# Not here: what the exporter's docstring lists as tokenized differently by transformers (ftfy's fixes, HTML
# entities, '_' under "canonicalize", CLIP's special-token literals).
CAPTIONS = [
    "a photo of a cat",
    "An ASTRONAUT, in a White suit!",
    "",
    "  two   spaces\tand (brackets) - 42% off? it's <ok>",
    "café crème brûlée",
    "KaTo rimo: sushi & the dog's sky... red/blu",
    "a rocket on the launch pad " * 20,
]
# Sizes whose shortest-side resize to 32 leaves 0, 16, 17 and 25 pixels to crop: HF's floor and jaxvlm's
# round-half-even crop offsets agree unless that margin is 3 mod 4 (see jaxvlm.export.hf).
PHOTO_SIZES = [(32, 32), (60, 40), (45, 70), (90, 50)]


def photos(seed=0):
    """Smooth random images (bilinear upsampling of noise) with sharp noise on top."""
    rng = np.random.default_rng(seed)
    out = []
    for w, h in PHOTO_SIZES:
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
        noise = rng.integers(-40, 41, (h, w, 3))
        out.append(Image.fromarray(np.clip(np.asarray(coarse, int) + noise, 0, 255).astype(np.uint8)))
    return out


def hf_embeddings(reference, pixel_values, text_inputs):
    with torch.no_grad():
        zi = features(reference.get_image_features(pixel_values=pixel_values))
        zt = features(reference.get_text_features(**text_inputs))
        logits = reference(pixel_values=pixel_values, **text_inputs).logits_per_image
    return zi.numpy(), zt.numpy(), logits.numpy()


def logit_scale(model) -> float:
    """exp(t) + |b|: the largest a logit can be, the scale its rounding errors follow (tests/tolerances.py)."""
    b = model.params.get("b")
    return float(np.exp(model.params["t"])) + (0.0 if b is None else abs(float(b)))


def assert_same_outputs(directory, out, name, make_ids=None):
    """jaxvlm on ``directory`` vs transformers on its export ``out``, end to end from captions and PIL images,
    and on random ids (where HF pools: an eos anywhere, padding after it)."""
    model = jaxvlm.load(directory)
    reference = transformers.AutoModel.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    # the PIL processors: HF's default torchvision ones differ from PIL (and open_clip) by up to ~0.015 per pixel
    processor = transformers.AutoImageProcessor.from_pretrained(out, backend="pil")
    assert type(reference).__name__ == hf.MODEL_CLASSES[hf.family(model.config)]

    ids = model.tokenize(CAPTIONS)
    text_inputs = tokenizer(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")
    # The same ids up to each text's end token; after it jaxvlm's padding, and transformers' (the end token where
    # jaxvlm pads with an ordinary token, which no pooled feature of a causal tower reads: see write_tokenizer).
    end = tokenizer.eos_token_id
    after_end = np.cumsum(ids == end, axis=1) - (ids == end) > 0
    assert after_end.any() and (ids[after_end] == model.tokenizer.pad_id).all()
    expected = np.where(after_end, tokenizer.pad_token_id, ids)
    np.testing.assert_array_equal(text_inputs["input_ids"].numpy(), expected, err_msg=f"{name} token ids")
    images = photos()
    pixels = model.preprocess(images)
    hf_pixels = processor(images, return_tensors="pt")["pixel_values"]
    # Tolerance 0: both resize the same uint8 image with Pillow's same filter and crop the same box (PHOTO_SIZES),
    # then take x / 255 (jaxvlm: one float32 division; HF: a float64 product with 1/255, rounded to float32: the
    # same float32, as x / 255 for 0 < x < 255 lies at least 1e-10 (relative) from any float32 rounding boundary,
    # far beyond the product's 2e-16), subtract the same float32 mean and divide by the same float32 std.
    pixel_error = max_abs(hf_pixels.numpy().transpose(0, 2, 3, 1), pixels)
    random_ids = np.zeros((0, ids.shape[1]), ids.dtype) if make_ids is None else make_ids(np.random.default_rng(1))
    zi, zt_all = model.encode_image(pixels), model.encode_text(np.concatenate([ids, random_ids]))  # one compile
    zt = zt_all[: len(ids)]
    ref_zi, ref_zt, ref_logits = hf_embeddings(reference, hf_pixels, text_inputs)
    errors = {"pixels": pixel_error, "image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    if len(random_ids):
        with torch.no_grad():
            ref = features(reference.get_text_features(input_ids=torch.from_numpy(random_ids).long()))
        errors["text (random ids)"] = max_abs(zt_all[len(ids) :], ref)
    print(f"\nexport hf {name} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert errors.pop("pixels") == 0.0
    assert all(e <= TOLERANCE for e in errors.values()), errors
    assert_close_to_scale(
        model.logits(zi, zt), ref_logits, rtol_of_scale=TOLERANCE, scale=logit_scale(model), what=f"{name} logits"
    )
    return model, tokenizer


# ---------------------------------------------------------------- round trips from transformers

CASES = {
    "clip-quick_gelu-argmax": (
        transformers.CLIPModel,
        lambda: clip_config("quick_gelu", 2, vocab=CLIP_VOCAB),
        lambda rng: clip_ids(2, rng),
    ),
    "clip-gelu-eos7": (
        transformers.CLIPModel,
        lambda: clip_config("gelu", 7, vocab=CLIP_VOCAB),
        lambda rng: clip_ids(7, rng),
    ),
    "siglip": (transformers.SiglipModel, siglip_config, siglip_ids),
}
SLOW_CASES = ("clip-gelu-eos7",)  # HF's other CLIP pooling rule; the jaxvlm-built tiny-clip pools at the argmax


@pytest.fixture(
    scope="module", params=[pytest.param(c, marks=[pytest.mark.slow] if c in SLOW_CASES else []) for c in CASES]
)
def round_trip(request, tmp_path_factory, spm_model_file):
    """(case, model directory converted from a perturbed transformers model, its export)."""
    model_cls, make_config, make_ids = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    perturbed(model_cls, make_config()).save_pretrained(root / "hf")
    tokenizer = CLIP_BPE_FILE if request.param.startswith("clip") else spm_model_file
    convert("hf", root / "hf", root / "model", tokenizer=tokenizer)
    assert export(root / "model", root / "export", "hf") == root / "export"
    return request.param, make_ids, root / "model", root / "export"


@pytest.mark.latest
def test_round_trip_outputs_match(round_trip):
    name, make_ids, directory, out = round_trip
    model, tokenizer = assert_same_outputs(directory, out, name, make_ids)
    if name == "siglip":  # bidirectional: HF would mask the padding jaxvlm attends to
        assert "attention_mask" not in tokenizer(["a cat"])
    assert tokenizer.model_max_length == CONTEXT


def test_round_trip_reconverts_exactly(round_trip, tmp_path):
    name, _, directory, out = round_trip
    assert_reconverts_exactly(directory, "hf", out, tmp_path / "again")
    config = json.loads((out / "config.json").read_text())
    family = "clip" if name.startswith("clip") else "siglip"
    assert config["model_type"] == family and config["architectures"] == [hf.MODEL_CLASSES[family]]
    for section in ("text_config", "vision_config"):  # every field the converter would otherwise default
        assert set(convert_hf.DEFAULTS[family][section]) <= set(config[section]), section
    assert set(convert_hf.DEFAULTS[family]["model"]) <= set(config)


# ---------------------------------------------------------------- a model jaxvlm built


def test_model_built_by_jaxvlm(tmp_path):
    """tiny-clip from the registry with random parameters, saved as after training: exact GELU, argmax
    pooling, 77 positions, CLIP BPE padded with 0 ('!', open_clip's rule; transformers pads with the end token,
    which the causal tower never reads); exported through the command line."""
    directory = random_model_dir(tmp_path / "model", "tiny-clip")
    assert main(["export", str(directory), str(tmp_path / "export"), "--to", "hf"]) == 0
    assert_same_outputs(directory, tmp_path / "export", "tiny-clip (jaxvlm-built)")
    assert_reconverts_exactly(directory, "hf", tmp_path / "export", tmp_path / "again")


# ---------------------------------------------------------------- refusals


def replaced(architecture, **changes):
    """The architecture's config with ``vision_*`` / ``text_*`` / top-level fields changed."""
    cfg = get_architecture(architecture).model
    vision = {k[7:]: v for k, v in changes.items() if k.startswith("vision_")}
    text = {k[5:]: v for k, v in changes.items() if k.startswith("text_")}
    top = {k: v for k, v in changes.items() if not k.startswith(("vision_", "text_"))}
    return dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, **vision), text=dataclasses.replace(cfg.text, **text), **top
    )


CLIP_TOKENIZER = get_architecture("tiny-clip").tokenizer
HF_JSON_TOKENIZER = TokenizerConfig(kind="hf_json", file="tokenizer.json", context_length=77, clean="none")
REFUSED = {  # (model config, random_model_dir arguments, what the message names)
    "coca": (lambda: get_architecture("tiny-coca").model, {"architecture": "tiny-coca"}, "CoCa"),
    "gap pooling": (lambda: replaced("tiny-clip", vision_pool="gap"), {}, "vision.pool 'gap'"),
    "sincos positions": (lambda: replaced("tiny-clip", vision_pos_embed="sincos2d"), {}, "vision.pos_embed"),
    "bidirectional clip text": (lambda: replaced("tiny-clip", text_causal=False), {}, "text.causal"),
    "padding mask": (lambda: replaced("tiny-clip", text_pad_mask="exact"), {}, "text.pad_mask"),
    "first-token text pool": (lambda: replaced("tiny-clip", text_pool="first"), {}, "text.pool 'first'"),
    "eos pool at id 2": (lambda: replaced("tiny-clip", text_pool="eos", text_eos_id=2), {}, "at id 2"),
    "clip logit bias": (lambda: replaced("tiny-clip", logit_bias_init=-10.0), {}, "logit bias"),
    "sigmoid without bias": (
        lambda: replaced("tiny-siglip", logit_bias_init=None),
        {"architecture": "tiny-siglip", "tokenizer_source": "spm"},
        "without a logit bias",
    ),
    "siglip text without projection": (  # as ViT-SO400M-16-SigLIP-i18n-256; SiglipModel always has a text head
        lambda: replaced("tiny-siglip", text_proj=False, text_proj_bias=False),
        {"architecture": "tiny-siglip", "tokenizer_source": "spm"},
        "text.proj False",
    ),
    "case-keeping clean": (
        lambda: replaced("tiny-clip"),
        {"tokenizer": dataclasses.replace(CLIP_TOKENIZER, clean="whitespace")},
        "tokenizer clean 'whitespace'",
    ),
    # pooled at the first 0 (a CLIP BPE text holds none): where jaxvlm pads, but not where transformers can
    "pool at the padding id": (
        lambda: replaced("tiny-clip", text_pool="eos", text_eos_id=0),
        {},
        r"pad_id 0 \('!'\) is an ordinary token",
    ),
    "tokenizer.json padding with an ordinary token": (
        lambda: replaced("tiny-clip"),
        {"tokenizer": dataclasses.replace(HF_JSON_TOKENIZER, pad_id=0), "tokenizer_source": "json"},
        "pad_id 0",
    ),
}


@pytest.fixture(scope="module")
def clip_tokenizer_json(tmp_path_factory):
    """transformers' CLIP tokenizer as a tokenizer.json, from an export of tiny-clip."""
    root = tmp_path_factory.mktemp("tokenizer-json")
    export(random_model_dir(root / "model", "tiny-clip"), root / "export", "hf")
    transformers.AutoTokenizer.from_pretrained(root / "export").backend_tokenizer.save(str(root / "tokenizer.json"))
    return root / "tokenizer.json"


@pytest.mark.parametrize("case", list(REFUSED))
def test_inexpressible_models_are_refused(case, tmp_path, spm_model_file, clip_tokenizer_json):
    make_config, extra, message = REFUSED[case]
    sources = {"spm": spm_model_file, "json": clip_tokenizer_json}
    extra = {"architecture": "tiny-clip"} | {
        k: sources.get(v, v) if k == "tokenizer_source" else v for k, v in extra.items()
    }
    directory = random_model_dir(tmp_path / "model", config=make_config(), **extra)
    with pytest.raises(InputError, match=message) as error:
        export(directory, tmp_path / "export", "hf")
    print(f"\n{case}: {error.value}")
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no OUT, no staging folder


def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path, capsys):
    directory = random_model_dir(tmp_path / "model", "tiny-coca")
    assert main(["export", str(directory), str(tmp_path / "export"), "--to", "hf"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "CoCa" in captured.err, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---------------------------------------------------------------- tokenizer.json


def test_tokenizer_json_ids_match(tmp_path, clip_tokenizer_json):
    """A model whose tokenizer is a tokenizer.json (as converted from a transformers repo that has one): written
    as is for PreTrainedTokenizerFast, padded with its own special token, the same ids."""
    tokenizer = dataclasses.replace(HF_JSON_TOKENIZER, pad_id=49407)
    directory = random_model_dir(
        tmp_path / "model", "tiny-clip", tokenizer=tokenizer, tokenizer_source=clip_tokenizer_json
    )
    export(directory, tmp_path / "export", "hf")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    ids = build_tokenizer(tokenizer, directory)(CAPTIONS)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    hf_ids = hf_tokenizer(CAPTIONS, padding="max_length", truncation=True, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(hf_ids, ids)
