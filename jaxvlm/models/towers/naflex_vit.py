"""NaFlex ViT image tower (kind "naflex_vit"), SigLIP 2's native-aspect-ratio form.

An image arrives as a padded sequence of flattened patches with a mask and its patch grid's
shape (`NaFlexImages`, what `jaxvlm.preprocess` makes for a patch budget). The learned square
position grid is resized to each image's grid (bilinear with antialiasing, as
``F.interpolate(..., antialias=True)`` and HF's Siglip2 compute it), attention reads only real
patches, and the MAP head pools over them. The parameter tree is a SigLIP ViT's
(`jaxvlm.models.towers.vit`: patch_embed, pos_embed, encoder, final_norm, map_head), so the
converters share their tables.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm.config_base import check_int
from jaxvlm.errors import InputError
from jaxvlm.models.layers import Encoder, MapHead, activations_with_axes, dot_general, layer_norm, param_with_axes
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig
from jaxvlm.models.towers.common import check_encoder
from jaxvlm.preprocess import NaFlexImages


@dataclasses.dataclass(frozen=True)
class NaFlexViTConfig(ImageTowerConfig):
    kind: ClassVar[str] = "naflex_vit"

    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    position_grid: int = 16  # the learned positions: a position_grid x position_grid square
    max_num_patches: int = 256  # the patch budget an image is resized to fit (the sequence length)
    act: str = "gelu_tanh"
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        check_encoder("vision", self)
        check_int("vision.position_grid", self.position_grid, 1)
        check_int("vision.max_num_patches", self.max_num_patches, 1)

    @property
    def image_size(self) -> int:
        """The side of the square image whose patches fill the position grid exactly."""
        return self.position_grid * self.patch_size

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3

    def check(self, embed_dim: int) -> None:
        if self.width != embed_dim:  # the MAP head's output is the embedding, as in SigLIP 2
            raise InputError(f"vision.width {self.width} != embed_dim {embed_dim} (a NaFlex tower has no projection)")

    def token_width(self, embed_dim: int) -> int:
        return self.width

    def example_input(self, batch: int = 1) -> NaFlexImages:
        side = math.isqrt(self.max_num_patches)
        mask = jnp.arange(self.max_num_patches) < side * side
        return NaFlexImages(
            jnp.zeros((batch, self.max_num_patches, self.patch_dim), jnp.float32),
            jnp.broadcast_to(mask, (batch, self.max_num_patches)),
            jnp.full((batch, 2), side, jnp.int32),
        )


def resize_weights(grid: jax.Array, length: int, source: int) -> jax.Array:
    """float32 [B, length, source * source]: output position n of image b as a weighted sum of the
    source grid's cells. Position n is row n // columns, column n % columns of the image's grid;
    padding positions repeat position 0. Along each axis the weights are bilinear resizing's with
    half-pixel centres, the triangle widened by the scale when shrinking (antialiasing), each row
    normalised; the 2-D weights are the outer product of the row and column weights."""
    sizes = grid.astype(jnp.float32)[:, None, :]  # [B, 1, 2]
    n = jnp.arange(length, dtype=jnp.float32)[None, :, None]
    rows = jnp.floor(n / sizes[..., 1:])
    index = jnp.concatenate([rows, n - rows * sizes[..., 1:]], axis=-1)
    index = index * (n < sizes.prod(-1, keepdims=True))  # [B, length, 2]
    scale = source / sizes
    support = jnp.maximum(scale, 1.0)
    center = (index + 0.5) * scale - 0.5
    cells = jnp.arange(source, dtype=jnp.float32)
    weights = jnp.maximum(1 - jnp.abs(cells - center[..., None]) / support[..., None], 0)  # [B, length, 2, source]
    weights = weights / weights.sum(-1, keepdims=True)
    return (weights[..., 0, :, None] * weights[..., 1, None, :]).reshape(*weights.shape[:2], source * source)


class PatchProjection(nn.Module):
    """Flattened patches [B, N, p * p * 3] -> tokens [B, N, width], with `vit.PatchEmbed`'s parameters
    (kernel [p, p, 3, width], bias [width]): the same layer, fed patches instead of an image."""

    width: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, patches: jax.Array, patch_size: int) -> jax.Array:
        shape = (patch_size, patch_size, 3, self.width)
        kernel = self.param("kernel", param_with_axes(nn.initializers.lecun_normal(), None, None, None, "embed"), shape)
        bias = self.param("bias", param_with_axes(nn.initializers.zeros, "embed"), (self.width,))
        kernel = kernel.reshape(-1, self.width).astype(self.dtype)
        return dot_general(patches.astype(self.dtype), kernel, (((2,), (0,)), ((), ()))) + bias.astype(self.dtype)


class NaFlexViT(nn.Module):
    cfg: NaFlexViTConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: NaFlexImages) -> tuple[jax.Array, jax.Array]:
        """images -> (pooled (projected) features [B, embed_dim], tokens [B, N, width]: the
        normalised sequence, padding positions included)."""
        cfg, dtype, attention = self.cfg, self.runtime.compute_dtype, self.runtime.attention
        x = PatchProjection(cfg.width, dtype, name="patch_embed")(images.patches, cfg.patch_size)
        pos = self.param(
            "pos_embed",
            param_with_axes(nn.initializers.normal(0.02), None, "length", "embed"),
            (1, cfg.position_grid**2, cfg.width),
        )
        weights = resize_weights(images.grid, x.shape[1], cfg.position_grid)
        x = activations_with_axes(x + (weights @ pos[0].astype(jnp.float32)).astype(dtype))
        mask = images.mask.astype(bool)
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
        )(x, None, mask)
        x = layer_norm(cfg.ln_eps, dtype, "final_norm")(x)
        pooled = MapHead(cfg.heads, cfg.mlp_dim, cfg.act, cfg.ln_eps, dtype, attention, name="map_head")(x, mask)
        return pooled, x
