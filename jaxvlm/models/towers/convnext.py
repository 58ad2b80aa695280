"""ConvNeXt image tower (kind "convnext"): timm's ConvNeXt as open_clip's TimmModel wraps it (open_clip's
convnext_* models).

A stride-``patch_size`` convolution stem and LayerNorm, then four stages at halving resolutions, each but the
first opening with a LayerNorm and a stride-2, 2 x 2 convolution. A block is a depthwise convolution, a
LayerNorm over channels, an MLP, a per-channel layer scale and a residual. timm's head averages the final
feature map and normalises the average; open_clip's head projects it, linearly or through an MLP.
Activations stay NHWC; returns the pooled feature and the final feature map, unnormalised (timm's
forward_features), flattened to tokens.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm import ops
from jaxvlm.config_base import check_choice, check_int
from jaxvlm.errors import InputError
from jaxvlm.models.layers import ACTIVATIONS, Mlp, dense, layer_norm, param_with_axes, scan_layers
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig
from jaxvlm.models.towers.vit import PatchEmbed

HEADS = ("linear", "mlp")  # open_clip's timm_proj


@dataclasses.dataclass(frozen=True)
class ConvNeXtConfig(ImageTowerConfig):
    kind: ClassVar[str] = "convnext"

    image_size: int
    depths: tuple[int, ...]  # blocks per stage
    dims: tuple[int, ...]  # channels per stage
    patch_size: int = 4  # the stem's stride and kernel
    kernel_size: int = 7  # the depthwise convolutions'
    mlp_ratio: int = 4
    act: str = "gelu"
    ln_eps: float = 1e-6
    layer_scale: bool = True  # timm's gamma (ls_init_value 1e-6)
    head: str = "linear"  # "mlp": fc1 (2 x embed_dim wide, with bias), GELU, fc2
    proj_bias: bool = False

    def __post_init__(self) -> None:
        check_choice("vision.head", self.head, HEADS)
        check_choice("vision.act", self.act, tuple(ACTIVATIONS))
        for name in ("patch_size", "kernel_size", "mlp_ratio"):
            check_int(f"vision.{name}", getattr(self, name), 1)
        if not isinstance(self.depths, tuple) or not isinstance(self.dims, tuple):
            raise InputError("vision.depths and vision.dims must be lists")
        if len(self.depths) != len(self.dims) or not self.depths:
            raise InputError(f"vision.depths {list(self.depths)} and vision.dims {list(self.dims)} differ in length")
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            check_int(f"vision.depths[{i}]", depth, 1)
            check_int(f"vision.dims[{i}]", dim, 1)
        if self.kernel_size % 2 == 0:
            raise InputError(f"vision.kernel_size {self.kernel_size} must be odd (timm pads it symmetrically)")
        if self.image_size < self.reduction:
            raise InputError(f"vision.image_size {self.image_size} is smaller than the tower's stride {self.reduction}")

    @property
    def reduction(self) -> int:
        """How many pixels one position of the final feature map spans."""
        return self.patch_size * 2 ** (len(self.dims) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.reduction

    def token_width(self, embed_dim: int) -> int:
        return self.dims[-1]


class Block(nn.Module):
    """timm's ConvNeXtBlock: depthwise conv, LN, MLP, layer scale, residual. x [B, H, W, C] -> (x, None)."""

    cfg: ConvNeXtConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, None]:
        cfg, (b, h, w, c) = self.cfg, x.shape
        k = cfg.kernel_size
        y = nn.Conv(
            c,
            (k, k),
            padding=k // 2,
            feature_group_count=c,
            conv_general_dilated=ops.depthwise_conv,
            dtype=self.dtype,
            kernel_init=param_with_axes(nn.initializers.lecun_normal(), None, None, None, "embed"),
            bias_init=param_with_axes(nn.initializers.zeros, "embed"),
            name="conv_dw",
        )(x)
        y = nn.with_logical_constraint(y, ("batch", None, None, "embed"))
        y = layer_norm(cfg.ln_eps, self.dtype, "norm")(y.reshape(b, h * w, c))
        y = Mlp(cfg.mlp_ratio * c, cfg.act, self.dtype, name="mlp")(y)
        if cfg.layer_scale:
            gamma = self.param("gamma", param_with_axes(nn.initializers.constant(1e-6), "embed"), (c,))
            y = y * gamma.astype(y.dtype)
        return x + y.reshape(b, h, w, c), None


class ConvNeXt(nn.Module):
    cfg: ConvNeXtConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (pooled projected features [B, embed_dim], the final feature map
        [B, (H / reduction) * (W / reduction), dims[-1]])."""
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        b, h, w, _ = images.shape
        x = PatchEmbed(cfg.patch_size, cfg.dims[0], True, dtype, name="stem")(images)
        x = layer_norm(cfg.ln_eps, dtype, "stem_norm")(x)
        x = x.reshape(b, h // cfg.patch_size, w // cfg.patch_size, cfg.dims[0])
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            if i:  # LN, then the 2 x 2 stride-2 convolution (a patch embedding of the normalised map)
                x = layer_norm(cfg.ln_eps, dtype, f"downsample_norm_{i}")(x)
                rows, cols = x.shape[1] // 2, x.shape[2] // 2
                x = PatchEmbed(2, dim, True, dtype, name=f"downsample_{i}")(x).reshape(b, rows, cols, dim)
            x = nn.with_logical_constraint(x, ("batch", None, None, "embed"))
            x, _ = scan_layers(Block, depth, self.runtime.remat, in_axes=())(cfg, dtype, name=f"stage_{i}")(x)
        tokens = x.reshape(b, -1, x.shape[-1])
        pooled = layer_norm(cfg.ln_eps, dtype, "head_norm")(tokens.mean(axis=1, dtype=jnp.float32).astype(x.dtype))
        if cfg.head == "linear":
            return dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name="proj")(
                pooled
            ), tokens
        # open_clip's head MLP: timm's Mlp with torch's exact GELU, whatever the trunk uses
        hidden = dense(2 * self.embed_dim, ("embed", "mlp"), dtype=dtype, name="head_fc1")(pooled)
        hidden = ACTIVATIONS["gelu"](hidden.astype(jnp.float32)).astype(hidden.dtype)
        pooled = dense(self.embed_dim, ("mlp", "proj"), use_bias=cfg.proj_bias, dtype=dtype, name="head_fc2")(hidden)
        return pooled, tokens
