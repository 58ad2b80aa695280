"""Text transformer tower (kind "transformer"): token + learned position embedding, optional
appended class token (CoCa), scanned encoder (causal or bidirectional, optionally masking padding),
final LN, pooling (argmax/EOS token, last, first), optional projection. It also decodes one
position at a time against a key/value cache, which CoCa's captioning uses."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm.config_base import check_choice
from jaxvlm.errors import InputError
from jaxvlm.models.layers import Encoder, activations_with_axes, dense, layer_norm, param_with_axes
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import TextTowerConfig
from jaxvlm.models.towers.common import check_encoder, check_projection

POOLS = ("argmax", "eos", "last", "first")
PAD_MASKS = ("none", "exact", "shifted")


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
class TransformerTextConfig(TokenStackConfig, TextTowerConfig):
    kind: ClassVar[str] = "transformer"

    causal: bool = True
    pool: str = "argmax"
    eos_id: int | None = None  # only for pool == "eos": the first position holding this id
    proj: bool = True
    proj_bias: bool = False
    append_cls: bool = False  # CoCa: a learned token after the text, pooled with pool "last"
    # Keys holding pad_id are masked out: "exact" masks those positions; "shifted" reproduces
    # open_clip's CoCa, whose mask is built with the cls slot first, so each position takes the
    # padding flag of the one before it (see `key_mask`).
    pad_mask: str = "none"
    pad_id: int = 0

    def __post_init__(self) -> None:
        check_encoder("text", self)
        check_choice("text.pool", self.pool, POOLS)
        check_choice("text.pad_mask", self.pad_mask, PAD_MASKS)
        if self.pool == "eos" and self.eos_id is None:
            raise InputError("text.pool 'eos' needs text.eos_id")
        if self.append_cls and self.pool != "last":
            raise InputError("text.append_cls needs text.pool 'last' (the appended token is the pooled one)")
        if self.pad_mask == "shifted" and not self.append_cls:
            raise InputError("text.pad_mask 'shifted' needs text.append_cls")

    @property
    def positions(self) -> int:
        return self.context_length + int(self.append_cls)

    def check(self, embed_dim: int) -> None:
        check_projection("text", self, embed_dim)

    def cache_shape(self, batch: int, length: int) -> tuple[int, ...]:
        """The shape of the key (and of the value) cache `TextTransformer.decode` reads."""
        return (self.depth, batch, length, self.heads, self.width // self.heads)


def pool_tokens(x: jax.Array, ids: jax.Array, pool: str, eos_id: int | None) -> jax.Array:
    """Picks one token's features per sequence. x [B, L, W], ids [B, L] -> [B, W]."""
    if pool == "first":
        return x[:, 0]
    if pool == "last":
        return x[:, -1]
    if pool == "argmax":  # CLIP's EOT has the largest id, so argmax finds the first EOT
        index = jnp.argmax(ids, axis=-1)
    else:
        index = jnp.argmax(ids == eos_id, axis=-1)
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


def key_mask(ids: jax.Array, cfg: TransformerTextConfig) -> jax.Array | None:
    """Which positions attention may read: bool [B, L + append_cls], or None for all of them.

    "shifted" is open_clip's CoCa mask, kept because pretrained CoCa weights were trained with
    it: open_clip puts the appended cls token's (always true) flag first instead of last, so
    position j takes the padding flag of position j - 1. The first padding position stays
    visible and the cls token at the end does not see itself (unless the text fills the context).
    """
    if cfg.pad_mask == "none":
        return None
    valid = ids != cfg.pad_id
    if cfg.append_cls:
        cls = jnp.ones_like(valid[:, :1])
        valid = jnp.concatenate([cls, valid] if cfg.pad_mask == "shifted" else [valid, cls], axis=1)
    return valid


class TextTransformer(nn.Module):
    cfg: TransformerTextConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    def setup(self) -> None:
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        self.token_embed = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            dtype=dtype,
            embedding_init=param_with_axes(nn.initializers.normal(0.02), "vocab", "embed"),
        )
        self.pos_embed = self.param(
            "pos_embed",
            param_with_axes(nn.initializers.normal(0.01), None, "length", "embed"),
            (1, cfg.positions, cfg.width),
        )
        if cfg.append_cls:
            self.cls = self.param(
                "cls", param_with_axes(nn.initializers.normal(0.01), None, None, "embed"), (1, 1, cfg.width)
            )
        self.encoder = Encoder(
            cfg.depth,
            cfg.heads,
            cfg.mlp_dim,
            cfg.act,
            cfg.ln_eps,
            causal=cfg.causal,
            remat=self.runtime.remat,
            dtype=dtype,
            attention=self.runtime.attention,
        )
        self.final_norm = layer_norm(cfg.ln_eps, dtype, None)
        if cfg.proj:
            self.proj = dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name=None)

    def __call__(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ids int [B, L], L <= context_length -> (pooled (projected) features [B, embed_dim],
        tokens [B, L, W]: the encoder's output at each text position, before the final norm)."""
        cfg = self.cfg
        x = self.token_embed(ids)
        if cfg.append_cls:
            x = jnp.concatenate([x, jnp.broadcast_to(self.cls.astype(x.dtype), (x.shape[0], 1, cfg.width))], axis=1)
        x = activations_with_axes(x + self.pos_embed[:, : x.shape[1]].astype(x.dtype))
        x, _ = self.encoder(x, None, key_mask(ids, self.cfg))
        pooled = pool_tokens(self.final_norm(x), ids, cfg.pool, cfg.eos_id)
        if cfg.proj:
            pooled = self.proj(pooled)
        return pooled, x[:, : ids.shape[1]]

    def decode(self, ids: jax.Array, index: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """The tokens of one position while decoding, reading earlier positions from ``cache``.

        ids int [B, S]: the sequences so far (positions after ``index`` are ignored); ``cache``:
        (keys, values) [layers, B, S, heads, head_dim]. Returns (tokens [B, 1, W], cache) with the
        same tokens as __call__ gives at position ``index``.
        """
        x = self.token_embed(jax.lax.dynamic_slice_in_dim(ids, index, 1, axis=1))
        x = x + jax.lax.dynamic_slice_in_dim(self.pos_embed, index, 1, axis=1).astype(x.dtype)
        mask = key_mask(ids, self.cfg)
        return self.encoder(x, cache, None if mask is None else mask[:, : ids.shape[1]], index)
