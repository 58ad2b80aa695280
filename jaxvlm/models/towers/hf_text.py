"""Text towers from HF encoders (kind "hf_encoder"), as open_clip's HFTextEncoder and transformers build them.

Two encoder families, told apart by fields:
- BERT / RoBERTa / XLM-R: learned absolute positions (RoBERTa's counted from its padding id, pads
  keeping the padding row), the first token type's embedding added, LayerNorm over the embeddings,
  post-LN blocks (norm after each residual), no final norm.
- NLLB (M2M100's encoder): token embeddings scaled by sqrt(width), fixed sinusoidal positions counted
  from the padding id (its row zero), pre-LN blocks, a final LayerNorm.
Attention never reads padding keys (ids == pad_id). The pooled feature is the first token's ("cls"), the
mean over the non-padding tokens ("mean"), or BERT's pooler (dense + tanh over the first token); then
open_clip's projection: linear (ALIGN's with a bias), or an MLP through the mean width with exact GELU, without
biases.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.config_base import check_choice, check_int
from jaxvlm.errors import InputError
from jaxvlm.models.layers import (
    ACTIVATIONS,
    Attention,
    Block,
    Mlp,
    activations_with_axes,
    dense,
    layer_norm,
    param_with_axes,
    scan_layers,
)
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import TextTowerConfig
from jaxvlm.models.towers.common import check_encoder

POSITIONS = ("learned", "sinusoidal")
POSITION_IDS = ("arange", "after_padding")
POOLS = ("cls", "mean", "pooler")
PROJECTIONS = ("none", "linear", "mlp")


@dataclasses.dataclass(frozen=True)
class HFTextConfig(TextTowerConfig):
    kind: ClassVar[str] = "hf_encoder"

    vocab_size: int
    context_length: int  # the longest id sequence the tower takes (the tokenizer's)
    width: int
    depth: int
    heads: int
    mlp_dim: int
    max_positions: int  # HF's max_position_embeddings: the learned table's rows (M2M100's sinusoids add 2)
    act: str = "gelu"
    ln_eps: float = 1e-12
    pad_id: int = 0
    positions: str = "learned"
    # "after_padding": RoBERTa's and M2M100's position ids, pad_id + the count of non-padding tokens up to
    # and including this one; padding tokens take pad_id
    position_ids: str = "arange"
    type_vocab_size: int = 2  # BERT's token types (every token has type 0); 0: none
    embed_scale: bool = False  # token embeddings times sqrt(width) (M2M100's scale_embedding)
    embed_norm: bool = True  # LayerNorm over the summed embeddings
    post_norm: bool = True  # BERT's post-LN blocks; False: pre-LN blocks and a final LayerNorm
    pool: str = "mean"
    proj: str = "linear"
    proj_bias: bool = False  # the linear projection's bias (ALIGN's text_projection has one)

    def __post_init__(self) -> None:
        check_encoder("text", self)
        check_choice("text.positions", self.positions, POSITIONS)
        check_choice("text.position_ids", self.position_ids, POSITION_IDS)
        check_choice("text.pool", self.pool, POOLS)
        check_choice("text.proj", self.proj, PROJECTIONS)
        check_int("text.type_vocab_size", self.type_vocab_size, 0)
        check_int("text.pad_id", self.pad_id, 0)
        check_int("text.max_positions", self.max_positions, 1)
        if self.position_rows <= self.last_position:
            raise InputError(
                f"text.context_length {self.context_length} needs position {self.last_position}, past the "
                f"{self.position_rows} rows of the position table"
            )
        if self.positions == "sinusoidal" and (self.width % 2 or self.width < 4):
            raise InputError(f"text.width {self.width}: sinusoidal positions need an even width of at least 4")

    @property
    def position_rows(self) -> int:
        return self.max_positions + (2 if self.positions == "sinusoidal" else 0)

    @property
    def last_position(self) -> int:
        offset = self.pad_id + 1 if self.position_ids == "after_padding" else 0
        return self.context_length - 1 + offset

    def check(self, embed_dim: int) -> None:
        if self.proj == "none" and self.width != embed_dim:
            raise InputError(f"text.proj is 'none' but text.width {self.width} != embed_dim {embed_dim}")


def sinusoids(rows: int, width: int, pad_id: int) -> np.ndarray:
    """M2M100's fixed position table [rows, width]: sines then cosines at frequencies 10000^(-i / (width/2 - 1)),
    float32 as torch computes them, exp / sin / cos correctly rounded (torch's are within an ulp, which row r
    scales by r: within 1e-6 of transformers' up to row 80, 2e-5 at row 1026); row pad_id is zero."""
    half = width // 2
    step = math.log(10000) / (half - 1)
    exponents = (np.arange(half, dtype=np.float32) * np.float32(-step)).astype(np.float64)
    freqs = np.exp(exponents).astype(np.float32)
    angles = (np.arange(rows, dtype=np.float32)[:, None] * freqs[None]).astype(np.float64)
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
    table[pad_id] = 0
    return table


def position_ids(ids: jax.Array, cfg: HFTextConfig) -> jax.Array:
    if cfg.position_ids == "arange":
        return jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    valid = (ids != cfg.pad_id).astype(jnp.int32)
    return jnp.cumsum(valid, axis=1) * valid + cfg.pad_id


class PostNormBlock(nn.Module):
    """BERT's layer: attention, residual, LayerNorm; MLP, residual, LayerNorm. Called as `Block` is."""

    heads: int
    mlp_dim: int
    act: str
    ln_eps: float
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, cache: None, key_mask: jax.Array) -> tuple[jax.Array, None]:
        y, _ = Attention(self.heads, False, self.dtype, self.attention, name="attn")(x, x, key_mask=key_mask)
        x = layer_norm(self.ln_eps, self.dtype, "norm1")(activations_with_axes(x + y))
        y = Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(x)
        return layer_norm(self.ln_eps, self.dtype, "norm2")(activations_with_axes(x + y)), None


