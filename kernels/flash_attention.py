"""Flash attention: JAX's Pallas kernels for TPU (Mosaic) and GPU (Triton) behind one signature,
and the pure-jnp reference they are tested against.

Layout: q [B, T, H, D], k and v [B, S, H, D] -> [B, T, H, D], softmax scale D ** -0.5.
``causal``: query t sees keys 0..t (a kernel case only when T == S); ``key_mask`` bool [B, S]:
keys where it is False are never attended to.

The kernels want sequence lengths that are multiples of their blocks, so the wrappers pad the
sequences at the end and keep the padded keys out of every softmax with segment ids (each query
attends only to keys of its own segment). Padded queries are sliced off, and since their output
gradient is zero they add nothing to the key and value gradients.

- TPU (``jax.experimental.pallas.ops.tpu.flash_attention``): separate query and key segment ids,
  so queries are segment 1 and keys are segment 1 when real and unmasked, 0 otherwise. Key blocks
  are multiples of 128; the head dimension is zero-padded to a multiple of 128 only above 128
  (the kernel handles up to 128 directly).
- GPU (``jax.experimental.pallas.ops.gpu.attention.mha``): one segment-id array serves both the
  queries and the keys at each position, so a real query at position i always sees key i. With
  T <= S and no ``key_mask`` that is what padding needs; T > S or a ``key_mask`` cannot be
  expressed, so they are not kernel cases (see `unsupported`). The kernel pads the head dimension
  to a power of two itself, with masked loads.

A query whose keys are all masked gets an unspecified finite output (the reference averages all
the values; the TPU kernel averages the values of all keys, padding included).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxvlm.errors import InputError
from jaxvlm.kernels.common import round_up

BACKENDS = ("tpu", "gpu")
FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def check_inputs(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> None:
    """Raises InputError naming the problem when the arrays do not make one attention call."""
    if not (q.ndim == k.ndim == v.ndim == 4):
        raise InputError(
            f"attention: q, k, v must be [batch, length, heads, head_dim]; got shapes {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape != v.shape:
        raise InputError(f"attention: k and v shapes differ: {k.shape} vs {v.shape}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        raise InputError(f"attention: q {q.shape} and k {k.shape} differ in batch, heads or head_dim")
    if not q.dtype == k.dtype == v.dtype or q.dtype not in FLOAT_DTYPES:
        raise InputError(f"attention: q, k, v must share one float dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_mask is not None and (key_mask.dtype != jnp.bool_ or key_mask.shape != k.shape[:2]):
        raise InputError(f"attention: key_mask must be bool {k.shape[:2]}; got {key_mask.dtype} {key_mask.shape}")


def attention_mask(
    t: int, s: int, *, causal: bool = False, q_offset: int | jax.Array | None = None, key_mask: jax.Array | None = None
) -> jax.Array | None:
    """Which (query, key) pairs attention may use: bool broadcastable to [B, H, T, S], or None for all.

    causal: query t sits at position ``q_offset + t`` (default S - T: the queries are the last T
    positions) and sees keys at positions up to its own; ``q_offset`` may be traced.
    """
    if not causal and key_mask is None:
        return None
    allowed = jnp.ones((1, 1, t, s), dtype=bool)
    if causal:
        offset = s - t if q_offset is None else q_offset
        allowed = allowed & (jnp.arange(s)[None, :] <= offset + jnp.arange(t)[:, None])
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    return allowed


def attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    q_offset: int | jax.Array | None = None,
    key_mask: jax.Array | None = None,
) -> jax.Array:
    """Scaled dot-product attention in plain jnp (scores and softmax in float32), the reference the
    kernels and `jaxvlm.ops.attention` are tested against. Arguments as in `attention_mask`."""
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthd,bshd->bhts", q * jnp.asarray(scale, q.dtype), k, preferred_element_type=jnp.float32)
    allowed = attention_mask(q.shape[1], k.shape[1], causal=causal, q_offset=q_offset, key_mask=key_mask)
    if allowed is not None:
        scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


def unsupported(backend: str, t: int, s: int, *, causal: bool = False, key_mask: bool = False) -> str | None:
    """Why ``backend``'s kernel cannot compute attention of T = ``t`` queries over S = ``s`` keys
    (``key_mask``: whether one is given), or None when it can."""
    if backend not in BACKENDS:
        return f"unknown flash attention backend {backend!r}; expected one of {', '.join(BACKENDS)}"
    if causal and t != s:
        return f"the causal kernels need as many queries as keys (got {t} and {s})"
    if backend == "gpu" and key_mask:
        return "the GPU kernel's segment ids cannot mask a key without masking the query at its position"
    if backend == "gpu" and t > s:
        return f"the GPU kernel's segment ids cannot mask padded keys when queries outnumber keys ({t} > {s})"
    return None


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    key_mask: jax.Array | None = None,
    backend: str,
    interpret: bool = False,
) -> jax.Array:
    """Attention by ``backend``'s ("tpu" or "gpu") Pallas kernels, forward and backward.

    q [B, T, H, D], k and v [B, S, H, D] -> [B, T, H, D]; see the module docstring. ``interpret``
    runs the kernels in Pallas's interpreter (any platform; for tests). Raises NotImplementedError
    for a case the backend's kernel does not cover (`unsupported`).
    """
    check_inputs(q, k, v, key_mask)
    reason = unsupported(backend, q.shape[1], k.shape[1], causal=causal, key_mask=key_mask is not None)
    if reason:
        raise NotImplementedError(f"flash_attention: {reason}")
    kernel = _tpu_flash_attention if backend == "tpu" else _gpu_flash_attention
    return kernel(q, k, v, key_mask, causal=causal, interpret=interpret)


def _pad_axis(x, axis: int, size: int):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _key_segments(key_mask, batch: int, s: int, s_pad: int):
    """int32 [B, s_pad]: 1 for a real key that may be attended to, 0 for padding and masked keys."""
    real = jnp.broadcast_to(jnp.arange(s_pad) < s, (batch, s_pad))
    if key_mask is not None:
        real = real & _pad_axis(key_mask, 1, s_pad)
    return real.astype(jnp.int32)


def _largest_dividing(n: int, blocks: tuple[int, ...]) -> int:
    return next(b for b in blocks if n % b == 0)


# ---------------------------------------------------------------- TPU (Mosaic)


def _tpu_blocks(t: int, s: int):
    """(padded T, padded S, BlockSizes). Key blocks are multiples of 128 (the kernel's lane tiling
    of the scores and segment ids); a short query sequence is one block of a multiple of 16 rows
    (bfloat16's sublane packing)."""
    from jax.experimental.pallas.ops.tpu.flash_attention import BlockSizes

    s_pad = round_up(s, 128)
    t_pad = round_up(t, 128) if t > 128 else round_up(t, 16)
    bk = _largest_dividing(s_pad, (512, 256, 128))
    bq = _largest_dividing(t_pad, (256, 128)) if t_pad >= 128 else t_pad
    return (
        t_pad,
        s_pad,
        BlockSizes(
            block_q=bq,
            block_k_major=bk,
            block_k=bk,
            block_b=1,
            block_q_major_dkv=bq,
            block_k_major_dkv=bk,
            block_k_dkv=bk,
            block_q_dkv=bq,
            block_k_major_dq=bk,
            block_k_dq=bk,
            block_q_dq=bq,
        ),
    )


def _tpu_flash_attention(q, k, v, key_mask, *, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu

    (b, t, _, d), s = q.shape, k.shape[1]
    t_pad, s_pad, blocks = _tpu_blocks(t, s)
    d_pad = d if d <= 128 else round_up(d, 128)

    def to_kernel(x, length):  # [B, L, H, D] -> [B, H, length, d_pad]
        return _pad_axis(_pad_axis(x, 1, length), 3, d_pad).transpose(0, 2, 1, 3)

    segments = None
    if s_pad != s or key_mask is not None:
        segments = tpu.SegmentIds(q=jnp.ones((b, t_pad), jnp.int32), kv=_key_segments(key_mask, b, s, s_pad))
    kernel = functools.partial(tpu.flash_attention, causal=causal, sm_scale=d**-0.5, block_sizes=blocks)
    if interpret:
        kernel = _tpu_interpreted(kernel)
    out = kernel(to_kernel(q, t_pad), to_kernel(k, s_pad), to_kernel(v, s_pad), segment_ids=segments)
    return out.transpose(0, 2, 1, 3)[:, :t, :, :d]


def _tpu_interpreted(kernel):
    """``kernel(q, k, v, segment_ids=...)`` with its forward and backward Pallas calls in TPU
    interpret mode.

    Interpret mode is chosen when a pallas_call is traced, and the library kernel's backward is
    traced when the gradient is (outside any context entered around the forward call), so the
    backward is wrapped here too, by replaying the forward's vjp inside the context. Every array
    is an argument: a custom_vjp closing over traced values breaks under cond and remat.
    """
    from jax.experimental.pallas import tpu as pltpu

    interpreting = functools.partial(pltpu.force_tpu_interpret_mode, pltpu.InterpretParams())

    @jax.custom_vjp
    def call(q, k, v, segment_ids):
        with interpreting():
            return kernel(q, k, v, segment_ids=segment_ids)

    def forward(q, k, v, segment_ids):
        with interpreting():
            return jax.vjp(lambda q, k, v: kernel(q, k, v, segment_ids=segment_ids), q, k, v)

    def backward(vjp, grad):
        with interpreting():
            return (*vjp(grad), None)

    call.defvjp(forward, backward)
    return call


# ---------------------------------------------------------------- GPU (Triton)


def _gpu_blocks(t: int, s: int):
    """(padded T, padded S, BlockSizes), all blocks powers of two of at least 16 (Triton's dot).

    The fused backward walks the keys in blocks of 32 and the queries in as many blocks as that
    (``T_pad / block_q_dq == S_pad / block_kv_dkv``), so T is padded to that many equal blocks.
    """
    from jax.experimental.pallas.ops.gpu.attention import BlockSizes

    pow2 = lambda n: 1 << max(n - 1, 0).bit_length()
    s_pad = round_up(s, 128) if s > 128 else max(pow2(s), 32)
    blocks = s_pad // 32
    bq_bwd = max(pow2(-(-t // blocks)), 16)
    t_pad = blocks * bq_bwd
    bq = min(128, t_pad & -t_pad)  # the largest power of two dividing t_pad
    return (
        t_pad,
        s_pad,
        BlockSizes(
            block_q=bq, block_k=min(128, s_pad), block_q_dkv=bq_bwd, block_kv_dkv=32, block_q_dq=bq_bwd, block_kv_dq=32
        ),
    )


def _gpu_flash_attention(q, k, v, key_mask, *, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.gpu.attention import mha

    del key_mask  # not a GPU kernel case (see `unsupported`)
    (b, t, _, d), s = q.shape, k.shape[1]
    t_pad, s_pad, blocks = _gpu_blocks(t, s)
    segments = _key_segments(None, b, s, s_pad) if s_pad != s else None
    out = mha(
        _pad_axis(q, 1, t_pad),
        _pad_axis(k, 1, s_pad),
        _pad_axis(v, 1, s_pad),
        segments,
        sm_scale=d**-0.5,
        causal=causal,
        block_sizes=blocks,
        interpret=interpret,
    )
    return out[:, :t]
