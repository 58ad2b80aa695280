"""EfficientNet image tower (kind "efficientnet"), as HF transformers' AlignVisionModel builds it: ALIGN's
EfficientNet-B7 (kakaobrain/align-base).

A stem (3x3 convolution, stride 2, the input padded by one pixel right and bottom); stages of MBConv blocks,
their channels scaled by ``width_coefficient`` (rounded to ``depth_divisor``) and their repeats by
``depth_coefficient`` (rounded up); each block: a 1x1 expansion (skipped at expand ratio 1), a depthwise
convolution, squeeze-and-excitation (reduced to ``se_ratio`` of the block's input channels), a 1x1 projection.
Every convolution but the squeeze-and-excitation's is bias-free and followed by BatchNorm; swish (SiLU) after all
but the projection. Only a stage's later blocks (stride 1, same width) add their input back. A stride-2 depthwise
convolution pads k//2 - 1 before and k//2 after (TF's "same" for even inputs) unless the block is listed in
``symmetric_padding``; stride-1 ones pad k//2 on both sides. There is no top convolution: the pooled feature is
the mean (or max) of the last block's feature map, with no projection, so embed_dim is its channel count.

BatchNorm statistics live in the "batch_stats" collection, used as they are (running averages) unless the caller
makes that collection mutable (``apply(..., mutable=["batch_stats"])``), as in `modified_resnet`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm import ops
from jaxvlm.config_base import check_choice, check_int
from jaxvlm.errors import InputError
from jaxvlm.models.layers import param_with_axes
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig

POOLS = ("mean", "max")
STAGE_FIELDS = ("kernel_sizes", "in_channels", "out_channels", "strides", "block_repeats", "expand_ratios")


class BlockSpec(NamedTuple):
    in_channels: int
    out_channels: int
    stride: int
    kernel: int
    expand_ratio: int
    residual: bool  # a stage's later blocks add their input back
    symmetric: bool  # a stride-2 depthwise convolution padded k//2 on both sides


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig(ImageTowerConfig):
    kind: ClassVar[str] = "efficientnet"

    image_size: int
    width_coefficient: float = 2.0
    depth_coefficient: float = 3.1
    depth_divisor: int = 8
    stem_channels: int = 32  # before width scaling
    kernel_sizes: tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)  # one per stage, as the next five
    in_channels: tuple[int, ...] = (32, 16, 24, 40, 80, 112, 192)
    out_channels: tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    strides: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    block_repeats: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    expand_ratios: tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    se_ratio: float = 0.25
    symmetric_padding: tuple[int, ...] = ()  # HF's depthwise_padding: block indices
    pool: str = "mean"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # torch's convention (TF's decay 0.99): running = (1 - m) * running + m * batch

    def __post_init__(self) -> None:
        check_int("vision.image_size", self.image_size, 2)
        check_int("vision.depth_divisor", self.depth_divisor, 1)
        check_int("vision.stem_channels", self.stem_channels, 1)
        check_choice("vision.pool", self.pool, POOLS)
        for name in ("width_coefficient", "depth_coefficient", "se_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise InputError(f"vision.{name} must be a positive number, got {value!r}")
        stages = len(self.kernel_sizes)
        for name in STAGE_FIELDS:
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != stages or not stages:
                raise InputError(f"vision.{name} must list one value per stage ({stages}), got {values!r}")
            for i, value in enumerate(values):
                check_int(f"vision.{name}[{i}]", value, 1)
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise InputError(f"vision.kernel_sizes must be odd, got {self.kernel_sizes}")
        if any(s not in (1, 2) for s in self.strides):
            raise InputError(f"vision.strides must be 1 or 2, got {self.strides}")
        if not isinstance(self.symmetric_padding, tuple):
            raise InputError(
                f"vision.symmetric_padding must be a tuple of block indices, got {self.symmetric_padding!r}"
            )
        if not 0 < self.bn_eps < 1 or not 0 < self.bn_momentum < 1:
            raise InputError("vision.bn_eps and vision.bn_momentum must be in (0, 1)")

    def round_channels(self, channels: int) -> int:
        """``channels`` times the width coefficient, to a multiple of depth_divisor, never 10% below."""
        divisor, scaled = self.depth_divisor, channels * self.width_coefficient
        rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
        return int(rounded + divisor if rounded < 0.9 * scaled else rounded)

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        specs = []
        for kernel, c_in, c_out, stride, repeats, expand in zip(*(getattr(self, f) for f in STAGE_FIELDS)):
            c_in, c_out = self.round_channels(c_in), self.round_channels(c_out)
            for j in range(math.ceil(self.depth_coefficient * repeats)):
                specs.append(
                    BlockSpec(
                        c_out if j else c_in,
                        c_out,
                        1 if j else stride,
                        kernel,
                        expand,
                        j > 0,
                        len(specs) in self.symmetric_padding,
                    )
                )
        return tuple(specs)

    @property
    def features(self) -> int:
        return self.round_channels(self.out_channels[-1])

    def check(self, embed_dim: int) -> None:
        if embed_dim != self.features:
            raise InputError(
                f"embed_dim {embed_dim} is not the efficientnet tower's final width {self.features} "
                "(it has no projection)"
            )

    def token_width(self, embed_dim: int) -> int:
        return self.features


# He initialisation (fan out), as the EfficientNet papers' convolutions
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNorm(nn.Module):
    """A bias-free convolution (``groups`` = its input channels: depthwise) and BatchNorm."""

    features: int
    kernel: int
    cfg: EfficientNetConfig
    stride: int = 1
    padding: tuple = ((0, 0), (0, 0))
    depthwise: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=self.stride,
            padding=self.padding,
            feature_group_count=x.shape[-1] if self.depthwise else 1,
            conv_general_dilated=ops.depthwise_conv,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=param_with_axes(CONV_INIT, None, None, None, "embed"),
            name="conv",
        )(x)
        return nn.BatchNorm(
            use_running_average=not self.is_mutable_collection("batch_stats"),
            momentum=1.0 - self.cfg.bn_momentum,
            epsilon=self.cfg.bn_eps,
            use_fast_variance=False,
            dtype=self.dtype,
            scale_init=param_with_axes(nn.initializers.ones, "embed"),
            bias_init=param_with_axes(nn.initializers.zeros, "embed"),
            name="bn",
        )(x)


class SqueezeExcite(nn.Module):
    """The feature map times sigmoid(expand(swish(reduce(its spatial mean)))): two dense layers with bias."""

    reduced: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def dense(features, name):
            return nn.Dense(
                features,
                dtype=self.dtype,
                kernel_init=param_with_axes(nn.initializers.lecun_normal(), None, "embed"),
                bias_init=param_with_axes(nn.initializers.zeros, "embed"),
                name=name,
            )

        s = nn.silu(dense(self.reduced, "reduce")(x.mean(axis=(1, 2))))
        s = nn.sigmoid(dense(x.shape[-1], "expand")(s))
        return x * s[:, None, None, :]


class MBConv(nn.Module):
    spec: BlockSpec
    cfg: EfficientNetConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spec, cfg, dtype = self.spec, self.cfg, self.dtype
        y = x
        if spec.expand_ratio != 1:
            y = nn.silu(ConvNorm(spec.in_channels * spec.expand_ratio, 1, cfg, dtype=dtype, name="expand")(y))
        half = spec.kernel // 2
        before = half - 1 if spec.stride == 2 and not spec.symmetric else half
        y = ConvNorm(
            y.shape[-1],
            spec.kernel,
            cfg,
            stride=spec.stride,
            padding=((before, half), (before, half)),
            depthwise=True,
            dtype=dtype,
            name="depthwise",
        )(y)
        y = nn.silu(y)
        y = SqueezeExcite(max(1, int(spec.in_channels * cfg.se_ratio)), dtype, name="se")(y)
        y = ConvNorm(spec.out_channels, 1, cfg, dtype=dtype, name="project")(y)
        return x + y if spec.residual else y


class EfficientNet(nn.Module):
    cfg: EfficientNetConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (pooled features [B, embed_dim], the last feature map's tokens
        [B, h * w, embed_dim])."""
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        x = images.astype(dtype)
        stem = cfg.round_channels(cfg.stem_channels)
        x = nn.silu(ConvNorm(stem, 3, cfg, stride=2, padding=((0, 1), (0, 1)), dtype=dtype, name="stem")(x))
        for i, spec in enumerate(cfg.blocks):
            x = MBConv(spec, cfg, dtype, name=f"block{i}")(x)
        pooled = x.mean(axis=(1, 2)) if cfg.pool == "mean" else x.max(axis=(1, 2))
        return pooled, x.reshape(x.shape[0], -1, x.shape[-1])
