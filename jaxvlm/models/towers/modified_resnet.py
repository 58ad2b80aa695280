"""OpenAI's ModifiedResNet image tower (kind "modified_resnet"), the image tower of CLIP RN50 / RN101 /
RN50x4 / x16 / x64 as open_clip builds it.

A stem of three 3x3 convolutions (the first with stride 2) and a 2x2 average pool; four stages of
Bottleneck blocks (1x1, 3x3, 1x1 convolutions, 4x expansion) whose stride-2 blocks average-pool
before the last convolution and before the shortcut's 1x1 convolution (anti-aliased downsampling);
BatchNorm after every convolution, ReLU; attention pooling: the mean of the final feature map's tokens,
prepended to them, plus a learned position for every token, is the one query over all of them.

BatchNorm statistics live in the "batch_stats" collection. They are used as they are (running
averages) unless the caller makes that collection mutable (``apply(..., mutable=["batch_stats"])``):
then each batch is normalised by its own statistics and the running averages are updated. Under jit
with a batch sharded over the mesh, the batch mean is the global one (GSPMD reduces across the shards),
so the statistics are synchronised over the data axes with no extra code. (The running variance averages
the batch's biased variance; torch's BatchNorm averages the unbiased one, n / (n - 1) times larger.)
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
from jaxvlm.models.layers import dot_general, param_with_axes
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig

EXPANSION = 4  # a Bottleneck's output channels per planes
REDUCTION = 32  # image pixels per final feature-map cell


@dataclasses.dataclass(frozen=True)
class ModifiedResNetConfig(ImageTowerConfig):
    kind: ClassVar[str] = "modified_resnet"

    image_size: int
    layers: tuple[int, int, int, int]  # Bottleneck blocks per stage
    width: int  # the stem's output channels; stage i has width * 2**i planes
    heads: int  # the attention pool's (open_clip: width * 32 // head_width)
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # torch's: running = (1 - momentum) * running + momentum * batch

    def __post_init__(self) -> None:
        if not isinstance(self.layers, tuple) or len(self.layers) != 4:
            raise InputError(f"vision.layers must be 4 block counts, got {self.layers!r}")
        for i, n in enumerate(self.layers):
            check_int(f"vision.layers[{i}]", n, 1)
        check_int("vision.width", self.width, 2)
        check_int("vision.heads", self.heads, 1)
        check_int("vision.image_size", self.image_size, REDUCTION)
        if self.width % 2:
            raise InputError(f"vision.width {self.width} must be even (the stem's first convolutions have half)")
        if self.image_size % REDUCTION:
            raise InputError(f"vision.image_size {self.image_size} is not a multiple of {REDUCTION}")
        if self.features % self.heads:
            raise InputError(f"vision feature width {self.features} is not divisible by heads {self.heads}")
        if not 0 < self.bn_eps < 1 or not 0 < self.bn_momentum < 1:
            raise InputError("vision.bn_eps and vision.bn_momentum must be in (0, 1)")

    @property
    def features(self) -> int:
        """The final feature map's channels (open_clip's attention pool embed_dim)."""
        return self.width * 8 * EXPANSION

    @property
    def grid(self) -> int:
        return self.image_size // REDUCTION

    def token_width(self, embed_dim: int) -> int:
        return self.features


# He initialisation, as torchvision's ResNets (open_clip leaves the convolutions at torch's default)
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNorm(nn.Module):
    """A bias-free convolution (torch's padding, no stride: the towers pool instead, except the stem's
    first) followed by BatchNorm; ``zero_init`` starts its scale at 0 (open_clip's init of each block's last
    BatchNorm: the block starts as its shortcut)."""

    features: int
    kernel: int
    cfg: ModifiedResNetConfig
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.kernel // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=self.stride,
            padding=((pad, pad), (pad, pad)),
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
            scale_init=param_with_axes(nn.initializers.zeros if self.zero_init else nn.initializers.ones, "embed"),
            bias_init=param_with_axes(nn.initializers.zeros, "embed"),
            name="bn",
        )(x)


def avg_pool(x: jax.Array, size: int) -> jax.Array:
    return nn.avg_pool(x, (size, size), strides=(size, size)) if size > 1 else x


class Bottleneck(nn.Module):
    planes: int
    stride: int
    cfg: ModifiedResNetConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_features = self.planes * EXPANSION
        y = nn.relu(ConvNorm(self.planes, 1, self.cfg, dtype=self.dtype, name="conv1")(x))
        y = nn.relu(ConvNorm(self.planes, 3, self.cfg, dtype=self.dtype, name="conv2")(y))
        y = ConvNorm(out_features, 1, self.cfg, dtype=self.dtype, zero_init=True, name="conv3")(
            avg_pool(y, self.stride)
        )
        if self.stride > 1 or x.shape[-1] != out_features:
            x = ConvNorm(out_features, 1, self.cfg, dtype=self.dtype, name="shortcut")(avg_pool(x, self.stride))
        return nn.relu(x + y)


class AttentionPool2d(nn.Module):
    """The mean token, prepended to the tokens, attends over all of them (learned positions, q/k/v
    projections with bias); the out projection maps to ``out_features``. Weights start as open_clip's:
    normal with standard deviation width ** -0.5."""

    heads: int
    out_features: int
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        b, n, width = tokens.shape
        pos = self.param(
            "pos_embed", param_with_axes(nn.initializers.normal(width**-0.5), "length", "embed"), (n + 1, width)
        )
        x = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1) + pos.astype(tokens.dtype)

        init = nn.initializers.normal(width**-0.5)

        def proj(name):
            return nn.DenseGeneral(
                (self.heads, width // self.heads),
                dtype=self.dtype,
                dot_general=dot_general,
                kernel_init=param_with_axes(init, "embed", "heads", "kv"),
                bias_init=param_with_axes(nn.initializers.zeros, "heads", "kv"),
                name=name,
            )

        y = ops.attention(proj("query")(x[:, :1]), proj("key")(x), proj("value")(x), implementation=self.attention)
        y = nn.DenseGeneral(
            self.out_features,
            axis=(-2, -1),
            dtype=self.dtype,
            dot_general=dot_general,
            kernel_init=param_with_axes(init, "heads", "kv", "proj"),
            bias_init=param_with_axes(nn.initializers.zeros, "proj"),
            name="out",
        )(y)
        return y[:, 0]


class ModifiedResNet(nn.Module):
    cfg: ModifiedResNetConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (pooled features [B, embed_dim], the final feature map's tokens
        [B, grid * grid, width * 32])."""
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        x = images.astype(dtype)
        for i, (features, stride) in enumerate(((cfg.width // 2, 2), (cfg.width // 2, 1), (cfg.width, 1))):
            x = nn.relu(ConvNorm(features, 3, cfg, stride=stride, dtype=dtype, name=f"stem{i + 1}")(x))
        x = avg_pool(x, 2)
        for stage, blocks in enumerate(cfg.layers):
            for block in range(blocks):
                stride = 2 if stage and not block else 1
                x = Bottleneck(cfg.width * 2**stage, stride, cfg, dtype, name=f"stage{stage + 1}_block{block}")(x)
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        pooled = AttentionPool2d(cfg.heads, self.embed_dim, dtype, self.runtime.attention, name="attn_pool")(tokens)
        return pooled, tokens
