"""What the open_clip converter and exporter tests share: captions, the parity tolerance, perturbed open_clip
reference models, tiny open_clip configs (a CLIP, and a SigLIP with a timm tower registered with timm here,
with SigLIP's or SigLIP 2's tokenizer) saved as hub repos by open_clip's own `save_for_hf`, loading a
converted model on one device, and the comparison of a jaxvlm model directory with what open_clip loads
from a hub repo."""

import contextlib
import copy
import json
import re
import shutil
from collections.abc import Iterable
from unittest import mock

import flax
import jax
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import jaxvlm
from jaxvlm.convert import common
from jaxvlm.convert import open_clip as open_clip_converter
from jaxvlm.convert import open_clip_repo as converter
from jaxvlm.errors import InputError
from jaxvlm.preprocess import OPENAI_MEAN, OPENAI_STD
from tests.reference_models import initialise_decoder_head
from tests.tolerances import assert_close_to_scale

CAPTIONS = [
    "a photo of a cat",
    "an astronaut in a white suit",
    "a cup of coffee",
    "",
    "a rocket on the launch pad " * 20,
]
# max abs error of the unit-norm embeddings; the logits (exp(t) * cosine + b) carry the same relative accuracy,
# so theirs is TOLERANCE times exp(t) + |b|, the largest a logit can be (an absolute 1e-5 would fail a trained
# CLIP's exp(t) = 100 on rounding alone); the decoder's vocabulary logits TOLERANCE times their largest
TOLERANCE = 1e-5


def tiny_open_clip_state() -> dict:
    """An open_clip CLIP with jaxvlm's tiny-clip shapes (random weights), as a state dict."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
    )
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def perturbed_open_clip_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    import open_clip

    model = open_clip.create_model(name, pretrained=None).eval()
    if hasattr(model, "text_decoder"):
        initialise_decoder_head(model)
    return perturbed(model, seed=None)


def perturbed(model, seed: int | None = 1):
    """``model`` in eval mode, every floating-point tensor but the logit scale moved by N(0, 0.02) noise
    (drawn after seeding torch with ``seed``; with None, from torch's generator as it stands)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():  # every tensor moves off its initial value, so swapped or missed ones show
        for key, value in model.state_dict().items():
            if key != "logit_scale" and value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
    return model.eval()


def load_on_one_device(directory):
    """Replicated over the suite's 8 simulated CPU devices, a full-size model would be held 8 times
    (a peak of 16 GB for these tests)."""
    return jaxvlm.load(directory, devices=jax.local_devices()[:1])


def photos():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _take_view(self, key):
    """SourceKeys.take without its float32 copy: the zero-stride array itself."""
    if key not in self.weights:
        raise InputError(f"{self.what}: missing key '{key}'")
    assert key not in self.used, key
    self.used.add(key)
    return self.weights[key]


def _stack_views(depth, one_layer, prefix):
    """stack_layers over zero-stride arrays, every layer's keys taken, without writing the stack out."""
    layers = [one_layer(i) for i in range(depth)]
    return {f"{prefix}/{k}": np.broadcast_to(x, (depth, *x.shape)) for k, x in layers[0].items()}


def _count(tree) -> int:
    return sum(int(np.prod(np.shape(x))) for x in flax.traverse_util.flatten_dict(tree).values())


def assert_full_size_keys_accounted(name: str, monkeypatch, dropped: Iterable[str]) -> None:
    """open_clip's architecture ``name`` at full size without weights: its tensors, built on the meta device, as
    zero-stride arrays of their shapes converted without copying them (a 20 GB model costs nothing), every key
    used and every shape checked; the converted parameters and BatchNorm statistics count as many values as
    open_clip's parameters and running statistics; each key of ``dropped`` missing is one InputError naming it."""
    import open_clip

    monkeypatch.setattr(common.SourceKeys, "take", _take_view)
    monkeypatch.setattr(open_clip_converter, "stack_layers", _stack_views)
    with torch.device("meta"):
        reference = open_clip.create_model(name, pretrained=None, device="meta")
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in reference.state_dict().items()}
    params, stats = open_clip_converter.convert_variables(state, name)
    statistics = [b for k, b in reference.named_buffers() if k.endswith(("running_mean", "running_var"))]
    assert _count(params) == sum(p.numel() for p in reference.parameters())
    assert _count(stats) == sum(b.numel() for b in statistics)
    print(f"\n{name}: {len(state)} open_clip tensors, {_count(params):,} parameters, {_count(stats):,} statistics")
    for key in dropped:
        with pytest.raises(InputError, match=re.escape(key)):
            open_clip_converter.convert_variables({k: x for k, x in state.items() if k != key}, name)


