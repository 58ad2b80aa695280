"""FastViT image tower (kind "fastvit"): timm's FastVit MCi trunks (fastvit_mci0..mci4) as open_clip's TimmModel
wraps them for MobileCLIP-S1/S2 and MobileCLIP2-S0..S4 (timm_pool "avg", no projection: timm's classifier head,
with bias, maps the pooled feature to embed_dim).

A stem of three MobileOne blocks (3x3 stride 2, depthwise 3x3 stride 2, 1x1); stages of RepMixer blocks
(depthwise token mixing) or attention blocks (BatchNorm or LayerNorm, 32-wide heads), each block with a
convolutional MLP (depthwise 7x7 + BatchNorm, 1x1, GELU, 1x1) and layer scales; stages open with a
large-kernel (7x7 stride 2 + 3x3 branch, squeeze-excite, GELU) patch embedding and may add a conditional
positional encoding (depthwise 7x7 plus the identity); a final MobileOne block (depthwise, channel multiplier
``cls_ratio``, squeeze-excite), an average and the head.

Two forms of the same function, chosen by ``reparameterized``: the multi-branch training form (MobileOne's
kxk, 1x1 and identity branches each with BatchNorm; RepMixer's mixer minus norm under its layer scale; the
positional encoding's skip) and the folded inference form (one convolution with bias for each), which
`reparameterize` computes from the first as timm's ``reparameterize_model`` does; the BatchNorms timm leaves
(the MLPs' and attention blocks') stay in both. BatchNorm statistics live in the "batch_stats" collection,
used as they are (running averages) unless the caller makes that collection mutable (see `modified_resnet`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import ops
from jaxvlm.config_base import check_choice, check_int
from jaxvlm.errors import InputError
from jaxvlm.models.layers import REMAT_POLICIES, dense, param_with_axes
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.base import ImageTowerConfig

if TYPE_CHECKING:
    from jaxvlm.models.config import ModelConfig

TOKEN_MIXERS = ("repmixer", "attention")
ATTENTION_NORMS = ("batch_norm", "layer_norm")  # timm's BatchNorm2d, or LayerNorm2d (eps 1e-5) for mci3 / mci4
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_divisible(v: float, divisor: int) -> int:
    """timm's squeeze-excite width rounding (round_limit 0: to the nearest multiple, at least ``divisor``)."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


