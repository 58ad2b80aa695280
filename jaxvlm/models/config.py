"""Architecture configs: plain frozen dataclasses that round-trip through JSON.

Every numeric choice that differs between sources (activation, LayerNorm eps, pooling, causal
mask, logit scale/bias init, ...) is a field here, never a branch on where weights came from.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxvlm.errors import InputError

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
VISION_POOLS = ("cls", "gap", "map")
TEXT_POOLS = ("argmax", "eos", "last", "first")
POS_EMBEDS = ("learned", "sincos2d")
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
    pool: str = "cls"
    proj: bool = True  # linear projection to the joint embedding (off when width == embed_dim)
    proj_bias: bool = False

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


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    context_length: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-5
    causal: bool = True
    pool: str = "argmax"
    eos_id: int | None = None  # only for pool == "eos": the first position holding this id
    proj: bool = True
    proj_bias: bool = False

    def validate(self) -> None:
        _check_encoder("text", self)
        _check_choice("text.pool", self.pool, TEXT_POOLS)
        if self.pool == "eos" and self.eos_id is None:
            raise InputError("text.pool 'eos' needs text.eos_id")


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

    def validate(self) -> "ModelConfig":
        self.vision.validate()
        self.text.validate()
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("remat", self.remat, REMAT_POLICIES)
        for name, tower in (("vision", self.vision), ("text", self.text)):
            if not tower.proj and tower.width != self.embed_dim:
                raise InputError(f"{name}.proj is off but {name}.width {tower.width} != embed_dim {self.embed_dim}")
        return self

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        vision = _build(VisionConfig, d.pop("vision", None), "vision")
        text = _build(TextConfig, d.pop("text", None), "text")
        return _build(cls, {**d, "vision": vision, "text": text}, "model").validate()


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
    """Checks what the vision and text encoders have in common."""
    _check_choice(f"{where}.act", tower.act, ACTIVATIONS)
    if tower.width % tower.heads:
        raise InputError(f"{where}.width {tower.width} is not divisible by heads {tower.heads}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"model config: {name} is {value!r}; expected one of {', '.join(choices)}")