# ---------------------------------------------------------------- tiny open_clip hub repos

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
# The same with a text tower as wide as the embedding and no text_projection (open_clip's proj_type 'none'),
# as ViT-SO400M-16-SigLIP-i18n-256's
TINY_SIGLIP_UNPROJECTED_CFG = {
    **TINY_SIGLIP_CFG,
    "text_cfg": {
        **{k: v for k, v in TINY_SIGLIP_CFG["text_cfg"].items() if k != "proj_bias"},
        "width": 64,
        "heads": 4,
        "proj_type": "none",
    },
}
# The same with SigLIP 2's text side: open_clip's HFTokenizer over a Gemma-style tokenizer.json (gemma_tokenizer)
TINY_SIGLIP2_CFG = {
    **TINY_SIGLIP_CFG,
    "text_cfg": {**TINY_SIGLIP_CFG["text_cfg"], "vocab_size": 400, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2"},
}
SIGLIP_PREPROCESS = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "squash",
}


def register_tiny_timm_siglip() -> None:
    import timm
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


@contextlib.contextmanager
def tiny_timm_known():
    """The tests' tiny timm SigLIP ViT, registered with timm and known to jaxvlm by name (as timm's own are:
    jaxvlm's table of them is checked against timm in tests/convert/test_open_clip_repo.py)."""
    register_tiny_timm_siglip()
    with mock.patch.dict(converter.TIMM_VITS, {TINY_TIMM: TINY_TIMM_VIT}):
        yield


class NoTokenizerFiles:
    """What save_for_hf saves for open_clip's CLIP BPE (its SimpleTokenizer has no save_pretrained;
    push_to_hf_hub would upload a transformers copy that open_clip never runs)."""

    def save_pretrained(self, directory) -> None:
        pass


def save_repo(directory, model, tokenizer, model_cfg, preprocess_cfg, safe_serialization):
    import open_clip
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


def gemma_tokenizer(directory, context_length, vocab_size=400):
    """open_clip's HFTokenizer over a Gemma tokenizer built as open_clip's SigLipTokenizer('gemma') builds
    SigLIP 2's (right padding with <pad> 0, no <bos>, <eos> 1 appended) and saved to ``directory`` (a
    tokenizer.json), from a tiny SentencePiece BPE model trained here laid out as Gemma's (byte fallback,
    no dummy prefix, ``vocab_size`` pieces)."""
    import random

    import sentencepiece as spm
    from open_clip.tokenizer import HFTokenizer
    from transformers import GemmaTokenizer

    source = directory.with_name(f"{directory.name}-spm")
    source.mkdir()
    syllables = "ka to ri mo su ne pa lu shi ve an or ing the cat dog sky red blu ph x qu zz".split()
    rng = random.Random(0)
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(2000)]
    corpus = source / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(3000)))
    pieces = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(source / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        user_defined_symbols=["<mask>"],
        minloglevel=2,
        **{f"{name}_id": i for name, i in pieces.items()},
        **{f"{name}_piece": f"<{name}>" for name in pieces},
    )
    gemma = GemmaTokenizer.from_pretrained(source, padding_side="right", add_bos_token=False, add_eos_token=True)
    gemma.pad_token_id, gemma.eos_token_id = 0, 1
    gemma.save_pretrained(directory)
    return HFTokenizer(str(directory), context_length=context_length, clean="canonicalize")