@dataclasses.dataclass(frozen=True)
class FastViTConfig(ImageTowerConfig):
    kind: ClassVar[str] = "fastvit"

    image_size: int
    layers: tuple[int, ...]  # blocks per stage
    dims: tuple[int, ...]  # channels per stage
    mlp_ratios: tuple[float, ...]
    token_mixers: tuple[str, ...]  # per stage: "repmixer" or "attention"
    pos_embs: tuple[bool, ...]  # per stage: a conditional positional encoding after the downsampling
    downsamples: tuple[bool, ...]  # per stage: a patch embedding (also wherever the width changes)
    se_downsamples: tuple[bool, ...]  # per stage: squeeze-excite in the patch embedding's large-kernel conv
    lkc_use_act: bool = True  # GELU after the large-kernel conv
    stem_scale_branch: bool = True  # the stem's 1x1 branches (mci3 / mci4 have none)
    attention_norm: str = "batch_norm"
    head_dim: int = 32
    repmixer_kernel: int = 3
    down_kernel: int = 7
    pos_kernel: int = 7
    cls_ratio: float = 2.0  # the final conv's channels per input channel
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # torch's: running = (1 - momentum) * running + momentum * batch
    reparameterized: bool = False  # the folded inference form

    def __post_init__(self) -> None:
        n = len(self.layers) if isinstance(self.layers, tuple) else 0
        for name in ("layers", "dims", "mlp_ratios", "token_mixers", "pos_embs", "downsamples", "se_downsamples"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != n or not n:
                raise InputError(f"vision.{name} must be a list of one entry per stage ({n or 'at least 1'})")
        for i, (depth, dim, mixer) in enumerate(zip(self.layers, self.dims, self.token_mixers)):
            check_int(f"vision.layers[{i}]", depth, 1)
            check_int(f"vision.dims[{i}]", dim, 1)
            check_choice(f"vision.token_mixers[{i}]", mixer, TOKEN_MIXERS)
            if mixer == "attention" and dim % self.head_dim:
                raise InputError(f"vision.dims[{i}] {dim} is not a multiple of head_dim {self.head_dim}")
            if i and self.dims[i] % self.dims[i - 1] and self.downsample(i):
                raise InputError(f"vision.dims[{i}] {dim} is not a multiple of vision.dims[{i - 1}] (grouped conv)")
        check_choice("vision.attention_norm", self.attention_norm, ATTENTION_NORMS)
        for name in ("head_dim", "repmixer_kernel", "down_kernel", "pos_kernel"):
            check_int(f"vision.{name}", getattr(self, name), 1)
        for name in ("repmixer_kernel", "down_kernel", "pos_kernel"):
            if getattr(self, name) % 2 == 0:
                raise InputError(f"vision.{name} {getattr(self, name)} must be odd (timm pads it symmetrically)")
        if self.down_kernel < 3:
            raise InputError(f"vision.down_kernel {self.down_kernel} must hold the 3x3 branch folded into it")
        if not self.features or self.features % self.dims[-1]:
            raise InputError(f"vision.cls_ratio {self.cls_ratio} must make a positive multiple of {self.dims[-1]}")
        if self.image_size < self.reduction:
            raise InputError(f"vision.image_size {self.image_size} is smaller than the tower's stride {self.reduction}")
        if not 0 < self.bn_eps < 1 or not 0 < self.bn_momentum < 1:
            raise InputError("vision.bn_eps and vision.bn_momentum must be in (0, 1)")

    def downsample(self, i: int) -> bool:
        return bool(self.downsamples[i]) or (i > 0 and self.dims[i] != self.dims[i - 1])

    @property
    def reduction(self) -> int:
        return 4 * 2 ** sum(self.downsample(i) for i in range(len(self.dims)))

    @property
    def features(self) -> int:
        return int(self.dims[-1] * self.cls_ratio)

    def token_width(self, embed_dim: int) -> int:
        return self.features


def conv(features: int, k: int, stride: int, groups: int, bias: bool, dtype: jnp.dtype, name: str) -> nn.Conv:
    """A Conv2d with timm's default (symmetric) padding."""
    pad = (stride - 1 + k - 1) // 2
    return nn.Conv(
        features,
        (k, k),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        conv_general_dilated=ops.depthwise_conv,
        use_bias=bias,
        dtype=dtype,
        # grouped kernels are small and SPMD reshards activations around a split one: replicated
        kernel_init=param_with_axes(CONV_INIT, None, None, None, "embed" if groups == 1 else None),
        bias_init=param_with_axes(nn.initializers.zeros, "embed"),
        name=name,
    )


def batch_norm(module: nn.Module, cfg: FastViTConfig, dtype: jnp.dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not module.is_mutable_collection("batch_stats"),
        momentum=1.0 - cfg.bn_momentum,
        epsilon=cfg.bn_eps,
        use_fast_variance=False,
        dtype=dtype,
        scale_init=param_with_axes(nn.initializers.ones, "embed"),
        bias_init=param_with_axes(nn.initializers.zeros, "embed"),
        name=name,
    )


def gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=False)


class ConvNorm(nn.Module):
    """A bias-free convolution and its BatchNorm (timm's ConvNormAct without activation)."""

    features: int
    kernel: int
    stride: int
    groups: int
    cfg: FastViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(self.features, self.kernel, self.stride, self.groups, False, self.dtype, "conv")(x)
        return batch_norm(self, self.cfg, self.dtype, "bn")(x)


