"""Dispatch for the hot operations.

Each op has an XLA reference here; the Pallas kernels (``jaxvlm.kernels``) plug in behind the
same signatures when they are available for the backend and shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False, q_offset=None,
              key_mask: jax.Array | None = None) -> jax.Array:
    """Scaled dot-product attention. q [B, T, H, D], k and v [B, S, H, D] -> [B, T, H, D].

    causal: query t sits at position ``q_offset + t`` (by default S - T: the queries are the
    last T positions) and sees only keys at positions up to its own. ``q_offset`` may be traced.
    key_mask: bool [B, S]; keys where it is False are never attended to.
    Scores and softmax are computed in float32 whatever the input dtype.
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthd,bshd->bhts", q * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)
    if causal or key_mask is not None:
        scores = jnp.where(_allowed(*scores.shape[-2:], causal, q_offset, key_mask), scores,
                           jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


def _allowed(t: int, s: int, causal: bool, q_offset, key_mask) -> jax.Array:
    """Which (query, key) pairs attention may use, broadcastable to [B, H, T, S]."""
    allowed = jnp.ones((1, 1, t, s), dtype=bool)
    if causal:
        offset = s - t if q_offset is None else q_offset
        allowed = allowed & (jnp.arange(s)[None, :] <= offset + jnp.arange(t)[:, None])
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    return allowed
