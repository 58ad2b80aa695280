"""Architecture configs: plain frozen dataclasses that round-trip through JSON.

Every numeric choice that differs between sources (activation, LayerNorm eps, pooling, causal
mask, logit scale/bias init, ...) is a field here, never a branch on where weights came from.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxvlm.errors import InputError
from jaxvlm.ops import IMPLEMENTATIONS as ATTENTIONS

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
VISION_POOLS = ("cls", "gap", "map", "attn_pool")
TEXT_POOLS = ("argmax", "eos", "last", "first")
POS_EMBEDS = ("learned", "sincos2d")
PAD_MASKS = ("none", "exact", "shifted")
LOSSES = ("softmax", "sigmoid")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-5
    patch_bias: bool = False
    class_token: bool = True
    pos_embed: str = "learned"
    pre_norm: bool = True
    pool: str = "cls"  # attn_pool: CoCa's learned queries; the first one's output is the pooled feature
    proj: bool = True  # linear projection to the joint embedding (off when width == embed_dim)
    proj_bias: bool = False
    attn_pool_queries: int = 256
    attn_pool_heads: int = 8

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + int(self.class_token)

    def validate(self) -> None:
        _check_encoder("vision", self)
        _check_choice("vision.pool", self.pool, VISION_POOLS)
        _check_choice("vision.pos_embed", self.pos_embed, POS_EMBEDS)
        if self.image_size < self.patch_size:  # a remainder is dropped (So400m/14 at 384 px: 27 x 27 patches)
            raise InputError(f"vision.image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.pool == "cls" and not self.class_token:
            raise InputError("vision.pool 'cls' needs vision.class_token")
        if self.pool == "attn_pool" and self.attn_pool_queries < 2:
            raise InputError("vision.attn_pool_queries must be >= 2 (one pooled, the rest image tokens)")


@dataclasses.dataclass(frozen=True)
class TokenStackConfig:
    """What the text tower and the caption decoder share: a transformer over token ids."""

    vocab_size: int
    context_length: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig(TokenStackConfig):
    causal: bool = True
    pool: str = "argmax"
    eos_id: int | None = None  # only for pool == "eos": the first position holding this id
    proj: bool = True
    proj_bias: bool = False
    append_cls: bool = False  # CoCa: a learned token after the text, pooled with pool "last"
    # Keys holding pad_id are masked out: "exact" masks those positions; "shifted" reproduces
    # open_clip's CoCa, whose mask is built with the cls slot first, so each position takes the
    # padding flag of the one before it (see `text.key_mask`).
    pad_mask: str = "none"
    pad_id: int = 0

    @property
    def positions(self) -> int:
        return self.context_length + int(self.append_cls)

    def validate(self) -> None:
        _check_encoder("text", self)
        _check_choice("text.pool", self.pool, TEXT_POOLS)
        _check_choice("text.pad_mask", self.pad_mask, PAD_MASKS)
        if self.pool == "eos" and self.eos_id is None:
            raise InputError("text.pool 'eos' needs text.eos_id")
        if self.append_cls and self.pool != "last":
            raise InputError("text.append_cls needs text.pool 'last' (the appended token is the pooled one)")
        if self.pad_mask == "shifted" and not self.append_cls:
            raise InputError("text.pad_mask 'shifted' needs text.append_cls")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(TokenStackConfig):
    """CoCa's multimodal decoder: causal self-attention over the text tower's tokens,
    cross-attention to the image tokens, and a vocabulary head."""

    sot_id: int = 49406  # generation starts from this token and stops at eot_id
    eot_id: int = 49407

    def validate(self) -> None:
        _check_encoder("decoder", self)
        for name in ("sot_id", "eot_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise InputError(f"decoder.{name} {getattr(self, name)} is outside the vocabulary of {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    loss: str = "softmax"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None  # a learned bias b exists only when this is set (SigLIP)
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: str = "none"
    decoder: DecoderConfig | None = None  # CoCa's captioning decoder
    attention: str = "auto"  # every attention layer's implementation: auto, xla or pallas (see jaxvlm.ops.attention)

    @property
    def image_token_width(self) -> int:
        return self.embed_dim if self.vision.pool == "attn_pool" else self.vision.width

    def validate(self) -> ModelConfig:
        self.vision.validate()
        self.text.validate()
        if self.vision.pool == "attn_pool" and self.embed_dim % self.vision.attn_pool_heads:
            raise InputError(
                f"embed_dim {self.embed_dim} is not divisible by vision.attn_pool_heads {self.vision.attn_pool_heads}"
            )
        if self.decoder is not None:
            self._validate_decoder()
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("remat", self.remat, REMAT_POLICIES)
        _check_choice("attention", self.attention, ATTENTIONS)
        for name, tower in (("vision", self.vision), ("text", self.text)):
            if not tower.proj and tower.width != self.embed_dim:
                raise InputError(f"{name}.proj is off but {name}.width {tower.width} != embed_dim {self.embed_dim}")
        return self

    def _validate_decoder(self) -> None:
        dec = self.decoder
        dec.validate()
        if dec.width != self.text.width or dec.width != self.image_token_width:
            raise InputError(
                f"decoder.width {dec.width} must equal the text width {self.text.width} and the image "
                f"token width {self.image_token_width}"
            )
        if dec.context_length > self.text.context_length:
            raise InputError(
                f"decoder.context_length {dec.context_length} exceeds text.context_length {self.text.context_length}"
            )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        vision = _build(VisionConfig, d.pop("vision", None), "vision")
        text = _build(TextConfig, d.pop("text", None), "text")
        decoder = d.pop("decoder", None)
        if decoder is not None:
            decoder = _build(DecoderConfig, decoder, "decoder")
        return _build(cls, {**d, "vision": vision, "text": text, "decoder": decoder}, "model").validate()


def _build(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise InputError(f"model config: '{where}' must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise InputError(f"model config: unknown keys in '{where}': {', '.join(unknown)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise InputError(f"model config: '{where}': {e}") from None


def _check_encoder(where: str, tower) -> None:
    """Checks what the encoders and the decoder have in common."""
    _check_choice(f"{where}.act", tower.act, ACTIVATIONS)
    if tower.width % tower.heads:
        raise InputError(f"{where}.width {tower.width} is not divisible by heads {tower.heads}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"model config: {name} is {value!r}; expected one of {', '.join(choices)}")