class SqueezeExcite(nn.Module):
    reduced: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.mean(axis=(1, 2), keepdims=True)
        s = nn.relu(dense(self.reduced, ("embed", "mlp"), dtype=self.dtype, name="fc1")(s))
        s = dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="fc2")(s)
        return x * nn.sigmoid(s)


class MobileOne(nn.Module):
    """timm's MobileOneBlock: kxk conv branches, a 1x1 ("scale") branch and an identity BatchNorm (when the shape
    is kept), summed; folded, one kxk conv with bias. Then squeeze-excite (``se`` reduced channels, 0: none) and
    GELU (``act``)."""

    features: int
    kernel: int
    cfg: FastViTConfig
    stride: int = 1
    depthwise: bool = False  # one group per input channel (timm's group_size 1)
    act: bool = True
    scale_branch: bool = True
    conv_branches: int = 1
    se: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, k, s = self.cfg, self.kernel, self.stride
        groups = x.shape[-1] if self.depthwise else 1
        if cfg.reparameterized:
            y = conv(self.features, k, s, groups, True, self.dtype, "reparam_conv")(x)
        else:
            y = 0.0
            if x.shape[-1] == self.features and s == 1:
                y = batch_norm(self, cfg, self.dtype, "identity")(x)
            if k > 1 and self.scale_branch:
                y = y + ConvNorm(self.features, 1, s, groups, cfg, self.dtype, name="conv_scale")(x)
            for j in range(self.conv_branches):
                y = y + ConvNorm(self.features, k, s, groups, cfg, self.dtype, name=f"conv_kxk_{j}")(x)
        if self.se:
            y = SqueezeExcite(self.se, self.dtype, name="se")(y)
        return gelu(y) if self.act else y


class PatchEmbed(nn.Module):
    """A stage's downsampling: timm's ReparamLargeKernelConv (depthwise-grouped kxk stride 2 plus a 3x3 branch,
    each with BatchNorm), optional squeeze-excite and GELU, then a 1x1 MobileOne block."""

    features: int
    se: bool
    cfg: FastViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, c, k = self.cfg, self.features, self.cfg.down_kernel
        groups = x.shape[-1]
        if cfg.reparameterized:
            y = conv(c, k, 2, groups, True, self.dtype, "reparam_conv")(x)
        else:
            y = ConvNorm(c, k, 2, groups, cfg, self.dtype, name="large_conv")(x)
            y = y + ConvNorm(c, 3, 2, groups, cfg, self.dtype, name="small_conv")(x)
        if self.se:
            y = SqueezeExcite(make_divisible(c * 0.25, 8), self.dtype, name="se")(y)
        if cfg.lkc_use_act:
            y = gelu(y)
        return MobileOne(c, 1, cfg, dtype=self.dtype, name="pointwise")(y)


def layer_scale(module: nn.Module, name: str, c: int) -> jax.Array:
    return module.param(name, param_with_axes(nn.initializers.constant(1e-5), "embed"), (c,))


