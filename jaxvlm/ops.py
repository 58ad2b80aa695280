"""Dispatch for the hot operations: each op runs a Pallas kernel (``jaxvlm.kernels``) where one
applies and XLA otherwise, chosen by an ``implementation`` argument ("auto", "xla", "pallas").

Kernels are chosen by the platform the program is lowered for (`jax.lax.platform_dependent`),
not the platform of this process, so a program compiled ahead of time for a TPU topology on a
CPU host gets the TPU kernel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxvlm.kernels import contrastive_gpu as cg
from jaxvlm.kernels import flash_attention as fa
from jaxvlm.kernels import sigmoid_loss as gl
from jaxvlm.kernels import softmax_loss as sl

IMPLEMENTATIONS = ("auto", "xla", "pallas")

# "auto" uses the attention kernel only when both sequences are at least this long: shorter ones
# fit one kernel block, where padding to the block costs more than flash attention saves.
ATTENTION_KERNEL_MIN_LENGTH = 128
# Logical axes of q, k, v: a kernel under a mesh runs on each device's share of batch and heads.
ATTENTION_AXES = ("batch", "length", "heads", "kv")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    q_offset: int | jax.Array | None = None,
    key_mask: jax.Array | None = None,
    implementation: str = "auto",
) -> jax.Array:
    """Scaled dot-product attention. q [B, T, H, D], k and v [B, S, H, D] -> [B, T, H, D].

    causal: query t sits at position ``q_offset + t`` (by default S - T: the queries are the
    last T positions) and sees only keys at positions up to its own. ``q_offset`` may be traced.
    key_mask: bool [B, S]; keys where it is False are never attended to.
    Scores and softmax are computed in float32 whatever the input dtype.

    implementation:
      "xla": plain XLA ops (`_xla_attention`), every case.
      "pallas": the flash attention kernel of the platform (TPU: Mosaic, CUDA: Triton) for every
        call it covers; XLA for the rest: decoding with ``q_offset``, causal with T != S, and for
        the Triton kernel ``key_mask`` or T > S (see `jaxvlm.kernels.flash_attention.unsupported`).
        On CPU, for tests, the Triton kernel in Pallas's interpreter: unlike the TPU interpreter
        it has no side effects, which a platform-dependent choice needs.
      "auto": as "pallas" on TPU and CUDA when T and S are both >= ATTENTION_KERNEL_MIN_LENGTH, else XLA.
    """
    fa.check_inputs(q, k, v, key_mask)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention: implementation {implementation!r}; expected one of {', '.join(IMPLEMENTATIONS)}")
    xla = functools.partial(_xla_attention, causal=causal, q_offset=q_offset)
    t, s = q.shape[1], k.shape[1]
    wanted = implementation == "pallas" or (implementation == "auto" and min(t, s) >= ATTENTION_KERNEL_MIN_LENGTH)
    if not wanted or q_offset is not None:
        return xla(q, k, v, key_mask)
    kernels = {}
    for platform, backend in (("tpu", "tpu"), ("cuda", "gpu")):
        if fa.unsupported(backend, t, s, causal=causal, key_mask=key_mask is not None) is None:
            kernels[platform] = _attention_kernel(backend, causal)
    if implementation == "pallas" and "cuda" in kernels:
        kernels["cpu"] = _attention_kernel("gpu", causal, interpret=True)
    if not kernels:
        return xla(q, k, v, key_mask)
    return jax.lax.platform_dependent(q, k, v, key_mask, default=xla, **kernels)


def _xla_attention(q, k, v, key_mask, *, causal: bool, q_offset):
    """Attention in plain XLA ops, laid out as XLA:CPU runs it fastest (1.7-2.4x faster there than
    `jax.nn.dot_product_attention` at 50-196 tokens) and as well elsewhere: heads moved ahead of
    the sequences, so both products are plain batched matmuls; queries scaled before the first;
    the softmax normalised after the second (on [T, D] rather than [T, S]), as flash attention does."""
    mask = fa.attention_mask(q.shape[1], k.shape[1], causal=causal, q_offset=q_offset, key_mask=key_mask)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, H, length, D]
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    scores = jnp.einsum("bhtd,bhsd->bhts", q * scale, k, preferred_element_type=jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    out = jnp.einsum("bhts,bhsd->bhtd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out / jnp.sum(weights, axis=-1, keepdims=True)
    return jnp.swapaxes(out.astype(v.dtype), 1, 2)


def _attention_kernel(backend: str, causal: bool, interpret: bool = False):
    """``fn(q, k, v, key_mask)`` running the flash attention kernel, under shard_map when a mesh
    with several devices is set (`jax.set_mesh`): Mosaic kernels cannot be partitioned
    automatically. Batch and heads stay sharded as the logical axis rules say; each device sees
    whole sequences."""

    def kernel(q, k, v, key_mask):
        return fa.flash_attention(q, k, v, causal=causal, key_mask=key_mask, backend=backend, interpret=interpret)

    def run(q, k, v, key_mask):
        mesh = jax.sharding.get_abstract_mesh()
        free = set(mesh.axis_names) - set(mesh.manual_axes)
        if mesh.empty or all(mesh.shape[a] == 1 for a in free):
            return kernel(q, k, v, key_mask)
        spec = nn.logical_to_mesh_axes(ATTENTION_AXES)
        batch, heads = (_mesh_axes(spec[i], q.shape[i], mesh, free) for i in (0, 2))
        qkv = jax.P(batch, None, heads, None)
        # check_vma=False: JAX's Pallas kernels declare their outputs without varying mesh axes
        return jax.shard_map(
            kernel, in_specs=(qkv, qkv, qkv, jax.P(batch, None)), out_specs=qkv, axis_names=free, check_vma=False
        )(q, k, v, key_mask)

    return run


def _mesh_axes(entry, size: int, mesh, free: set) -> tuple | None:
    """The mesh axes of one PartitionSpec entry to split a dimension of ``size`` over: those the
    mesh has and does not already split manually (rules may name others), or none when their
    product does not divide ``size``."""
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    names = tuple(a for a in names if a in free)
    return names if names and size % math.prod(mesh.shape[a] for a in names) == 0 else None


def softmax_contrastive_loss(
    x: jax.Array,
    y: jax.Array,
    scale: ArrayLike,
    *,
    axis_name: str | tuple[str, ...] | None = None,
    implementation: str = "auto",
) -> jax.Array:
    """CLIP's loss: (CE over rows + CE over columns) / 2 of S = scale * x @ y.T, positives on the
    diagonal. x, y [N, D]; ``scale`` is exp(t).

    One device ("pallas" / "auto"): the fused kernels, which never hold S, on TPU (Mosaic,
    `jaxvlm.kernels.softmax_loss`) and CUDA (Triton, `jaxvlm.kernels.contrastive_gpu`); "xla" and
    other platforms: the jnp reference. With ``axis_name``, called inside shard_map over that axis:
    x and y are this device's rows and the result is the global loss; the fused sharded kernels on
    TPU, the jnp reference on GPU and elsewhere (texts and images all-gathered, each device's rows
    and columns, a psum). See `_contrastive` for "pallas" on a CPU process.
    """
    args = (x, y, scale)
    if axis_name:
        return _contrastive(
            args,
            implementation,
            functools.partial(_sharded_softmax_reference, axis_name=axis_name),
            tpu=functools.partial(sl.sharded_softmax_loss, axis_name=axis_name),
        )
    return _contrastive(args, implementation, sl.softmax_loss_reference, tpu=sl.softmax_loss, cuda=cg.softmax_loss_gpu)


def sigmoid_contrastive_loss(
    x: jax.Array,
    y: jax.Array,
    scale: ArrayLike,
    bias: ArrayLike,
    *,
    axis_name: str | tuple[str, ...] | None = None,
    implementation: str = "auto",
) -> jax.Array:
    """SigLIP's loss: mean over images of sum_j -log sigmoid(z_ij (scale * x_i . y_j + bias)),
    z = +1 on the diagonal, -1 elsewhere. x [N, D], y [M, D].

    One device ("pallas" / "auto"): the fused kernels on TPU (`jaxvlm.kernels.sigmoid_loss`) and
    CUDA (`jaxvlm.kernels.contrastive_gpu`); "xla" and other platforms: the jnp reference. With
    ``axis_name`` (inside shard_map): local rows in, global loss out; the fused ring on TPU, the
    jnp reference against all-gathered texts on GPU and elsewhere.
    """
    args = (x, y, scale, bias)
    if axis_name:
        return _contrastive(
            args,
            implementation,
            functools.partial(_sharded_sigmoid_reference, axis_name=axis_name),
            tpu=functools.partial(gl.sharded_sigmoid_loss, axis_name=axis_name),
        )
    return _contrastive(args, implementation, gl.sigmoid_loss_reference, tpu=gl.sigmoid_loss, cuda=cg.sigmoid_loss_gpu)


def _contrastive(args, implementation: str, reference, *, tpu, cuda=None):
    """``reference(*args)`` for "xla"; else the kernel of the platform the program is lowered for
    (``tpu``; ``cuda`` when given), the reference on other platforms. "pallas" in a CPU process
    adds a CPU branch for tests: a kernel in Pallas's interpreter, the Triton one where there is
    one, else the Mosaic one. Only in a CPU process: every branch is traced, and the interpreter
    cannot run under shard_map's check_vma."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"contrastive loss: implementation {implementation!r}; expected one of {', '.join(IMPLEMENTATIONS)}"
        )
    if implementation == "xla":
        return reference(*args)
    kernels = {"tpu": tpu} if cuda is None else {"tpu": tpu, "cuda": cuda}
    if implementation == "pallas" and jax.default_backend() == "cpu":
        kernels["cpu"] = functools.partial(cuda or tpu, interpret=True)
    return jax.lax.platform_dependent(*args, default=reference, **kernels)


