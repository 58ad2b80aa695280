"""ViTamin image tower (kind "vitamin"): timm's vitamin_* hybrid as open_clip's TimmModel wraps it (open_clip's
ViTamin-* models).

A convolutional stem (3 x 3 stride-2 convolution, LayerNorm over channels, GELU, 3 x 3 convolution), two stages
of pre-LN MBConv blocks (LayerNorm, 1 x 1 expansion, GELU, depthwise 3 x 3, GELU, 1 x 1 projection, residual;
each stage's first block strides by 2 and its shortcut average-pools, then widens by a 1 x 1 convolution), a
LayerNorm and a 3 x 3 stride-2 convolution to the ViT's width, then learned positions (or none) and pre-LN ViT
blocks whose MLP is a GeGLU with its own LayerNorm. The tokens are averaged and normalised (timm's fc_norm);
open_clip's head projects the average. Returns the pooled feature and the final, unnormalised tokens.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm import ops
from jaxvlm.config_base import check_int
from jaxvlm.errors import InputError
from jaxvlm.models.layers import (
    ACTIVATIONS,
    Attention,
    activations_with_axes,
    dense,
    layer_norm,
    param_with_axes,
    scan_layers,
)
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig
from jaxvlm.models.towers.common import check_encoder


@dataclasses.dataclass(frozen=True)
class ViTaminConfig(ImageTowerConfig):
    kind: ClassVar[str] = "vitamin"

    image_size: int
    stem_width: int
    dims: tuple[int, ...]  # channels of the MBConv stages
    depths: tuple[int, ...]  # blocks per MBConv stage
    width: int  # the ViT's
    depth: int
    heads: int
    mlp_dim: int  # the GeGLU's hidden width
    expand_ratio: float = 4.0  # MBConv hidden width: the stage's channels times this, rounded as timm rounds
    pos_embed: bool = True  # learned positions for image_size's grid (timm's pos_embed 'none': none)
    act: str = "gelu"
    ln_eps: float = 1e-6
    proj_bias: bool = False

    def __post_init__(self) -> None:
        check_encoder("vision", self)
        for name in ("stem_width", "width", "depth", "mlp_dim"):
            check_int(f"vision.{name}", getattr(self, name), 1)
        if not isinstance(self.depths, tuple) or not isinstance(self.dims, tuple):
            raise InputError("vision.depths and vision.dims must be lists")
        if len(self.depths) != len(self.dims) or not self.depths:
            raise InputError(f"vision.depths {list(self.depths)} and vision.dims {list(self.dims)} differ in length")
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            check_int(f"vision.depths[{i}]", depth, 1)
            check_int(f"vision.dims[{i}]", dim, 1)
        if self.image_size % self.reduction:
            raise InputError(f"vision.image_size {self.image_size} is not a multiple of the stride {self.reduction}")

    @property
    def reduction(self) -> int:
        """Pixels per token side: the stem, each MBConv stage and the last convolution halve the resolution."""
        return 2 ** (len(self.dims) + 2)

    @property
    def grid(self) -> int:
        return self.image_size // self.reduction

    def hidden(self, dim: int) -> int:
        """timm's make_divisible(dim * expand_ratio): to the nearest multiple of 8, up when that loses > 10%."""
        v = dim * self.expand_ratio
        rounded = max(8, int(v + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * v else rounded

    def token_width(self, embed_dim: int) -> int:
        return self.width


def conv(features: int, kernel: int, stride: int, dtype: jnp.dtype, name: str, axes: tuple, groups: int = 1) -> nn.Conv:
    """A convolution with bias, padded by kernel // 2 on every side (timm's static padding)."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=kernel // 2,
        feature_group_count=groups,
        conv_general_dilated=ops.depthwise_conv,
        dtype=dtype,
        kernel_init=param_with_axes(nn.initializers.lecun_normal(), None, None, *axes),
        bias_init=param_with_axes(nn.initializers.zeros, axes[-1]),
        name=name,
    )


def gelu(x: jax.Array, act: str) -> jax.Array:
    """The activation in float32 whatever the compute dtype, rounded once (as `layers.Mlp` does)."""
    return ACTIVATIONS[act](x.astype(jnp.float32)).astype(x.dtype)


class MbConv(nn.Module):
    """timm's MbConvLNBlock. x [B, H, W, C_in] -> [B, H / stride, W / stride, out]."""

    cfg: ViTaminConfig
    out: int
    stride: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype, c = self.cfg, self.dtype, x.shape[-1]
        shortcut = x
        if self.stride == 2:
            shortcut = nn.avg_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), count_include_pad=False)
        if c != self.out:
            shortcut = conv(self.out, 1, 1, dtype, "shortcut", (None, "embed"))(shortcut)
        hidden = cfg.hidden(self.out)
        y = layer_norm(cfg.ln_eps, dtype, "pre_norm")(x)
        y = gelu(conv(hidden, 1, 1, dtype, "conv1", (None, "mlp"))(y), cfg.act)
        y = gelu(conv(hidden, 3, self.stride, dtype, "conv2", (None, "mlp"), groups=hidden)(y), cfg.act)
        return shortcut + conv(self.out, 1, 1, dtype, "conv3", ("mlp", "embed"))(y)


