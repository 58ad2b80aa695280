"""timm's ConvStem as MobileCLIP-B's ViT (vit_base_mci_224) uses it in place of the patch embedding: non-overlapping
convolutions (kernel = stride), each but the last followed by BatchNorm and exact GELU, the last with a bias. BatchNorm
statistics live in the "batch_stats" collection, used as they are (running averages) unless the caller makes that
collection mutable."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm.models.layers import param_with_axes

BN_EPS = 1e-5  # torch's BatchNorm2d defaults, which timm's ConvStem keeps
BN_MOMENTUM = 0.1


class ConvStem(nn.Module):
    """images [B, H, W, C] -> tokens [B, h * w, widths[-1]]."""

    widths: tuple[int, ...]
    kernels: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(self.dtype)
        last = len(self.widths) - 1
        for i, (width, k) in enumerate(zip(self.widths, self.kernels)):
            x = nn.Conv(
                width,
                (k, k),
                strides=k,
                padding="VALID",
                use_bias=i == last,
                dtype=self.dtype,
                kernel_init=param_with_axes(nn.initializers.lecun_normal(), None, None, None, "embed"),
                bias_init=param_with_axes(nn.initializers.zeros, "embed"),
                name=f"conv{i}",
            )(x)
            if i < last:
                x = nn.BatchNorm(
                    use_running_average=not self.is_mutable_collection("batch_stats"),
                    momentum=1.0 - BN_MOMENTUM,
                    epsilon=BN_EPS,
                    use_fast_variance=False,
                    dtype=self.dtype,
                    scale_init=param_with_axes(nn.initializers.ones, "embed"),
                    bias_init=param_with_axes(nn.initializers.zeros, "embed"),
                    name=f"bn{i}",
                )(x)
                x = nn.gelu(x, approximate=False)
        return x.reshape(x.shape[0], -1, x.shape[-1])
