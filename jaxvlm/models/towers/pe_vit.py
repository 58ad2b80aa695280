"""Perception Encoder image tower (kind "pe_vit"): Meta's PE-Core ViT as timm builds it
(`vit_pe_core_*`, timm's Eva class), the image tower of open_clip's PE-Core models.

Patch embedding without bias, an optional class token, learned positions for every token, LN
before the encoder, 2-D rotary position embedding of the patch tokens' queries and keys in every
block (the class token is not rotated), final LN, MAP pooling over all tokens (with its own head
count and MLP), and a projection with bias. Returns the pooled feature and the patch tokens.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.config_base import check_int
from jaxvlm.errors import InputError
from jaxvlm.models.layers import Encoder, MapHead, activations_with_axes, dense, layer_norm, param_with_axes
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig
from jaxvlm.models.towers.common import check_encoder, check_projection
from jaxvlm.models.towers.vit import PatchEmbed


@dataclasses.dataclass(frozen=True)
class PeViTConfig(ImageTowerConfig):
    kind: ClassVar[str] = "pe_vit"

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    pool_heads: int  # the MAP head's (timm's attn_pool_num_heads)
    pool_mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-5
    class_token: bool = True
    rope_offset: float = 1.0  # the first patch's rotary coordinate (timm's rope_grid_offset)
    # timm's ref_feat_shape: rotary coordinates scaled by rope_ref_grid / grid (None: not scaled)
    rope_ref_grid: int | None = None
    rope_temperature: float = 10_000.0
    proj: bool = True  # timm's classifier head, open_clip's projection to the joint embedding
    proj_bias: bool = True

    def __post_init__(self) -> None:
        check_encoder("vision", self)
        check_int("vision.pool_heads", self.pool_heads, 1)
        check_int("vision.pool_mlp_dim", self.pool_mlp_dim, 1)
        if self.rope_ref_grid is not None:
            check_int("vision.rope_ref_grid", self.rope_ref_grid, 1)
        if (self.width // self.heads) % 4:  # each head's channel pairs split between the x and y axes
            raise InputError(f"vision head width {self.width // self.heads} is not a multiple of 4 (2-D RoPE)")
        if self.width % self.pool_heads:
            raise InputError(f"vision.width {self.width} is not divisible by pool_heads {self.pool_heads}")
        if self.image_size < self.patch_size:
            raise InputError(f"vision.image_size {self.image_size} is smaller than patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + int(self.class_token)

    def check(self, embed_dim: int) -> None:
        check_projection("vision", self, embed_dim)

    def token_width(self, embed_dim: int) -> int:
        return self.width


def rope_tables(cfg: PeViTConfig) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) float32 [num_tokens, head_dim] for `jaxvlm.models.layers.rotate_pairs`: timm's
    RotaryEmbeddingCat ('xy' grid indexing), its float32 angles computed as it computes them. Patch
    (row r, column c) has coordinates x = c + offset, y = r + offset (times rope_ref_grid / grid); the
    first half of a head's channel pairs turns with x, the second with y, pair i at the frequency
    temperature^(-i / bands). The class token's rows leave it as it is (sin 0, cos 1)."""
    f32, grid = np.float32, cfg.grid
    bands = (cfg.width // cfg.heads) // 4
    exponents = (np.arange(bands).astype(f32) / f32(bands)).astype(np.float64)
    freqs = f32(1.0) / (cfg.rope_temperature**exponents).astype(f32)  # torch's float32 pow is correctly rounded
    coords = np.arange(grid).astype(f32) + f32(cfg.rope_offset)
    if cfg.rope_ref_grid is not None:
        coords = coords / f32(grid) * f32(cfg.rope_ref_grid)
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    angles = (np.stack([cols, rows], axis=-1)[..., None] * freqs).reshape(grid * grid, 2 * bands)
    prefix = int(cfg.class_token)

    def table(fn, class_token_row):  # correctly rounded, as torch's float32 sin / cos nearly are
        pairs = np.repeat(fn(angles.astype(np.float64)).astype(f32), 2, axis=-1)
        return np.concatenate([np.full((prefix, 4 * bands), class_token_row, f32), pairs])

    return table(np.sin, 0.0), table(np.cos, 1.0)


class PeViT(nn.Module):
    cfg: PeViTConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (pooled (projected) features [B, embed_dim], the normalised patch
        tokens [B, grid * grid, width])."""
        cfg, dtype, attention = self.cfg, self.runtime.compute_dtype, self.runtime.attention
        x = PatchEmbed(cfg.patch_size, cfg.width, False, dtype, name="patch_embed")(images)
        if cfg.class_token:
            cls = self.param("cls", param_with_axes(nn.initializers.zeros, None, None, "embed"), (1, 1, cfg.width))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.width)), x], axis=1)
        pos = self.param(
            "pos_embed",
            param_with_axes(nn.initializers.normal(0.02), None, "length", "embed"),
            (1, cfg.num_tokens, cfg.width),
        )
        x = activations_with_axes(x + pos.astype(x.dtype))
        x = layer_norm(cfg.ln_eps, dtype, "pre_norm")(x)
        sin, cos = rope_tables(cfg)
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
        )(x, rope=(jnp.asarray(sin), jnp.asarray(cos)))
        x = layer_norm(cfg.ln_eps, dtype, "final_norm")(x)
        pooled = MapHead(cfg.pool_heads, cfg.pool_mlp_dim, cfg.act, cfg.ln_eps, dtype, attention, name="map_head")(x)
        if cfg.proj:
            pooled = dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name="proj")(pooled)
        return pooled, x[:, int(cfg.class_token) :]
