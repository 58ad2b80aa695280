"""What every tower kind provides.

A tower kind is one module file holding a frozen config dataclass (deriving from
`ImageTowerConfig` or `TextTowerConfig`, with a ``kind`` class variable) and a flax module built
as ``Module(cfg=config, embed_dim=..., runtime=...)`` whose ``__call__(inputs)`` returns
``(pooled [B, embed_dim], tokens [B, N, C])``: the pooled (projected) feature the contrastive loss
compares, and the token sequence a caption decoder or a token-level loss reads. Everything else
(parameter tree, FLOPs, sharding) is read off the module by tracing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Self

import jax
import jax.numpy as jnp

from jaxvlm.config_base import Config
from jaxvlm.errors import InputError


class TowerConfig(Config):
    kind: ClassVar[str]
    default_kind: ClassVar[str]  # the kind of configs written before towers had kinds

    @classmethod
    def from_dict(cls, d: Mapping, where: str | None = None) -> Self:
        """Reads the config of the kind named by ``d["kind"]``."""
        from jaxvlm.models.towers import registry_for

        where = where or cls.name
        if not isinstance(d, Mapping):
            raise InputError(f"{where} must be a mapping, got {type(d).__name__}")
        d = dict(d)
        kind = d.pop("kind", getattr(cls, "kind", cls.default_kind))
        kinds = registry_for(cls)
        if kind not in kinds or not issubclass(kinds[kind].config, cls):
            raise InputError(f"{where}: unknown tower kind {kind!r}; known: {', '.join(sorted(kinds))}")
        return Config.from_dict.__func__(kinds[kind].config, d, where)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **super().to_dict()}

    def check(self, embed_dim: int) -> None:
        """Raises InputError when the tower cannot produce ``embed_dim``-wide pooled features."""

    def example_input(self, batch: int = 1) -> jax.Array:
        raise NotImplementedError


class ImageTowerConfig(TowerConfig):
    """Image towers take float pixels [B, image_size, image_size, 3]."""

    name: ClassVar[str] = "vision"
    default_kind: ClassVar[str] = "vit"
    image_size: int

    def token_width(self, embed_dim: int) -> int:
        """The width of the image tokens the tower returns."""
        raise NotImplementedError

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, 3), jnp.float32)


class TextTowerConfig(TowerConfig):
    """Text towers take int32 token ids [B, L <= context_length] below vocab_size."""

    name: ClassVar[str] = "text"
    default_kind: ClassVar[str] = "transformer"
    vocab_size: int
    context_length: int

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.context_length), jnp.int32)