class ConvMlp(nn.Module):
    hidden: int
    cfg: FastViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        y = ConvNorm(c, 7, 1, c, self.cfg, self.dtype, name="conv")(x)
        y = gelu(dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1")(y))
        return dense(c, ("mlp", "embed"), dtype=self.dtype, name="fc2")(y)


class Block(nn.Module):
    """A RepMixer block (x + scale * (mixer(x) - norm(x)), folded: one depthwise conv) or an attention block
    (pre-norm multi-head attention), each followed by a layer-scaled ConvMlp. x [B, H, W, C] -> (x, None)."""

    mixer: str
    mlp_ratio: float
    cfg: FastViTConfig
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, None]:
        cfg, (b, h, w, c) = self.cfg, x.shape
        x = nn.with_logical_constraint(x, ("batch", None, None, "embed"))
        if self.mixer == "repmixer":
            k = cfg.repmixer_kernel
            if cfg.reparameterized:
                x = conv(c, k, 1, c, True, self.dtype, "token_mixer_reparam_conv")(x)
            else:
                mixed = MobileOne(c, k, cfg, depthwise=True, act=False, dtype=self.dtype, name="token_mixer")(x)
                normed = MobileOne(
                    c, k, cfg, depthwise=True, act=False, scale_branch=False, conv_branches=0, dtype=self.dtype,
                    name="token_mixer_norm",
                )(x)  # fmt: skip
                x = x + layer_scale(self, "token_mixer_layer_scale", c).astype(x.dtype) * (mixed - normed)
        else:
            if cfg.attention_norm == "batch_norm":
                y = batch_norm(self, cfg, self.dtype, "norm")(x)
            else:
                y = nn.LayerNorm(
                    epsilon=1e-5,
                    dtype=self.dtype,
                    scale_init=param_with_axes(nn.initializers.ones, "embed"),
                    bias_init=param_with_axes(nn.initializers.zeros, "embed"),
                    name="norm",
                )(x)
            y = y.reshape(b, h * w, c)
            heads = c // cfg.head_dim

            def proj(name: str) -> jax.Array:
                return nn.DenseGeneral(
                    (heads, cfg.head_dim),
                    use_bias=False,
                    dtype=self.dtype,
                    kernel_init=param_with_axes(nn.initializers.lecun_normal(), "embed", "heads", "kv"),
                    name=name,
                )(y)

            y = ops.attention(proj("query"), proj("key"), proj("value"), implementation=self.attention)
            y = nn.DenseGeneral(
                c,
                axis=(-2, -1),
                dtype=self.dtype,
                kernel_init=param_with_axes(nn.initializers.lecun_normal(), "heads", "kv", "embed"),
                bias_init=param_with_axes(nn.initializers.zeros, "embed"),
                name="out",
            )(y)
            x = x + layer_scale(self, "attn_layer_scale", c).astype(x.dtype) * y.reshape(b, h, w, c)
        y = ConvMlp(int(c * self.mlp_ratio), cfg, self.dtype, name="mlp")(x)
        return x + layer_scale(self, "mlp_layer_scale", c).astype(x.dtype) * y, None


