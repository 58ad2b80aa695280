"""Architecture configs: frozen dataclasses that round-trip through JSON (`jaxvlm.config_base`).

A model is an image tower and a text tower of any registered kind (`jaxvlm.models.towers`), the
contrastive head, and optionally CoCa's caption decoder. Every numeric choice that differs between
sources (activation, LayerNorm eps, pooling, causal mask, logit scale/bias init, ...) is a field,
never a branch on where weights came from. How a model runs (dtype, remat, attention) is not here:
see `jaxvlm.models.runtime`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar, Self

from jaxvlm.config_base import Config, check_choice
from jaxvlm.errors import InputError
from jaxvlm.models.towers.base import ImageTowerConfig, TextTowerConfig
from jaxvlm.models.towers.common import check_encoder
from jaxvlm.models.towers.text_transformer import TokenStackConfig

LOSSES = ("softmax", "sigmoid")
# how a model ran, stored in config.json before runtime options were split off: read and ignored
RUNTIME_FIELDS = ("dtype", "remat", "attention")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(TokenStackConfig, Config):
    """CoCa's multimodal decoder: causal self-attention over the text tower's tokens,
    cross-attention to the image tokens, and a vocabulary head."""

    name: ClassVar[str] = "decoder"

    sot_id: int = 49406  # generation starts from this token and stops at eot_id
    eot_id: int = 49407

    def __post_init__(self) -> None:
        check_encoder("decoder", self)
        for name in ("sot_id", "eot_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise InputError(f"decoder.{name} {getattr(self, name)} is outside the vocabulary of {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    name: ClassVar[str] = "model config"

    embed_dim: int
    vision: ImageTowerConfig
    text: TextTowerConfig
    loss: str = "softmax"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None  # a learned bias b exists only when this is set (SigLIP)
    decoder: DecoderConfig | None = None  # CoCa's captioning decoder

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)
        self.vision.check(self.embed_dim)
        self.text.check(self.embed_dim)
        if self.decoder is not None:
            self._check_decoder()

    @property
    def image_token_width(self) -> int:
        return self.vision.token_width(self.embed_dim)

    def _check_decoder(self) -> None:
        dec = self.decoder
        text_width = getattr(self.text, "width", None)
        if not hasattr(self.text, "cache_shape"):
            raise InputError(f"a caption decoder needs a text tower that decodes; {self.text.kind!r} does not")
        if dec.width != text_width or dec.width != self.image_token_width:
            raise InputError(
                f"decoder.width {dec.width} must equal the text width {text_width} and the image "
                f"token width {self.image_token_width}"
            )
        if dec.context_length > self.text.context_length:
            raise InputError(
                f"decoder.context_length {dec.context_length} exceeds text.context_length {self.text.context_length}"
            )

    @classmethod
    def from_dict(cls, d: Mapping, where: str | None = None) -> Self:
        """Also reads configs written before runtime options were split off (their fields are ignored)."""
        if isinstance(d, Mapping):
            d = {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}
        return super().from_dict(d, where)
