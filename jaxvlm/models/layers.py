"""Transformer building blocks shared by the vision and text towers.

Parameters carry logical axis names ("embed", "heads", "kv", "mlp", "vocab", "layers"); the
sharding code maps them to mesh axes. Attention projections keep heads as their own axis
([embed, heads, head_dim]) so tensor parallelism can split them.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm import ops

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def param_with_axes(init, *axes):
    return nn.with_logical_partitioning(init, axes)


def dense(features: int, axes: tuple, *, use_bias: bool = True, dtype=jnp.float32, name: str):
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=param_with_axes(nn.initializers.lecun_normal(), *axes),
        bias_init=param_with_axes(nn.initializers.zeros, axes[-1]),
        name=name,
    )


def layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        scale_init=param_with_axes(nn.initializers.ones, "embed"),
        bias_init=param_with_axes(nn.initializers.zeros, "embed"),
        name=name,
    )


def activations_with_axes(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Mlp(nn.Module):
    hidden: int
    act: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
        x = nn.with_logical_constraint(ACTIVATIONS[self.act](x), ("batch", "length", "mlp"))
        return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(x)


class Attention(nn.Module):
    """Multi-head attention with separate query/key/value/out projections."""

    heads: int
    causal: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_q, x_kv):
        width = x_q.shape[-1]
        head_dim = width // self.heads

        def proj(name):
            return nn.DenseGeneral(
                (self.heads, head_dim),
                dtype=self.dtype,
                kernel_init=param_with_axes(nn.initializers.lecun_normal(), "embed", "heads", "kv"),
                bias_init=param_with_axes(nn.initializers.zeros, "heads", "kv"),
                name=name,
            )

        q, k, v = proj("query")(x_q), proj("key")(x_kv), proj("value")(x_kv)
        y = ops.attention(q, k, v, causal=self.causal)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=param_with_axes(nn.initializers.lecun_normal(), "heads", "kv", "embed"),
            bias_init=param_with_axes(nn.initializers.zeros, "embed"),
            name="out",
        )(y)


class Block(nn.Module):
    """Pre-LN transformer block; returns (x, None) so it can be scanned."""

    heads: int
    mlp_dim: int
    act: str
    ln_eps: float
    causal: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, _=None):
        y = layer_norm(self.ln_eps, self.dtype, "norm1")(x)
        x = activations_with_axes(x + Attention(self.heads, self.causal, self.dtype, name="attn")(y, y))
        y = layer_norm(self.ln_eps, self.dtype, "norm2")(x)
        x = activations_with_axes(x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(y))
        return x, None


class Encoder(nn.Module):
    """``depth`` blocks as one scanned layer: parameters stacked on a leading "layers" axis."""

    depth: int
    heads: int
    mlp_dim: int
    act: str
    ln_eps: float
    causal: bool = False
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        block = Block
        if self.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        blocks = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=self.depth,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(self.heads, self.mlp_dim, self.act, self.ln_eps, self.causal, self.dtype, name="blocks")
        x, _ = blocks(x, None)
        return x


class MapHead(nn.Module):
    """Multi-head attention pooling: one learned probe attends over the tokens."""

    heads: int
    mlp_dim: int
    act: str
    ln_eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", param_with_axes(nn.initializers.xavier_uniform(), None, None, "embed"),
                           (1, 1, x.shape[-1]))
        probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = Attention(self.heads, dtype=self.dtype, name="attn")(probe, x)
        y = layer_norm(self.ln_eps, self.dtype, "norm")(x)
        x = x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(y)
        return x[:, 0]
