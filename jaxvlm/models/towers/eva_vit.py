"""timm's Eva image tower (kind "eva_vit"): the ViTs timm builds with its Eva class, as open_clip's EVA01 / EVA02
(`eva_giant_patch14_*`, `eva02_*_clip_*`) and PE-Core (`vit_pe_core_*`) models use them, and the plain timm ViTs of
open_clip's MobileCLIPs (`vit_large_patch14_clip_224`, and `vit_base_mci_224` behind a ConvStem with BatchNorm).

Patch embedding (with or without bias) or a ConvStem, an optional class token, learned positions for every token (or
the patches only), an optional
LN before the encoder, then blocks that differ by config: pre-LN (x + f(LN(x))) or EVA02-E's post-LN
(x + LN(f(x))); keys with or without bias; an optional LN over the heads' outputs before the out projection and
one inside the MLP (EVA02's sub-LN); a GELU MLP or SwiGLU; optionally 2-D rotary position embedding of the patch
tokens' queries and keys (the class token is not rotated). Final LN, pooled by the class token or a MAP head,
and a projection (timm's classifier head). Returns the pooled feature and the patch tokens.
"""

from __future__ import annotations

import dataclasses
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
    MapHead,
    activations_with_axes,
    dense,
    layer_norm,
    param_with_axes,
    scan_layers,
)
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig
from jaxvlm.models.towers.common import check_encoder, check_projection
from jaxvlm.models.towers.conv_stem import ConvStem
from jaxvlm.models.towers.vit import PatchEmbed


