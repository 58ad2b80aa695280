"""ViT image tower (kind "vit"): patch embedding, position embedding, optional class token and
pre-LN, scanned encoder, pooling (class token, mean, MAP head, or CoCa's attentional pooler),
final LN, optional projection. Returns the pooled feature and the image tokens a caption decoder
reads."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.config_base import check_choice
from jaxvlm.errors import InputError
from jaxvlm.models.layers import (
    AttentionPool,
    Encoder,
    MapHead,
    activations_with_axes,
    dense,
    dot_general,
    layer_norm,
    param_with_axes,
)
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig
from jaxvlm.models.towers.common import check_encoder, check_projection

POOLS = ("cls", "gap", "map", "attn_pool")
POS_EMBEDS = ("learned", "sincos2d")


@dataclasses.dataclass(frozen=True)
class ViTConfig(ImageTowerConfig):
    kind: ClassVar[str] = "vit"

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
    # open_clip's final_ln_after_pool (CLIPA): the final LN normalises the pooled feature alone, the
    # image tokens stay unnormalised
    norm_after_pool: bool = False

    def __post_init__(self) -> None:
        check_encoder("vision", self)
        check_choice("vision.pool", self.pool, POOLS)
        check_choice("vision.pos_embed", self.pos_embed, POS_EMBEDS)
        if self.image_size < self.patch_size:  # a remainder is dropped (So400m/14 at 384 px: 27 x 27 patches)
            raise InputError(f"vision.image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.pool == "cls" and not self.class_token:
            raise InputError("vision.pool 'cls' needs vision.class_token")
        if self.pool == "attn_pool" and self.attn_pool_queries < 2:
            raise InputError("vision.attn_pool_queries must be >= 2 (one pooled, the rest image tokens)")
        if self.norm_after_pool and self.pool not in ("cls", "gap"):
            raise InputError(f"vision.norm_after_pool needs vision.pool 'cls' or 'gap', not {self.pool!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + int(self.class_token)

    def check(self, embed_dim: int) -> None:
        check_projection("vision", self, embed_dim)
        if self.pool == "attn_pool" and embed_dim % self.attn_pool_heads:
            raise InputError(f"embed_dim {embed_dim} is not divisible by vision.attn_pool_heads {self.attn_pool_heads}")

    def token_width(self, embed_dim: int) -> int:
        return embed_dim if self.pool == "attn_pool" else self.width


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin/cos position table [grid*grid, width] (MoCo v3 / big_vision layout)."""
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / (quarter - 1))
    rows, cols = np.mgrid[:grid, :grid]
    angle_x = cols.reshape(-1, 1) * omega
    angle_y = rows.reshape(-1, 1) * omega
    return np.concatenate([np.sin(angle_x), np.cos(angle_x), np.sin(angle_y), np.cos(angle_y)], axis=1).astype(
        np.float32
    )


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens [B, grid * grid, width]: a stride-p, p x p convolution
    (nn.Conv's parameters: kernel [p, p, channels, width], bias [width]; pixels past the last
    whole patch are dropped), computed as one matmul over the flattened patches, which XLA:CPU
    runs about twice as fast as the strided convolution."""

    patch_size: int
    width: int
    use_bias: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p, (b, h, w, c) = self.patch_size, images.shape
        kernel = self.param(
            "kernel", param_with_axes(nn.initializers.lecun_normal(), None, None, None, "embed"), (p, p, c, self.width)
        )
        rows, cols = h // p, w // p
        patches = images[:, : rows * p, : cols * p].reshape(b, rows, p, cols, p, c)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, rows * cols, p * p * c)
        x = dot_general(
            patches.astype(self.dtype),
            kernel.reshape(p * p * c, self.width).astype(self.dtype),
            (((2,), (0,)), ((), ())),
        )
        if self.use_bias:
            bias = self.param("bias", param_with_axes(nn.initializers.zeros, "embed"), (self.width,))
            x = x + bias.astype(self.dtype)
        return x


class ViT(nn.Module):
    cfg: ViTConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (pooled (projected) features [B, embed_dim], tokens [B, N, C]).

        tokens are the normalised sequence (unnormalised with norm_after_pool) without the token that was
        pooled (class token or first query); for "map" pooling, all of it.
        """
        cfg, dtype, attention = self.cfg, self.runtime.compute_dtype, self.runtime.attention
        x = PatchEmbed(cfg.patch_size, cfg.width, cfg.patch_bias, dtype, name="patch_embed")(images)
        if cfg.class_token:
            cls = self.param("cls", param_with_axes(nn.initializers.zeros, None, None, "embed"), (1, 1, cfg.width))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.width)), x], axis=1)
        if cfg.pos_embed == "learned":
            pos = self.param(
                "pos_embed",
                param_with_axes(nn.initializers.normal(0.02), None, "length", "embed"),
                (1, cfg.num_tokens, cfg.width),
            )
        else:  # the class token, if any, gets no position
            table = sincos_2d(cfg.grid, cfg.width)
            pos = np.concatenate([np.zeros((int(cfg.class_token), cfg.width), np.float32), table])[None]
        x = activations_with_axes(x + pos.astype(x.dtype))
        if cfg.pre_norm:
            x = layer_norm(cfg.ln_eps, dtype, "pre_norm")(x)
        x, _ = Encoder(
            cfg.depth,
            cfg.heads,
            cfg.mlp_dim,
            cfg.act,
            cfg.ln_eps,
            remat=self.runtime.remat,
            dtype=dtype,
            attention=attention,
            name="encoder",
        )(x)
        if cfg.pool == "attn_pool":  # open_clip's CoCa: pool first, then normalise all query outputs
            x = AttentionPool(
                cfg.attn_pool_queries,
                self.embed_dim,
                cfg.attn_pool_heads,
                cfg.ln_eps,
                dtype,
                attention,
                name="attn_pool",
            )(x)
        final_norm = layer_norm(cfg.ln_eps, dtype, "final_norm")
        if not cfg.norm_after_pool:
            x = final_norm(x)
        if cfg.pool in ("cls", "attn_pool"):
            pooled, tokens = x[:, 0], x[:, 1:]
        elif cfg.pool == "gap":
            tokens = x[:, int(cfg.class_token) :]
            pooled = tokens.mean(axis=1)
        else:
            pooled, tokens = (
                MapHead(cfg.heads, cfg.mlp_dim, cfg.act, cfg.ln_eps, dtype, attention, name="map_head")(x),
                x,
            )
        if cfg.norm_after_pool:
            pooled = final_norm(pooled)
        if cfg.proj:
            pooled = dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name="proj")(pooled)
        return pooled, tokens