def _sharded_softmax_reference(x, y, scale, *, axis_name):
    images = jax.lax.all_gather(x, axis_name, tiled=True)
    texts = jax.lax.all_gather(y, axis_name, tiled=True)
    first = jax.lax.axis_index(axis_name) * x.shape[0]

    def cross_entropy(rows, columns):  # this device's rows against all columns, positives on the diagonal
        logits = scale * jnp.dot(rows, columns.T, preferred_element_type=jnp.float32)
        positives = jnp.take_along_axis(logits, (first + jnp.arange(rows.shape[0]))[:, None], axis=1)[:, 0]
        return jnp.sum(jax.nn.logsumexp(logits, axis=1) - positives)

    share = (cross_entropy(x, texts) + cross_entropy(y, images)) / (2 * images.shape[0])
    return jax.lax.psum(share, axis_name)


def _sharded_sigmoid_reference(x, y, scale, bias, *, axis_name):
    texts = jax.lax.all_gather(y, axis_name, tiled=True)
    logits = scale * jnp.dot(x, texts.T, preferred_element_type=jnp.float32) + bias
    rows = jax.lax.axis_index(axis_name) * x.shape[0] + jnp.arange(x.shape[0])
    labels = jnp.where(rows[:, None] == jnp.arange(texts.shape[0])[None, :], 1.0, -1.0)
    share = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / (x.shape[0] * jax.lax.axis_size(axis_name))
    return jax.lax.psum(share, axis_name)