@dataclasses.dataclass(frozen=True)
class EvaViTConfig(ImageTowerConfig):
    kind: ClassVar[str] = "eva_vit"

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = "map"  # "map" (PE-Core) | "cls" (EVA: timm's global_pool 'token')
    pool_heads: int | None = None  # the MAP head's (timm's attn_pool_num_heads)
    pool_mlp_dim: int | None = None
    act: str = "gelu"  # the "gelu" MLP's activation
    mlp: str = "gelu"  # "gelu": fc1, act, fc2 | "swiglu": silu(fc1_g) * fc1_x, fc2 (EVA02)
    mlp_norm: bool = False  # a LayerNorm on the MLP's hidden features before fc2 (timm's scale_mlp)
    attn_norm: bool = False  # a LayerNorm on the heads' outputs before the out projection (scale_attn_inner)
    key_bias: bool = True  # EVA's keys have none (timm's k_bias is a zero buffer)
    post_norm: bool = False  # blocks x + LN(f(x)) (EVA02-E) rather than x + f(LN(x))
    ln_eps: float = 1e-5
    patch_bias: bool = False
    class_token: bool = True
    pre_norm: bool = True  # a LayerNorm before the blocks (timm's use_pre_transformer_norm)
    rope: bool = True  # 2-D rotary position embedding in every block (EVA02, PE-Core)
    rope_indexing: str = "xy"  # timm's rope_grid_indexing: "xy" turns the first half of the pairs with x, "ij" y
    rope_offset: float = 1.0  # the first patch's rotary coordinate (timm's rope_grid_offset)
    # timm's ref_feat_shape: rotary coordinates scaled by rope_ref_grid / grid (None: not scaled)
    rope_ref_grid: int | None = None
    rope_temperature: float = 10_000.0
    proj: bool = True  # timm's classifier head, open_clip's projection to the joint embedding
    proj_bias: bool = True
    # timm's ConvStem in place of the patch embedding (vit_base_mci_224): each convolution's width and kernel
    # (= stride; their product is patch_size); empty: the patch embedding
    stem_widths: tuple[int, ...] = ()
    stem_kernels: tuple[int, ...] = ()
    pos_embed_class: bool = True  # positions for the class token too (timm's no_embed_class False)

    def __post_init__(self) -> None:
        check_encoder("vision", self)
        check_choice("vision.pool", self.pool, ("map", "cls"))
        check_choice("vision.mlp", self.mlp, ("gelu", "swiglu"))
        check_choice("vision.rope_indexing", self.rope_indexing, ("xy", "ij"))
        if self.pool == "map":
            check_int("vision.pool_heads", self.pool_heads, 1)
            check_int("vision.pool_mlp_dim", self.pool_mlp_dim, 1)
            if self.width % self.pool_heads:
                raise InputError(f"vision.width {self.width} is not divisible by pool_heads {self.pool_heads}")
        elif not self.class_token:
            raise InputError("vision.pool 'cls' needs the class token (vision.class_token)")
        if self.rope_ref_grid is not None:
            check_int("vision.rope_ref_grid", self.rope_ref_grid, 1)
        if self.rope and (self.width // self.heads) % 4:  # each head's channel pairs split between the two axes
            raise InputError(f"vision head width {self.width // self.heads} is not a multiple of 4 (2-D RoPE)")
        if self.image_size < self.patch_size:
            raise InputError(f"vision.image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.stem_widths:
            self._check_stem()

    def _check_stem(self) -> None:
        if not isinstance(self.stem_widths, tuple) or not isinstance(self.stem_kernels, tuple):
            raise InputError("vision.stem_widths and vision.stem_kernels must be tuples")
        if len(self.stem_widths) != len(self.stem_kernels) or self.stem_widths[-1] != self.width:
            raise InputError("vision.stem_widths needs one kernel each and must end with vision.width")
        if int(np.prod(self.stem_kernels)) != self.patch_size:
            raise InputError(f"vision.stem_kernels {self.stem_kernels} do not multiply to patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def positions(self) -> int:
        return self.grid**2 + int(self.class_token and self.pos_embed_class)

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + int(self.class_token)

    def check(self, embed_dim: int) -> None:
        check_projection("vision", self, embed_dim)

    def token_width(self, embed_dim: int) -> int:
        return self.width


def rope_tables(cfg: EvaViTConfig) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) float32 [num_tokens, head_dim] for `jaxvlm.models.layers.rotate_pairs`: timm's
    RotaryEmbeddingCat, its float32 angles computed as it computes them. Patch (row r, column c) has coordinates
    x = c + offset, y = r + offset (times rope_ref_grid / grid); the first half of a head's channel pairs turns
    with x ("xy" indexing) or y ("ij"), the second with the other, pair i at the frequency
    temperature^(-i / bands). The class token's rows leave it as it is (sin 0, cos 1)."""
    f32, grid = np.float32, cfg.grid
    bands = (cfg.width // cfg.heads) // 4
    exponents = (np.arange(bands).astype(f32) / f32(bands)).astype(np.float64)
    freqs = f32(1.0) / (cfg.rope_temperature**exponents).astype(f32)  # torch's float32 pow is correctly rounded
    coords = np.arange(grid).astype(f32) + f32(cfg.rope_offset)
    if cfg.rope_ref_grid is not None:
        coords = coords / f32(grid) * f32(cfg.rope_ref_grid)
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    axes = [cols, rows] if cfg.rope_indexing == "xy" else [rows, cols]
    angles = (np.stack(axes, axis=-1)[..., None] * freqs).reshape(grid * grid, 2 * bands)
    prefix = int(cfg.class_token)

    def table(fn, class_token_row):  # correctly rounded, as torch's float32 sin / cos nearly are
        pairs = np.repeat(fn(angles.astype(np.float64)).astype(f32), 2, axis=-1)
        return np.concatenate([np.full((prefix, 4 * bands), class_token_row, f32), pairs])

    return table(np.sin, 0.0), table(np.cos, 1.0)


class EvaMlp(nn.Module):
    """fc1, activation, fc2 ("gelu") or silu(fc1_g) * fc1_x, fc2 ("swiglu"), with an optional LayerNorm of
    the hidden features before fc2."""

    cfg: EvaViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, width = self.cfg, x.shape[-1]

        def fc1(name):
            return dense(cfg.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name=name)(x)

        # in float32 whatever the compute dtype, rounded once (as `layers.Mlp` does)
        if cfg.mlp == "swiglu":
            gate, h = fc1("fc1_g"), fc1("fc1_x")
            h = (nn.silu(gate.astype(jnp.float32)) * h.astype(jnp.float32)).astype(h.dtype)
        else:
            h = fc1("fc1")
            h = ACTIVATIONS[cfg.act](h.astype(jnp.float32)).astype(h.dtype)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        if cfg.mlp_norm:
            h = nn.LayerNorm(
                epsilon=cfg.ln_eps,
                dtype=self.dtype,
                scale_init=param_with_axes(nn.initializers.ones, "mlp"),
                bias_init=param_with_axes(nn.initializers.zeros, "mlp"),
                name="norm",
            )(h)
        return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class EvaBlock(nn.Module):
    """One Eva block: attention then MLP, each a residual, LayerNorm'd before (pre-LN) or after (post-LN)."""

    cfg: EvaViTConfig
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, None]:
        cfg = self.cfg
        attn = Attention(
            cfg.heads,
            dtype=self.dtype,
            attention=self.attention,
            key_bias=cfg.key_bias,
            inner_norm_eps=cfg.ln_eps if cfg.attn_norm else None,
            name="attn",
        )
        mlp = EvaMlp(cfg, self.dtype, name="mlp")
        norm1, norm2 = layer_norm(cfg.ln_eps, self.dtype, "norm1"), layer_norm(cfg.ln_eps, self.dtype, "norm2")
        if cfg.post_norm:
            x = activations_with_axes(x + norm1(attn(x, x, rope=rope)[0]))
            return activations_with_axes(x + norm2(mlp(x))), None
        y = norm1(x)
        x = activations_with_axes(x + attn(y, y, rope=rope)[0])
        return activations_with_axes(x + mlp(norm2(x))), None


class EvaEncoder(nn.Module):
    """``cfg.depth`` EvaBlocks, scanned (parameters stacked on a "layers" axis)."""

    cfg: EvaViTConfig
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        blocks = scan_layers(EvaBlock, self.cfg.depth, self.remat, in_axes=(nn.broadcast,))
        return blocks(self.cfg, self.dtype, self.attention, name="blocks")(x, rope)[0]


class EvaViT(nn.Module):
    cfg: EvaViTConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (pooled (projected) features [B, embed_dim], the normalised patch
        tokens [B, grid * grid, width])."""
        cfg, dtype, attention = self.cfg, self.runtime.compute_dtype, self.runtime.attention
        if cfg.stem_widths:
            x = ConvStem(cfg.stem_widths, cfg.stem_kernels, dtype, name="stem")(images)
        else:
            x = PatchEmbed(cfg.patch_size, cfg.width, cfg.patch_bias, dtype, name="patch_embed")(images)
        if cfg.class_token:
            cls = self.param("cls", param_with_axes(nn.initializers.zeros, None, None, "embed"), (1, 1, cfg.width))
            cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.width))
        if cfg.class_token and cfg.pos_embed_class:
            x = jnp.concatenate([cls, x], axis=1)
        pos = self.param(
            "pos_embed",
            param_with_axes(nn.initializers.normal(0.02), None, "length", "embed"),
            (1, cfg.positions, cfg.width),
        )
        x = activations_with_axes(x + pos.astype(x.dtype))
        if cfg.class_token and not cfg.pos_embed_class:
            x = jnp.concatenate([cls, x], axis=1)
        if cfg.pre_norm:
            x = layer_norm(cfg.ln_eps, dtype, "pre_norm")(x)
        rope = tuple(map(jnp.asarray, rope_tables(cfg))) if cfg.rope else None
        x = EvaEncoder(cfg, self.runtime.remat, dtype, attention, name="encoder")(x, rope)
        x = layer_norm(cfg.ln_eps, dtype, "final_norm")(x)
        if cfg.pool == "map":
            head = MapHead(cfg.pool_heads, cfg.pool_mlp_dim, cfg.act, cfg.ln_eps, dtype, attention, name="map_head")
            pooled = head(x)
        else:
            pooled = x[:, 0]
        if cfg.proj:
            pooled = dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name="proj")(pooled)
        return pooled, x[:, int(cfg.class_token) :]
