"""Transformer building blocks shared by the vision and text towers.

Parameters carry logical axis names ("embed", "heads", "kv", "mlp", "vocab", "layers"); the
sharding code maps them to mesh axes. Attention projections keep heads as their own axis
([embed, heads, head_dim]) so tensor parallelism can split them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxvlm import ops


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU in torch's form, x/2 (1 + erf(x / sqrt 2)): XLA evaluates erf as one polynomial,
    erfc (`jax.nn.gelu`'s form) as two branches and an exp, twice the work."""
    return x * 0.5 * (1 + jax.lax.erf(x * (0.5**0.5)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,  # NLLB's encoder
}

# `dot_general`'s products are custom-VJP calls, which the dot policies do not see: they are named
_NAMED_PRODUCTS = jax.checkpoint_policies.save_only_these_names("dense_product")
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_from_both_policies(jax.checkpoint_policies.checkpoint_dots, _NAMED_PRODUCTS),
    "dots_no_batch": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims, _NAMED_PRODUCTS
    ),
}


def param_with_axes(init: Callable[..., jax.Array], *axes: str | None) -> Callable[..., nn.Partitioned]:
    """``init`` whose output carries logical axis names. rules=() keeps flax from constraining the
    initialiser's output under a mesh: DenseGeneral initialises a flattened kernel and would
    constrain it by the unflattened names (google/flax#3676); shardings come from the names."""
    return nn.with_logical_partitioning(init, axes, rules=())


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: tuple,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """The product of a Dense layer (no batch axes): `lax.dot_general` accumulating in float32 and
    rounding the result once to the inputs' dtype; its derivative's products the same.

    For bfloat16 that is what every backend computes anyway, but XLA:CPU takes its fast path
    (AMX / AVX512-BF16) only for a float32 result: asking for bf16 out is several times slower.
    """
    contract, batch = dimension_numbers
    if precision is not None or preferred_element_type is not None or kwargs or any(batch):
        raise ValueError(
            "layers.dot_general: batch axes, precision, preferred_element_type and other options are not supported"
        )
    return checkpoint_name(_rounded_dot(lhs, rhs, tuple(map(tuple, contract))), "dense_product")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _rounded_dot(lhs, rhs, contract):
    out = jax.lax.dot_general(lhs, rhs, (contract, ((), ())), preferred_element_type=jnp.float32)
    return out.astype(jnp.result_type(lhs, rhs))


def _rounded_dot_forward(lhs, rhs, contract):
    return _rounded_dot(lhs, rhs, contract), (lhs, rhs)


def _rounded_dot_backward(contract, residuals, cotangent):
    """Both gradients as products of the same kind, the cotangent in the inputs' dtype.
    Differentiating the float32-result product itself would give its transposes a float32
    cotangent and XLA would multiply in float32: the backward pass of a bfloat16 model at a
    fraction of the speed on CPU and GPU."""
    lhs, rhs = residuals
    lhs_contract, rhs_contract = contract
    lhs_free = tuple(d for d in range(lhs.ndim) if d not in lhs_contract)
    rhs_free = tuple(d for d in range(rhs.ndim) if d not in rhs_contract)
    from_lhs = tuple(range(len(lhs_free)))  # the output's axes: lhs's free axes, then rhs's
    from_rhs = tuple(range(len(lhs_free), cotangent.ndim))
    # the axes each product leaves after its free ones: the other operand's contracted axes, in
    # that operand's order, named by the axes they were contracted with
    as_lhs = [lhs_contract[rhs_contract.index(d)] for d in sorted(rhs_contract)]
    as_rhs = [rhs_contract[lhs_contract.index(d)] for d in sorted(lhs_contract)]
    d_lhs = _to_order(_rounded_dot(cotangent, rhs, (from_rhs, rhs_free)), [*lhs_free, *as_lhs])
    if lhs.size <= cotangent.size:
        d_rhs = _to_order(_rounded_dot(lhs, cotangent, (lhs_free, from_lhs)), [*as_rhs, *rhs_free])
    else:  # the smaller operand first: XLA:CPU writes the first one out transposed for this product
        d_rhs = _to_order(_rounded_dot(cotangent, lhs, (from_lhs, lhs_free)), [*rhs_free, *as_rhs])
    return d_lhs, d_rhs


def _to_order(x, axes):
    """x, whose axis i is axis axes[i] of the result, transposed to the result's order."""
    return x.transpose([axes.index(d) for d in range(x.ndim)])


