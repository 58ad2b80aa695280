"""Dispatch for the hot operations.

Each op has an XLA reference here; the Pallas kernels (``jaxvlm.kernels``) plug in behind the
same signatures when they are available for the backend and shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False) -> jax.Array:
    """Scaled dot-product attention. q [B, T, H, D], k and v [B, S, H, D] -> [B, T, H, D].

    Scores and softmax are computed in float32 whatever the input dtype.
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthd,bshd->bhts", q * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)
    if causal:
        t, s = scores.shape[-2:]
        allowed = jnp.tril(jnp.ones((t, s), dtype=bool), k=s - t)
        scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)