def scan_blocks(depth: int, remat: str) -> type[nn.Module]:
    """``depth`` Blocks as one scanned module: parameters and BatchNorm statistics stacked on a "layers" axis."""
    layer = nn.remat(Block, policy=REMAT_POLICIES[remat], prevent_cse=False) if remat != "none" else Block
    return nn.scan(
        layer,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        in_axes=(),
        length=depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


class FastViT(nn.Module):
    cfg: FastViTConfig
    embed_dim: int
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, 3] -> (head output [B, embed_dim], the final conv's feature map
        [B, (H / reduction) * (W / reduction), features])."""
        cfg, dtype = self.cfg, self.runtime.compute_dtype
        x = images.astype(dtype)
        d0, scale = cfg.dims[0], cfg.stem_scale_branch
        x = MobileOne(d0, 3, cfg, stride=2, scale_branch=scale, dtype=dtype, name="stem_0")(x)
        x = MobileOne(d0, 3, cfg, stride=2, depthwise=True, scale_branch=scale, dtype=dtype, name="stem_1")(x)
        x = MobileOne(d0, 1, cfg, dtype=dtype, name="stem_2")(x)
        for i, (depth, dim) in enumerate(zip(cfg.layers, cfg.dims)):
            if cfg.downsample(i):
                x = PatchEmbed(dim, cfg.se_downsamples[i], cfg, dtype, name=f"downsample_{i}")(x)
            if cfg.pos_embs[i]:
                k = cfg.pos_kernel
                form = "reparam_conv" if cfg.reparameterized else "pos_enc"
                pos = conv(dim, k, 1, dim, True, dtype, f"pos_emb_{i}_{form}")
                x = pos(x) if cfg.reparameterized else x + pos(x)
            blocks = scan_blocks(depth, self.runtime.remat)
            mixer, ratio = cfg.token_mixers[i], cfg.mlp_ratios[i]
            x, _ = blocks(mixer, ratio, cfg, dtype, self.runtime.attention, name=f"stage_{i}")(x)
        f = cfg.features
        x = MobileOne(f, 3, cfg, depthwise=True, se=make_divisible(f / 16, 1), dtype=dtype, name="final_conv")(x)
        tokens = x.reshape(x.shape[0], -1, f)
        pooled = tokens.mean(axis=1, dtype=jnp.float32).astype(dtype)
        return dense(self.embed_dim, ("embed", "proj"), dtype=dtype, name="head")(pooled), tokens


# Re-parameterisation: pure functions on the (unboxed, numpy or jax) variable trees of the image tower.


def _fuse(kernel, bn: dict, stats: dict, eps: float):
    """conv kernel [..., kh, kw, in, out] and the BatchNorm after it -> (kernel, bias)."""
    t = bn["scale"] / jnp.sqrt(stats["var"] + eps)
    return kernel * t[..., None, None, None, :], bn["bias"] - stats["mean"] * t


def _pad_to(kernel, k: int):
    pad = (k - kernel.shape[-4]) // 2
    widths = [(0, 0)] * (kernel.ndim - 4) + [(pad, pad), (pad, pad), (0, 0), (0, 0)]
    return jnp.pad(kernel, widths)


def _identity(shape: tuple) -> jax.Array:
    """The kernel [..., k, k, in / groups, out] of the identity map (out == in)."""
    *lead, k, _, per_group, out = shape
    eye = np.zeros((k, k, per_group, out), np.float32)
    eye[k // 2, k // 2, np.arange(out) % per_group, np.arange(out)] = 1.0
    return jnp.broadcast_to(jnp.asarray(eye), shape)


def _fold_mobileone(p: dict, s: dict, eps: float, k: int, per_group: int, features: int) -> dict:
    """A MobileOne block's branches -> {"reparam_conv": {kernel, bias}} (se, if any, kept)."""
    kernel, bias = 0.0, 0.0
    for name in sorted(n for n in p if n.startswith("conv_kxk_")) + (["conv_scale"] if "conv_scale" in p else []):
        kk, bb = _fuse(p[name]["conv"]["kernel"], p[name]["bn"], s[name]["bn"], eps)
        kernel, bias = kernel + _pad_to(kk, k), bias + bb
    if "identity" in p:
        lead = p["identity"]["scale"].shape[:-1]
        kk, bb = _fuse(_identity((*lead, k, k, per_group, features)), p["identity"], s["identity"], eps)
        kernel, bias = kernel + kk, bias + bb
    folded = {"reparam_conv": {"kernel": kernel, "bias": bias}}
    return {**folded, **({"se": p["se"]} if "se" in p else {})}