def tiny_clip_repo(directory):
    """A perturbed open_clip CLIP of TINY_CLIP_CFG saved at ``directory`` by save_for_hf (safetensors; no
    tokenizer files: open_clip runs its CLIP BPE)."""
    import open_clip

    torch.manual_seed(0)
    model = perturbed(open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CFG)))
    return save_repo(directory, model, NoTokenizerFiles(), TINY_CLIP_CFG, CLIP_PREPROCESS, safe_serialization=True)


def tiny_siglip_repo(directory, spm_model_file, safe_serialization=True, model_cfg=TINY_SIGLIP_CFG):
    """A perturbed open_clip CustomTextCLIP of ``model_cfg`` (TINY_SIGLIP_CFG or a variant: the tiny timm tower)
    saved at ``directory`` by save_for_hf with siglip_tokenizer's files (a tokenizer.json), that tokenizer's own
    folder next to it."""
    spm = directory.with_name(f"{directory.name}-spm")
    tokenizer = siglip_tokenizer(spm_model_file, spm, model_cfg["text_cfg"]["context_length"])
    return _tiny_timm_siglip_repo(directory, model_cfg, tokenizer, safe_serialization)


def tiny_siglip2_repo(directory):
    """TINY_SIGLIP2_CFG as tiny_siglip_repo saves TINY_SIGLIP_CFG, with gemma_tokenizer's files (safetensors)."""
    tokenizer = gemma_tokenizer(
        directory.with_name(f"{directory.name}-gemma"), TINY_SIGLIP2_CFG["text_cfg"]["context_length"]
    )
    return _tiny_timm_siglip_repo(directory, TINY_SIGLIP2_CFG, tokenizer, safe_serialization=True)


def _tiny_timm_siglip_repo(directory, model_cfg, tokenizer, safe_serialization):
    import open_clip

    register_tiny_timm_siglip()
    torch.manual_seed(0)
    cfg = {k: v for k, v in copy.deepcopy(model_cfg).items() if k != "custom_text"}
    model = perturbed(open_clip.CustomTextCLIP(**cfg))
    return save_repo(directory, model, tokenizer, model_cfg, SIGLIP_PREPROCESS, safe_serialization)


# ---------------------------------------------------------------- jaxvlm against open_clip


def compare_with_open_clip(directory, repo, what, decoder=False):
    """The jaxvlm model directory ``directory`` against what open_clip loads from the hub repo ``repo``
    (`local-dir:`): pixels, token ids, embeddings and logits, and with ``decoder`` CoCa's caption logits.
    Returns the jaxvlm model."""
    import open_clip

    model = load_on_one_device(directory)
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
    # open_clip's transform is torchvision's Resize / CenterCrop on the PIL image (Pillow's resampling), then
    # ToTensor and Normalize: the operations jaxvlm's preprocessing repeats one for one, so equal to the bit
    errors = {"pixels": max_abs(pixels, ref_pixels), "image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    if decoder:
        pairs = ids[: len(pixels)]  # one caption per image
        caption_logits = jax.jit(model.module.apply)({"params": model.params}, pixels, pairs).caption_logits
        with torch.no_grad():
            image, text = torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(pairs).long()
            out = reference(image, text, output_labels=False)
        assert_close_to_scale(
            caption_logits, out["logits"].numpy(), rtol_of_scale=TOLERANCE, what=f"{what} decoder logits"
        )
    print(f"\n{what} vs open_clip max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert np.array_equal(ids, ref_ids), (ids, ref_ids)
    assert errors["pixels"] == 0, errors
    assert errors["image"] <= TOLERANCE and errors["text"] <= TOLERANCE, errors
    assert_close_to_scale(logits, ref_logits.numpy(), rtol_of_scale=TOLERANCE, scale=scale, what=f"{what} logits")
    return model
