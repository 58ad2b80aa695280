"""What the kernels share: argument checks, which raise `InputError` (a ValueError) with one line
naming the bad argument, and small helpers for padding and shard_map types."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxvlm.errors import InputError

LANES = 128  # a TPU vreg's lanes: the kernels pad feature axes to a multiple of this
LOSS_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))  # what the contrastive kernels compute in


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def varying(*arrays: jax.Array) -> frozenset:
    """The shard_map axes along which any of the arrays varies (empty outside, or with check_vma off)."""
    return frozenset().union(*(jax.typeof(a).mat.varying for a in arrays))


def check_loss_inputs(
    name: str, x: ArrayLike, y: ArrayLike, scale: ArrayLike, bias: ArrayLike | None = None, *, same_shape: bool
) -> tuple[jax.Array, ...]:
    """The contrastive losses' arguments checked: (x, y, scale) as arrays, scale in float32, and bias
    too when given. x [N, D] and y [M, D] (M == N where ``same_shape``) share one dtype the kernels
    compute in; scale and bias are real scalars."""
    scalars = {"scale": scale} if bias is None else {"scale": scale, "bias": bias}
    return (*_check_embeddings(name, x, y, same_shape), *(_check_scalar(name, k, v) for k, v in scalars.items()))


def _check_embeddings(name: str, x, y, same_shape: bool) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2:
        raise InputError(f"{name}: x and y must be 2-D [N, D] and [M, D], got shapes {x.shape} and {y.shape}")
    if same_shape and x.shape != y.shape:
        raise InputError(f"{name}: x and y must have the same shape [N, D], got x {x.shape} and y {y.shape}")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"{name}: x and y must share the embedding size D, got {x.shape[1]} and {y.shape[1]}")
    if 0 in x.shape or 0 in y.shape:
        raise InputError(f"{name}: empty input, x {x.shape} and y {y.shape}")
    if x.dtype != y.dtype or x.dtype not in LOSS_DTYPES:
        raise InputError(
            f"{name}: x and y must both be float32 or both bfloat16, got {x.dtype} and {y.dtype} "
            "(the *_reference functions take any float dtype)"
        )
    return x, y


def _check_scalar(name: str, label: str, value) -> jax.Array:
    """A real scalar as float32. Its finiteness is checked only when it is concrete (under jit or
    grad its value is unknown; a non-finite one then gives a non-finite loss)."""
    if np.ndim(value) != 0:
        raise InputError(f"{name}: {label} must be a scalar, got shape {np.shape(value)}")
    dtype = jnp.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise InputError(f"{name}: {label} must be a real number, got dtype {dtype}")
    if not isinstance(value, jax.core.Tracer) and not np.isfinite(np.asarray(value, np.float32)):
        raise InputError(f"{name}: {label} must be finite, got {np.asarray(value).item()}")
    return jnp.asarray(value).astype(jnp.float32)