def reparameterize(cfg: FastViTConfig, params: dict, batch_stats: dict) -> tuple[FastViTConfig, dict, dict]:
    """The multi-branch tower's variables -> (the folded config, parameters, BatchNorm statistics), computing
    the same function (timm's reparameterize_model: the MLPs' and attention norms' BatchNorms stay)."""
    if cfg.reparameterized:
        return cfg, params, batch_stats
    eps, p, s = cfg.bn_eps, dict(params), dict(batch_stats)
    d0 = cfg.dims[0]
    for name, k, per_group, c in (("stem_0", 3, 3, d0), ("stem_1", 3, 1, d0), ("stem_2", 1, d0, d0)):
        p[name] = _fold_mobileone(p[name], s.pop(name), eps, k, per_group, c)
    f = cfg.features
    p["final_conv"] = _fold_mobileone(p["final_conv"], s.pop("final_conv"), eps, 3, 1, f)
    for i, dim in enumerate(cfg.dims):
        if cfg.downsample(i):
            name = f"downsample_{i}"
            dp, ds = dict(p[name]), dict(s.pop(name))
            large, small = dp.pop("large_conv"), dp.pop("small_conv")
            kernel, bias = _fuse(large["conv"]["kernel"], large["bn"], ds["large_conv"]["bn"], eps)
            kk, bb = _fuse(small["conv"]["kernel"], small["bn"], ds["small_conv"]["bn"], eps)
            dp["reparam_conv"] = {"kernel": kernel + _pad_to(kk, cfg.down_kernel), "bias": bias + bb}
            dp["pointwise"] = _fold_mobileone(dp["pointwise"], ds["pointwise"], eps, 1, dim, dim)
            p[name] = dp
        if cfg.pos_embs[i]:
            pos = p.pop(f"pos_emb_{i}_pos_enc")
            kernel = pos["kernel"] + _identity(pos["kernel"].shape)
            p[f"pos_emb_{i}_reparam_conv"] = {"kernel": kernel, "bias": pos["bias"]}
        if cfg.token_mixers[i] == "repmixer":
            bp, bs = dict(p[f"stage_{i}"]), dict(s[f"stage_{i}"])
            k = cfg.repmixer_kernel
            mixer = _fold_mobileone(bp.pop("token_mixer"), bs.pop("token_mixer"), eps, k, 1, dim)["reparam_conv"]
            norm = _fold_mobileone(bp.pop("token_mixer_norm"), bs.pop("token_mixer_norm"), eps, k, 1, dim)
            norm = norm["reparam_conv"]
            gamma = bp.pop("token_mixer_layer_scale")
            ident = _identity(mixer["kernel"].shape)
            bp["token_mixer_reparam_conv"] = {
                "kernel": ident + gamma[..., None, None, None, :] * (mixer["kernel"] - norm["kernel"]),
                "bias": gamma * (mixer["bias"] - norm["bias"]),
            }
            p[f"stage_{i}"], s[f"stage_{i}"] = bp, bs
    return dataclasses.replace(cfg, reparameterized=True), p, s


def _mci(layers: tuple, dims: tuple, mlp_ratio: float, large: bool) -> FastViTConfig:
    """timm's fastvit_mci* arguments (at open_clip's MobileCLIP image size): four stages, the last attention with a
    positional encoding, squeeze-excite in the last two downsamplings; the five-stage mci3 / mci4 attend in the last
    two with LayerNorm, downsample without squeeze-excite and have no 1x1 stem branches."""
    n = len(layers)
    return FastViTConfig(
        image_size=256,
        layers=layers,
        dims=dims,
        mlp_ratios=(float(mlp_ratio),) * n,
        token_mixers=("repmixer",) * 3 + ("attention",) * (n - 3),
        pos_embs=(False,) * 3 + (True,) * (n - 3),
        downsamples=(False,) + (True,) * (n - 1),
        se_downsamples=(False,) * n if large else (False, False, True, True),
        attention_norm="layer_norm" if large else "batch_norm",
        stem_scale_branch=not large,
    )


MCI: dict[str, FastViTConfig] = {
    "fastvit_mci0": _mci((2, 6, 10, 2), (64, 128, 256, 512), 3, False),
    "fastvit_mci1": _mci((4, 12, 20, 4), (64, 128, 256, 512), 3, False),
    "fastvit_mci2": _mci((4, 12, 24, 4), (80, 160, 320, 640), 3, False),
    "fastvit_mci3": _mci((2, 12, 24, 4, 2), (96, 192, 384, 768, 1536), 4, True),
    "fastvit_mci4": _mci((2, 12, 24, 4, 4), (128, 256, 512, 1024, 2048), 4, True),
}


def reparameterize_model(config: ModelConfig, params: dict, batch_stats: dict) -> tuple[ModelConfig, dict, dict]:
    """A two-tower model's (config, params, batch_stats) with a multi-branch FastViT image tower folded
    (`reparameterize` on the "img" variables); any other model comes back as it is."""
    if config.vision.kind != FastViTConfig.kind or config.vision.reparameterized:
        return config, params, batch_stats
    vision, img, img_stats = reparameterize(config.vision, params["img"], batch_stats["img"])
    stats = {**batch_stats, "img": img_stats}
    return config.replace(vision=vision), {**params, "img": img}, stats