class HFText(nn.Module):
    cfg: HFTextConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ids int [B, L], L <= context_length -> (pooled (projected) features [B, embed_dim], the encoder's
        output tokens [B, L, width])."""
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        x = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            dtype=dtype,
            embedding_init=param_with_axes(nn.initializers.normal(0.02), "vocab", "embed"),
            name="token_embed",
        )(ids)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.width), x.dtype)
        positions = position_ids(ids, cfg)
        if cfg.positions == "learned":
            table = self.param(
                "pos_embed",
                param_with_axes(nn.initializers.normal(0.02), "length", "embed"),
                (cfg.position_rows, cfg.width),
            )
        else:
            table = jnp.asarray(sinusoids(cfg.position_rows, cfg.width, cfg.pad_id))
        x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
        if cfg.type_vocab_size:
            types = self.param(
                "type_embed",
                param_with_axes(nn.initializers.normal(0.02), None, "embed"),
                (cfg.type_vocab_size, cfg.width),
            )
            x = x + types[0].astype(x.dtype)
        if cfg.embed_norm:
            x = layer_norm(cfg.ln_eps, dtype, "embed_norm")(x)
        x = activations_with_axes(x)
        valid = ids != cfg.pad_id
        block = PostNormBlock if cfg.post_norm else Block
        blocks = scan_layers(block, cfg.depth, self.runtime.remat, in_axes=(nn.broadcast, nn.broadcast))(
            cfg.heads, cfg.mlp_dim, cfg.act, cfg.ln_eps, dtype=dtype, attention=self.runtime.attention, name="blocks"
        )
        x, _ = blocks(x, None, valid)
        if not cfg.post_norm:
            x = layer_norm(cfg.ln_eps, dtype, "final_norm")(x)
        return self._project(self._pool(x, valid)), x

    def _pool(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        cfg = self.cfg
        if cfg.pool == "mean":  # open_clip's MeanPooler: the sum over the tokens it keeps, over their count
            weights = valid.astype(jnp.float32)[..., None]
            return ((x.astype(jnp.float32) * weights).sum(1) / weights.sum(1)).astype(x.dtype)
        first = x[:, 0]
        if cfg.pool == "pooler":
            first = jnp.tanh(dense(cfg.width, ("embed", None), dtype=first.dtype, name="pooler")(first))
        return first

    def _project(self, pooled: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        if cfg.proj == "linear":
            return dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name="proj")(pooled)
        if cfg.proj == "mlp":
            hidden = (cfg.width + self.embed_dim) // 2
            y = dense(hidden, ("embed", "mlp"), use_bias=False, dtype=dtype, name="proj_fc1")(pooled)
            y = ACTIVATIONS["gelu"](y.astype(jnp.float32)).astype(y.dtype)
            return dense(self.embed_dim, ("mlp", "proj"), use_bias=False, dtype=dtype, name="proj_fc2")(y)
        return pooled