def depthwise_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: jax.lax.ConvDimensionNumbers | None = None,
    feature_group_count: int = 1,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """`jax.lax.conv_general_dilated` for flax's ``nn.Conv(conv_general_dilated=ops.depthwise_conv)``: NHWC
    images, HWIO kernels. A depthwise convolution (one group per input channel, each with ``out / in`` filters)
    lowered for CPU is a sum of k x k shifted, strided slices times the kernel's taps, accumulated in float32:
    XLA:CPU runs grouped convolutions as a slow generic loop (a 7 x 7 depthwise convolution of 32 x 64 x 64 x 64
    features: 465 ms as a convolution, 27 ms as slices on this machine). Other platforms, and every other
    convolution, get the convolution itself."""
    conv = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
    )
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    channels_last = lhs.ndim == 4 and dimension_numbers == jax.lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")
    )
    if not channels_last or feature_group_count != lhs.shape[-1] or rhs.shape[2] != 1 or dilated:
        return conv(lhs, rhs)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    shifted = functools.partial(_shifted_depthwise, strides=tuple(window_strides), padding=tuple(map(tuple, padding)))
    return jax.lax.platform_dependent(lhs, rhs, cpu=shifted, default=conv)


def _shifted_depthwise(x: jax.Array, kernel: jax.Array, *, strides, padding) -> jax.Array:
    (kh, kw, _, out), (sh, sw) = kernel.shape, strides
    if out != x.shape[-1]:  # a channel multiplier: output channel o filters input channel o // multiplier
        x = jnp.repeat(x, out // x.shape[-1], axis=-1)
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    b, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    taps = kernel.astype(jnp.float32)
    y = jnp.zeros((b, oh, ow, c), jnp.float32)
    for i in range(kh):
        for j in range(kw):
            window = x[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw]
            y = y + window.astype(jnp.float32) * taps[i, j, 0]
    return y.astype(jnp.result_type(x, kernel))