_rounded_dot.defvjp(_rounded_dot_forward, _rounded_dot_backward)


def dense(
    features: int, axes: tuple, *, use_bias: bool = True, dtype: jnp.dtype = jnp.float32, name: str | None
) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        dot_general=dot_general,
        kernel_init=param_with_axes(nn.initializers.lecun_normal(), *axes),
        bias_init=param_with_axes(nn.initializers.zeros, axes[-1]),
        name=name,
    )


def layer_norm(eps: float, dtype: jnp.dtype, name: str | None) -> nn.LayerNorm:
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
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
        # in float32 whatever the compute dtype, rounded once (as torch does): XLA:CPU would round
        # every intermediate of a bfloat16 expression to bfloat16
        x = ACTIVATIONS[self.act](x.astype(jnp.float32)).astype(x.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "mlp"))
        return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(x)


def rotate_pairs(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotary position embedding of x [B, L, heads, head_dim]: channels 2i and 2i+1 rotated together by
    the angle whose sin / cos are sin[l, 2i] (= sin[l, 2i+1]) [L, head_dim], in float32 and rounded once."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    return (x * cos[:, None] + rotated * sin[:, None]).astype(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with separate query/key/value/out projections.

    Returns (output, (keys, values)): the keys and values it attended over, which is what a
    decoding cache keeps. While decoding:
      - self-attention gets ``cache`` (fixed-length key/value buffers) and ``index``: the new
        keys/values are written at ``index`` and the queries sit at positions index, index+1, ...
      - cross-attention gets ``x_kv=None`` and attends over the cached ``cache`` as it is.
    A key/value set may serve several consecutive query sequences (the beams of one image).
    ``attention`` is the implementation `jaxvlm.ops.attention` takes: "auto", "xla" or "pallas".
    ``rope`` (sin, cos) [L, head_dim] rotates the queries and keys of self-attention (`rotate_pairs`).
    ``key_bias`` False: the keys have no bias (EVA's); ``inner_norm_eps``: a LayerNorm over all heads'
    outputs before the out projection (timm's scale_attn_inner, EVA02's sub-LN).
    """

    heads: int
    causal: bool = False
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"  # the implementation (`jaxvlm.ops.attention`)
    key_bias: bool = True
    inner_norm_eps: float | None = None

    @nn.compact
    def __call__(
        self,
        x_q: jax.Array,
        x_kv: jax.Array | None,
        *,
        key_mask: jax.Array | None = None,
        cache: tuple | None = None,
        index: jax.Array | None = None,
        rope: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple | None]:
        width = x_q.shape[-1]
        head_dim = width // self.heads

        def proj(name, use_bias=True):
            return nn.DenseGeneral(
                (self.heads, head_dim),
                use_bias=use_bias,
                dtype=self.dtype,
                dot_general=dot_general,
                kernel_init=param_with_axes(nn.initializers.lecun_normal(), "embed", "heads", "kv"),
                bias_init=param_with_axes(nn.initializers.zeros, "heads", "kv"),
                name=name,
            )

        q = proj("query")(x_q)
        if x_kv is None:
            k, v = cache
        else:
            k, v = proj("key", self.key_bias)(x_kv), proj("value")(x_kv)
            if rope is not None:
                q, k = rotate_pairs(q, *rope), rotate_pairs(k, *rope)
            if cache is not None:
                k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), index, axis=1)
                v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), index, axis=1)
        if q.shape[0] != k.shape[0]:  # several query sequences share each key/value set: fold them together
            y = ops.attention(q.reshape(k.shape[0], -1, *q.shape[2:]), k, v, implementation=self.attention).reshape(
                q.shape
            )
        else:
            y = ops.attention(
                q, k, v, causal=self.causal, q_offset=index, key_mask=key_mask, implementation=self.attention
            )
        if self.inner_norm_eps is not None:
            y = nn.LayerNorm(
                epsilon=self.inner_norm_eps,
                dtype=self.dtype,
                reduction_axes=(-2, -1),
                feature_axes=(-2, -1),
                scale_init=param_with_axes(nn.initializers.ones, "heads", "kv"),
                bias_init=param_with_axes(nn.initializers.zeros, "heads", "kv"),
                name="norm",
            )(y)
        out = nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
            dot_general=dot_general,
            kernel_init=param_with_axes(nn.initializers.lecun_normal(), "heads", "kv", "embed"),
            bias_init=param_with_axes(nn.initializers.zeros, "embed"),
            name="out",
        )(y)
        return out, (k, v)


class Block(nn.Module):
    """Pre-LN transformer block: attention then MLP, each with a residual.

    With ``cross`` the attention reads keys/values from ``x_kv`` (normalised by its own
    LayerNorm) instead of from ``x``. Returns (x, cache): while decoding (``index`` given) the
    cache is this block's keys/values, otherwise None, so the block can be scanned.
    """

    heads: int
    mlp_dim: int
    act: str
    ln_eps: float
    causal: bool = False
    cross: bool = False
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"  # the attention implementation (`jaxvlm.ops.attention`)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        cache: tuple | None = None,
        key_mask: jax.Array | None = None,
        index: jax.Array | None = None,
        x_kv: jax.Array | None = None,
        rope: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple | None]:
        y = layer_norm(self.ln_eps, self.dtype, "norm1")(x)
        if self.cross:
            source = None if x_kv is None else layer_norm(self.ln_eps, self.dtype, "norm_kv")(x_kv)
        else:
            source = y
        y, kv = Attention(self.heads, self.causal, self.dtype, self.attention, name="attn")(
            y, source, key_mask=key_mask, cache=cache, index=index, rope=rope
        )
        x = activations_with_axes(x + y)
        y = layer_norm(self.ln_eps, self.dtype, "norm2")(x)
        x = activations_with_axes(x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(y))
        return x, (None if index is None else kv)


def scan_layers(layer: type[nn.Module], depth: int, remat: str, in_axes: tuple) -> type[nn.Module]:
    """``depth`` copies of ``layer`` as one scanned module, parameters stacked on a "layers" axis.

    The layer is called as layer(carry, *args) -> (carry, output); ``in_axes`` says for each arg
    whether it is sliced per layer (0) or the same for all (nn.broadcast).
    """
    if remat != "none":
        layer = nn.remat(layer, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


class Encoder(nn.Module):
    """``depth`` pre-LN blocks, scanned. Returns (x, cache); see `Block` for decoding."""

    depth: int
    heads: int
    mlp_dim: int
    act: str
    ln_eps: float
    causal: bool = False
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        cache: tuple | None = None,
        key_mask: jax.Array | None = None,
        index: jax.Array | None = None,
        rope: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple | None]:
        in_axes = (0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast)  # cache, key_mask, index, x_kv, rope
        blocks = scan_layers(Block, self.depth, self.remat, in_axes=in_axes)(
            self.heads,
            self.mlp_dim,
            self.act,
            self.ln_eps,
            self.causal,
            dtype=self.dtype,
            attention=self.attention,
            name="blocks",
        )
        return blocks(x, cache, key_mask, index, None, rope)


class MapHead(nn.Module):
    """Multi-head attention pooling: one learned probe attends over the tokens."""

    heads: int
    mlp_dim: int
    act: str
    ln_eps: float
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """x [B, N, W] -> [B, W]; ``key_mask`` bool [B, N]: the tokens to pool over (all by default)."""
        probe = self.param(
            "probe", param_with_axes(nn.initializers.xavier_uniform(), None, None, "embed"), (1, 1, x.shape[-1])
        )
        probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x, _ = Attention(self.heads, dtype=self.dtype, attention=self.attention, name="attn")(
            probe, x, key_mask=key_mask
        )
        y = layer_norm(self.ln_eps, self.dtype, "norm")(x)
        x = x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(y)
        return x[:, 0]


class AttentionPool(nn.Module):
    """open_clip's CoCa attentional pooler: LayerNorm'd learned queries attend over the
    LayerNorm'd tokens; no residual and no MLP. Output [B, queries, width]."""

    queries: int
    width: int
    heads: int
    ln_eps: float
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        queries = self.param(
            "queries", param_with_axes(nn.initializers.normal(1.0), None, "embed"), (self.queries, self.width)
        )
        queries = layer_norm(self.ln_eps, self.dtype, "norm_q")(queries.astype(self.dtype))
        x = layer_norm(self.ln_eps, self.dtype, "norm_kv")(x)
        queries = jnp.broadcast_to(queries, (x.shape[0], *queries.shape))
        y, _ = Attention(self.heads, dtype=self.dtype, attention=self.attention, name="attn")(queries, x)
        return y
