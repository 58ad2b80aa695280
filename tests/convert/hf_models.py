"""What the HF transformers converter and exporter tests share: tiny CLIPModel / SiglipModel
configs (text and image towers of different shapes), perturbed random-init models, token ids placed
where HF pools, and the parity tolerance."""

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

# max abs error of the unit-norm embeddings; the logits (exp(t) * cosine + b) carry the same relative accuracy,
# so theirs is TOLERANCE times exp(t) + |b|, the largest a logit can be (an absolute 1e-5 would fail a trained
# CLIP's exp(t) = 100 on rounding alone)
TOLERANCE = 1e-5
VOCAB = 1000
CONTEXT = 16
IMAGE, PATCH = 32, 8


def tower(width, mlp, depth, heads, **extra):
    return dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads, **extra)


def clip_config(act: str, eos: int, vocab: int = VOCAB):
    # Text and image towers of different widths, depths and head sizes, so that a transposed
    # or swapped tensor cannot go unnoticed.
    text = tower(
        48,
        96,
        3,
        3,
        vocab_size=vocab,
        max_position_embeddings=CONTEXT,
        hidden_act=act,
        eos_token_id=eos,
        bos_token_id=eos - 1,
        pad_token_id=eos - 1,
    )
    vision = tower(64, 128, 2, 4, image_size=IMAGE, patch_size=PATCH, hidden_act=act)
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def siglip_config():
    text = tower(
        48,
        96,
        3,
        3,
        vocab_size=VOCAB,
        max_position_embeddings=CONTEXT,
        projection_size=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        layer_norm_eps=1e-6,
    )
    vision = tower(64, 128, 2, 4, image_size=IMAGE, patch_size=PATCH, layer_norm_eps=1e-6)
    return transformers.SiglipConfig(text_config=text, vision_config=vision)


def perturbed(model_cls, config, seed=0):
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # every tensor moves off its initial value, so swapped or missed ones show
        for name, p in model.named_parameters():
            if name == "logit_scale" and model_cls is transformers.SiglipModel:
                p.fill_(math.log(10.0))
            elif name == "logit_bias":
                p.fill_(-10.0)
            p.add_(0.05 * torch.randn_like(p))
    return model


def clip_ids(eos: int, rng) -> np.ndarray:
    """Random ids with the EOS where HF pools: the largest id for eos == 2, else the first `eos`."""
    if eos == 2:
        ids = rng.integers(3, VOCAB - 1, size=(4, CONTEXT))
        marker = VOCAB - 1
    else:
        ids = rng.integers(eos + 1, VOCAB, size=(4, CONTEXT))
        marker = eos
    for row, pos in enumerate([CONTEXT - 1, 5, 0, 9]):
        ids[row, pos] = marker
    ids[3, 12] = marker  # a second EOS after the first: the first one counts
    return ids


def siglip_ids(rng) -> np.ndarray:
    ids = rng.integers(0, VOCAB, size=(4, CONTEXT))
    ids[1, 7:] = 1  # eos then padding, as SiglipTokenizer writes them
    return ids


CASES = {
    "clip-quick_gelu-eos2": (transformers.CLIPModel, lambda: clip_config("quick_gelu", 2), lambda r: clip_ids(2, r)),
    "clip-gelu-eos7": (transformers.CLIPModel, lambda: clip_config("gelu", 7), lambda r: clip_ids(7, r)),
    "siglip": (transformers.SiglipModel, siglip_config, siglip_ids),
}


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def features(output) -> torch.Tensor:
    """get_*_features return a tensor in transformers 4 and an output object (pooler_output) in 5."""
    x = output if isinstance(output, torch.Tensor) else output.pooler_output
    return x / x.norm(dim=-1, keepdim=True)