class Block(nn.Module):
    """timm's Block with ViTamin's GeGluMlp: x + attn(norm1(x)); x + w2(gelu(w0(y)) * w1(y)), y = mlp_norm(norm2(x))."""

    cfg: ViTaminConfig
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, None]:
        cfg, dtype = self.cfg, self.dtype
        y = layer_norm(cfg.ln_eps, dtype, "norm1")(x)
        x = activations_with_axes(x + Attention(cfg.heads, dtype=dtype, attention=self.attention, name="attn")(y, y)[0])
        y = layer_norm(cfg.ln_eps, dtype, "mlp_norm")(layer_norm(cfg.ln_eps, dtype, "norm2")(x))
        gate = dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, name="w0")(y)
        value = dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, name="w1")(y)
        h = (ACTIVATIONS[cfg.act](gate.astype(jnp.float32)) * value.astype(jnp.float32)).astype(value.dtype)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return activations_with_axes(x + dense(x.shape[-1], ("mlp", "embed"), dtype=dtype, name="w2")(h)), None


class ViTamin(nn.Module):
    cfg: ViTaminConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (pooled projected features [B, embed_dim], tokens
        [B, (H / reduction) * (W / reduction), width])."""
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        x = conv(cfg.stem_width, 3, 2, dtype, "stem_conv1", (None, "embed"))(images.astype(dtype))
        x = gelu(layer_norm(cfg.ln_eps, dtype, "stem_norm")(x), cfg.act)
        x = conv(cfg.stem_width, 3, 1, dtype, "stem_conv2", (None, "embed"))(x)
        for s, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            for d in range(depth):
                x = MbConv(cfg, dim, 2 if d == 0 else 1, dtype, name=f"stage_{s}_{d}")(x)
                x = nn.with_logical_constraint(x, ("batch", None, None, "embed"))
        x = layer_norm(cfg.ln_eps, dtype, "pool_norm")(x)
        x = conv(cfg.width, 3, 2, dtype, "pool_conv", (None, "embed"))(x)
        b, h, w, _ = x.shape
        x = x.reshape(b, h * w, cfg.width)
        if cfg.pos_embed:
            pos = self.param(
                "pos_embed",
                param_with_axes(nn.initializers.normal(0.02), None, "length", "embed"),
                (1, cfg.grid**2, cfg.width),
            )
            x = x + pos.astype(x.dtype)
        x = activations_with_axes(x)
        blocks = scan_layers(Block, cfg.depth, self.runtime.remat, in_axes=())
        tokens, _ = blocks(cfg, dtype, self.runtime.attention, name="blocks")(x)
        pooled = layer_norm(cfg.ln_eps, dtype, "fc_norm")(tokens.mean(axis=1, dtype=jnp.float32).astype(x.dtype))
        pooled = dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name="proj")(pooled)
        return pooled, tokens
