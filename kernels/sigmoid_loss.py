"""SigLIP's sigmoid contrastive loss as fused Pallas TPU (Mosaic) kernels.

With image embeddings X [N, D], text embeddings Y [M, D] and the scalars ``scale`` (already
exponentiated) and ``bias``, the logits are S = scale * X Y^T + bias and the labels z_ij = +1 on
the diagonal j == i (rows i < min(N, M)), -1 elsewhere. The loss is big_vision's: the mean over
images of the per-image sum, (1/N) sum_ij softplus(-z_ij S_ij), accumulated in float32.

The kernels score tiles of X against tiles of Y in VMEM and never write an N x M array to HBM:
the forward pass keeps per-row partial sums, the backward pass recomputes each tile of S and
contracts the tile's gradient G = dLoss/dS straight into dX and dY. ``sharded_sigmoid_loss`` runs
the same kernels around a ring of devices (inside ``shard_map``) so that no device ever holds more
than its own text chunk and the one passing through.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.typing import ArrayLike

from jaxvlm.errors import InputError
from jaxvlm.kernels.common import LANES, check_loss_inputs, round_up, varying

_SUBLANES = 8
_TILES = (512, 256, 128)  # candidate tile heights (rows of X or Y per block), largest first
# Per-kernel VMEM the tiles may use: below the 16 MiB a TPU v4 core has, and below the default
# scoped limit of the later generations, so no kernel needs a raised vmem_limit_bytes.
_VMEM_BUDGET = 12 * 2**20


def sigmoid_loss_reference(x: jax.Array, y: jax.Array, scale: ArrayLike, bias: ArrayLike) -> jax.Array:
    """The loss in plain jnp (materialises the [N, M] logits): f32 scalar."""
    logits = scale * jnp.dot(x.astype(jnp.float32), y.astype(jnp.float32).T, precision=lax.Precision.HIGHEST) + bias
    z = 2.0 * jnp.eye(x.shape[0], y.shape[0], dtype=jnp.float32) - 1.0
    return jnp.sum(jax.nn.softplus(-z * logits)) / x.shape[0]


# ---------------------------------------------------------------------------------------------
# Kernels. Grid (i, j): i walks the blocks of the kernel's "a" operand (parallel), j the blocks of
# its "b" operand (arbitrary: the reduction, accumulated in VMEM scratch). a = images, b = texts,
# except for the dY kernel, which is transposed (a = texts, b = images) so that its reduction runs
# over images and every matmul keeps the MXU-native "contract the last dims" form.
#
# Every kernel reads two SMEM operands: the f32 scalars (scale, bias[, coef]) and the int32
# `where` = (row of the first image, row of the first text, own): where the operands start among
# this device's images and texts (rows at or past the real counts are padding, masked), and whether
# the texts are this device's own, the only ones with positives (image row == text row).


def _where(first_image, first_text, own: bool):
    return jnp.stack([jnp.int32(first_image), jnp.int32(first_text), jnp.int32(own)])


def _scores(floats_ref, where_ref, a_ref, b_ref, *, images, texts, transposed):
    """One (ta, tb) tile: the raw dot a b^T (f32), the logits, the positive and valid masks."""
    a, b = a_ref[...], b_ref[...]
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    dot = lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)
    logits = floats_ref[0] * dot + floats_ref[1]
    ta, tb = dot.shape
    first_a, first_b = (where_ref[1], where_ref[0]) if transposed else (where_ref[0], where_ref[1])
    ai = first_a + pl.program_id(0) * ta + lax.broadcasted_iota(jnp.int32, dot.shape, 0)
    bi = first_b + pl.program_id(1) * tb + lax.broadcasted_iota(jnp.int32, dot.shape, 1)
    image, text = (bi, ai) if transposed else (ai, bi)
    valid = (image < images) & (text < texts)
    positive = (where_ref[2] == 1) & (image == text)
    return dot, logits, positive, valid


def _lane_sum(v):
    """[r, c] -> [r, 128]: sum of the 128-lane column groups (whole vregs, no cross-lane work)."""
    out = v[:, :LANES]
    for k in range(LANES, v.shape[1], LANES):
        out = out + v[:, k : k + LANES]
    return out


def _sublane_sum(v):
    """[r, 128] -> [8, 128]: sum of the 8-row groups (whole vregs)."""
    out = v[:_SUBLANES]
    for k in range(_SUBLANES, v.shape[0], _SUBLANES):
        out = out + v[k : k + _SUBLANES]
    return out


def _loss_kernel(floats_ref, where_ref, x_ref, y_ref, out_ref, acc_ref, **sizes):
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    _, logits, positive, valid = _scores(floats_ref, where_ref, x_ref, y_ref, transposed=False, **sizes)
    u = jnp.where(positive, -logits, logits)  # u = -z S
    loss = jnp.maximum(u, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(u)))  # softplus(u), stable
    acc_ref[...] += _lane_sum(jnp.where(valid, loss, 0.0))

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        out_ref[...] = _sublane_sum(acc_ref[...])


def _grad_kernel(floats_ref, where_ref, a_ref, b_ref, da_in_ref, *refs, transposed, **sizes):
    """da = da_in + scale * G b for G = coef * dsoftplus(-z S)/dS = coef * (sigmoid(S) - [z = +1]);
    da_in and da are one buffer (aliased), so ring steps accumulate in place. The untransposed (dX)
    pass also sums G * (X Y^T) and G, the scale and bias gradients."""
    if transposed:
        da_ref, acc_ref = refs
    else:
        da_ref, dscale_ref, dbias_ref, acc_ref, dscale_acc, dbias_acc = refs
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)
        if not transposed:
            dscale_acc[...] = jnp.zeros_like(dscale_acc)
            dbias_acc[...] = jnp.zeros_like(dbias_acc)

    dot, logits, positive, valid = _scores(floats_ref, where_ref, a_ref, b_ref, transposed=transposed, **sizes)
    g = jax.nn.sigmoid(logits)
    g = floats_ref[2] * jnp.where(positive, g - 1.0, g)
    g = jnp.where(valid, g, 0.0)
    b = b_ref[...]
    precision = lax.Precision.HIGHEST if b.dtype == jnp.float32 else None
    acc_ref[...] += jnp.dot(g.astype(b.dtype), b, precision=precision, preferred_element_type=jnp.float32)
    if not transposed:
        dscale_acc[...] += _lane_sum(g * dot)
        dbias_acc[...] += _lane_sum(g)

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        da_ref[...] = da_in_ref[...] + floats_ref[0] * acc_ref[...]
        if not transposed:
            dscale_ref[...] = _sublane_sum(dscale_acc[...])
            dbias_ref[...] = _sublane_sum(dbias_acc[...])


# ---------------------------------------------------------------------------------------------
# Block-level calls on padded operands: xp [n_pad, d_pad] against yp [m_pad, d_pad], placed among
# this device's `images` and `texts` (the real counts) by `where`.


def _call(kernel, floats, where, a, b, accumulator, outs, scratch, *, ta, tb, flops, transcendentals, interpret):
    """pallas_call over the (a blocks, b blocks) grid. outs: (rows per a block, width) of each f32
    output; with an `accumulator` [a rows, d] (the first output's shape), the first output is
    written into it in place. Under shard_map (check_vma) the outputs vary along the axes the inputs
    vary along."""
    ga, gb = a.shape[0] // ta, b.shape[0] // tb
    operands = (floats, where, a, b) + (() if accumulator is None else (accumulator,))
    mat = jax.sharding.ManualAxisType(varying=varying(*operands))
    d = a.shape[1]
    out_bytes = 4 * ga * sum(rows * width for rows, width in outs)
    row_block = pl.BlockSpec((ta, d), lambda i, j: (i, 0))
    return pl.pallas_call(
        kernel,
        grid=(ga, gb),
        in_specs=[
            pl.BlockSpec(memory_space=pltpu.SMEM),
            pl.BlockSpec(memory_space=pltpu.SMEM),
            row_block,
            pl.BlockSpec((tb, d), lambda i, j: (j, 0)),
        ]
        + ([] if accumulator is None else [row_block]),
        out_specs=[pl.BlockSpec((rows, width), lambda i, j: (i, 0)) for rows, width in outs],
        out_shape=[jax.ShapeDtypeStruct((ga * rows, width), jnp.float32, manual_axis_type=mat) for rows, width in outs],
        scratch_shapes=scratch,
        input_output_aliases={} if accumulator is None else {4: 0},
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=pl.CostEstimate(
            flops=int(flops),
            transcendentals=int(transcendentals),
            bytes_accessed=int((a.size + ga * b.size) * a.dtype.itemsize + 2 * out_bytes),
        ),
        interpret=interpret,
    )(*operands)


def _block_loss(xp, yp, scale, bias, where, *, images, texts, tiles, interpret):
    """Sum of softplus(-z S) over the block's real entries (f32 scalar). Memory: [8, 128] f32 of
    partial sums per row tile."""
    tn, tm = tiles
    (partial_sums,) = _call(
        functools.partial(_loss_kernel, images=images, texts=texts),
        jnp.stack([scale, bias]),
        where,
        xp,
        yp,
        None,
        [(_SUBLANES, LANES)],
        [pltpu.VMEM((tn, LANES), jnp.float32)],
        ta=tn,
        tb=tm,
        flops=2 * xp.shape[0] * yp.shape[0] * xp.shape[1],
        transcendentals=2 * xp.shape[0] * yp.shape[0],
        interpret=interpret,
    )
    return jnp.sum(partial_sums)


def _block_grads(xp, yp, scale, bias, coef, dx, dy, where, *, images, texts, tiles, interpret):
    """Adds the gradients of coef * (the block's loss sum) to dX [n_pad, d_pad] and dY [m_pad, d_pad]
    (f32, updated in place) and returns them with d scale and d bias (f32 scalars). Two kernels,
    each recomputing S tile by tile: one reduces over texts (dX, d scale, d bias), one over images
    (dY). Memory beyond dX and dY: [8, 128] f32 of partial sums per row tile."""
    tn, tm = tiles
    np_, mp, d = xp.shape[0], yp.shape[0], xp.shape[1]
    floats = jnp.stack([scale, bias, coef])
    cost = {"flops": 4 * np_ * mp * d, "transcendentals": np_ * mp, "interpret": interpret}
    sizes = {"images": images, "texts": texts}
    dx, dscale, dbias = _call(
        functools.partial(_grad_kernel, transposed=False, **sizes),
        floats,
        where,
        xp,
        yp,
        dx,
        [(tn, d), (_SUBLANES, LANES), (_SUBLANES, LANES)],
        [pltpu.VMEM((tn, d), jnp.float32)] + 2 * [pltpu.VMEM((tn, LANES), jnp.float32)],
        ta=tn,
        tb=tm,
        **cost,
    )
    (dy,) = _call(
        functools.partial(_grad_kernel, transposed=True, **sizes),
        floats,
        where,
        yp,
        xp,
        dy,
        [(tm, d)],
        [pltpu.VMEM((tm, d), jnp.float32)],
        ta=tm,
        tb=tn,
        **cost,
    )
    return dx, dy, jnp.sum(dscale), jnp.sum(dbias)


# ---------------------------------------------------------------------------------------------
# Padding, tiles and input checks.


def _tiles(n, m, d, dtype):
    """Tile heights for rows of X and of Y: the largest whose gradient kernel (two double-buffered
    input blocks, the double-buffered f32 accumulator block read and written in place, its f32
    scratch, a few f32 (t, t) temporaries) fits the VMEM budget, capped by the padded sizes."""
    d_pad, size = round_up(d, LANES), jnp.dtype(dtype).itemsize
    cap = next(
        (t for t in _TILES if 4 * t * d_pad * size + 5 * t * d_pad * 4 + 8 * t * t * 4 <= _VMEM_BUDGET), _TILES[-1]
    )
    return min(cap, round_up(n, LANES)), min(cap, round_up(m, LANES))


def _pad(v, rows):
    """v zero-padded to `rows` rows and to a multiple of 128 columns (zero features change no dot
    product; padded rows are masked in the kernels)."""
    return jnp.pad(v, ((0, rows - v.shape[0]), (0, round_up(v.shape[1], LANES) - v.shape[1])))


# ---------------------------------------------------------------------------------------------
# Single device.


def sigmoid_loss(
    x: jax.Array, y: jax.Array, scale: ArrayLike, bias: ArrayLike, *, interpret: bool | pltpu.InterpretParams = False
) -> jax.Array:
    """The loss of images x [N, D] against texts y [M, D] (f32 scalar) on one device.

    x and y: both float32 or both bfloat16; scale, bias: scalars (any float dtype). Differentiable
    (custom VJP) in all four: dx, dy in the inputs' dtype, d scale and d bias computed in float32
    (returned in their own dtype). The backward pass saves only the inputs and recomputes the
    logits. HBM beyond the inputs: O((N + M) D) (padded copies, f32 gradients), never O(N M).
    `interpret=True` (or a `pltpu.InterpretParams`) runs the kernels in Pallas interpret mode, e.g.
    on CPU. Raises InputError (a ValueError) for bad shapes, dtypes or a non-finite scale or bias;
    finiteness is checked only for concrete values, not under jit (a NaN scale then gives a NaN
    loss)."""
    x, y, scale, bias = check_loss_inputs("sigmoid_loss", x, y, scale, bias, same_shape=False)
    return _single(x, y, scale, bias, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _single(x, y, scale, bias, interpret):
    return _single_fwd(x, y, scale, bias, interpret)[0]


def _single_fwd(x, y, scale, bias, interpret):
    (n, d), m = x.shape, y.shape[0]
    tiles = _tiles(n, m, d, x.dtype)
    total = _block_loss(
        _pad(x, round_up(n, tiles[0])),
        _pad(y, round_up(m, tiles[1])),
        scale,
        bias,
        _where(0, 0, True),
        images=n,
        texts=m,
        tiles=tiles,
        interpret=interpret,
    )
    return total / n, (x, y, scale, bias)


def _single_bwd(interpret, residuals, g):
    x, y, scale, bias = residuals
    (n, d), m = x.shape, y.shape[0]
    tiles = _tiles(n, m, d, x.dtype)
    xp, yp = _pad(x, round_up(n, tiles[0])), _pad(y, round_up(m, tiles[1]))
    dx, dy, dscale, dbias = _block_grads(
        xp,
        yp,
        scale,
        bias,
        g / n,
        jnp.zeros(xp.shape, jnp.float32),
        jnp.zeros(yp.shape, jnp.float32),
        _where(0, 0, True),
        images=n,
        texts=m,
        tiles=tiles,
        interpret=interpret,
    )
    return dx[:n, :d].astype(x.dtype), dy[:m, :d].astype(y.dtype), dscale, dbias


_single.defvjp(_single_fwd, _single_bwd)


# ---------------------------------------------------------------------------------------------
# Device ring (inside shard_map). Device k holds images and texts k*n .. k*n + n - 1. Its texts go
# round in passes of `pass_rows` rows: in pass p every device sends rows p*r .. p*r + r - 1 of its
# chunk once round the ring. At ring step s a device holds that part of the chunk of device k - s
# (mod P) and passes it on to k + 1; step 0 (its own texts) is the only one with positives.


def sharded_sigmoid_loss(
    x: jax.Array,
    y: jax.Array,
    scale: ArrayLike,
    bias: ArrayLike,
    *,
    axis_name: str | tuple[str, ...],
    pass_rows: int = 512,
    interpret: bool | pltpu.InterpretParams = False,
) -> jax.Array:
    """The global loss (f32 scalar, the same on every device), called inside `shard_map` over
    `axis_name` with this device's images x [n, D] and texts y [n, D] (global N = n * axis size).

    Forward: for each pass of at most ``pass_rows`` texts, P ring steps, each scoring the local
    images against the texts held, then ppermuting them to the next device. Backward (one custom
    VJP around all passes, saving only x, y, scale, bias): the rings again, recomputing; dx
    accumulates in place while the f32 gradient of the texts on their way travels with them and
    arrives home complete after the full circle. Per-device memory: one f32 [n, D] (dx) plus a few
    pass-sized buffers (the texts in flight and their f32 gradient), for any P; never O(P n D) and
    never the n x N logits. Smaller passes need less memory for the same ring traffic, at more
    kernel launches. Works with shard_map's check_vma on or off; scale and bias may be replicated
    (the usual case) or device-varying.

    On CPU, `interpret=True` (Pallas' HLO interpreter) needs `shard_map(..., check_vma=False)`:
    in jax 0.10 it cannot evaluate a kernel on device-varying values. With check_vma on, pass
    `interpret=pltpu.InterpretParams()` (the TPU interpreter), whose per-kernel barrier across the
    simulated devices needs a free host thread per device."""
    x, y, scale, bias = check_loss_inputs("sharded_sigmoid_loss", x, y, scale, bias, same_shape=False)
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"sharded_sigmoid_loss: each device needs as many texts as images, got x {x.shape} and y {y.shape}"
        )
    if isinstance(pass_rows, bool) or not isinstance(pass_rows, int) or pass_rows < 1:
        raise InputError(f"sharded_sigmoid_loss: pass_rows must be a positive integer, got {pass_rows!r}")
    return _ring(x, y, scale, bias, axis_name, pass_rows, interpret)


def _ring_setup(x, y, axis_name, pass_rows):
    """(ring size, tiles, rows per pass, passes, padded x, padded y, shift to the next device)."""
    size = lax.axis_size(axis_name)
    n, d = x.shape
    tiles = _tiles(n, min(n, pass_rows), d, x.dtype)
    rows = round_up(min(n, pass_rows), tiles[1])
    passes = -(-n // rows)
    shift = functools.partial(lax.ppermute, axis_name=axis_name, perm=[(k, (k + 1) % size) for k in range(size)])
    return size, tiles, rows, passes, _pad(x, round_up(n, tiles[0])), _pad(y, passes * rows), shift


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _ring(x, y, scale, bias, axis_name, pass_rows, interpret):
    return _ring_fwd(x, y, scale, bias, axis_name, pass_rows, interpret)[0]


def _ring_fwd(x, y, scale, bias, axis_name, pass_rows, interpret):
    size, tiles, rows, passes, xp, yp, shift = _ring_setup(x, y, axis_name, pass_rows)
    n = x.shape[0]
    loss = functools.partial(
        _block_loss, xp, scale=scale, bias=bias, images=n, texts=n, tiles=tiles, interpret=interpret
    )

    def one_pass(p):
        first = p * rows
        texts = lax.dynamic_slice_in_dim(yp, first, rows)
        total = loss(texts, where=_where(0, first, True))
        if size == 1:
            return total

        # Each step's texts are sent on while they are being scored (no data dependence between the two).
        def step(_, carry):
            texts, total = carry
            return shift(texts), total + loss(texts, where=_where(0, first, False))

        texts, total = lax.fori_loop(0, size - 2, step, (shift(texts), total))
        return total + loss(texts, where=_where(0, first, False))

    total = lax.fori_loop(1, passes, lambda p, total: total + one_pass(p), one_pass(0))
    return lax.psum(total, axis_name) / (n * size), (x, y, scale, bias)


def _ring_bwd(axis_name, pass_rows, interpret, residuals, g):
    x, y, scale, bias = residuals
    size, tiles, rows, passes, xp, yp, shift = _ring_setup(x, y, axis_name, pass_rows)
    n, d = x.shape
    # The cotangent of the global loss. With check_vma on, a replicated loss gets it whole on every
    # device; with check_vma off (or a per-device loss), the devices' shares sum to it.
    checked = axis_name in varying(x)
    if not (checked and axis_name not in varying(g)):
        g = lax.psum(g, axis_name)
    grads = functools.partial(
        _block_grads,
        xp,
        scale=scale,
        bias=bias,
        coef=g / (n * size),
        images=n,
        texts=n,
        tiles=tiles,
        interpret=interpret,
    )

    def one_pass(p, dx):
        """Pass p once round the ring: dx with its share added, the complete f32 gradient of this
        device's texts of the pass (home again), and the pass's d scale, d bias shares."""
        first = p * rows
        texts = lax.dynamic_slice_in_dim(yp, first, rows)
        dx, dtexts, dscale, dbias = grads(
            texts, dx=dx, dy=_zeros_like(texts, jnp.float32), where=_where(0, first, True)
        )
        if size == 1:
            return dx, dtexts, dscale, dbias

        def step(_, carry):
            texts, dtexts, dx, dscale, dbias = carry
            dx, dtexts, gs, gb = grads(texts, dx=dx, dy=dtexts, where=_where(0, first, False))
            return shift(texts), shift(dtexts), dx, dscale + gs, dbias + gb

        texts, dtexts, dx, dscale, dbias = lax.fori_loop(
            0, size - 2, step, (shift(texts), shift(dtexts), dx, dscale, dbias)
        )
        dx, dtexts, gs, gb = grads(texts, dx=dx, dy=dtexts, where=_where(0, first, False))
        return dx, shift(dtexts), dscale + gs, dbias + gb

    def next_pass(p, carry):
        dx, dy, dscale, dbias = carry
        dx, dtexts, gs, gb = one_pass(p, dx)
        return dx, lax.dynamic_update_slice_in_dim(dy, dtexts.astype(dy.dtype), p * rows, 0), dscale + gs, dbias + gb

    dx, dtexts, dscale, dbias = one_pass(0, _zeros_like(xp, jnp.float32))
    dy = lax.dynamic_update_slice_in_dim(_zeros_like(yp, y.dtype), dtexts.astype(y.dtype), 0, 0)
    dx, dy, dscale, dbias = lax.fori_loop(1, passes, next_pass, (dx, dy, dscale, dbias))
    # dscale, dbias are this device's rows' share. A replicated scale/bias (check_vma on) needs the
    # total; with check_vma off, shard_map's transpose sums the shares itself.
    if checked:
        dscale, dbias = (
            lax.psum(v, axis_name) if axis_name not in varying(p) else v for v, p in ((dscale, scale), (dbias, bias))
        )
    return dx[:n, :d].astype(x.dtype), dy[:n, :d], dscale, dbias


def _zeros_like(v, dtype):
    """Zeros of v's shape that vary along the same mesh axes as v (loop carries must keep their type)."""
    zeros = jnp.zeros(v.shape, dtype)
    axes = tuple(sorted(varying(v)))
    return lax.pcast(zeros, axes, to="varying") if axes else zeros


_ring.defvjp(_ring_fwd, _ring_bwd)
