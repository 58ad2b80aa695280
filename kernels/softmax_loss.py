"""The CLIP (softmax) contrastive loss as fused Pallas TPU (Mosaic) kernels.

For image embeddings X [N, D], text embeddings Y [N, D] (row i of each is a positive pair) and
an already-exponentiated ``scale``, the logits are S = scale * X Y^T and the loss is

    ( (1/N) sum_i (lse_j S_ij - S_ii) + (1/N) sum_j (lse_i S_ij - S_jj) ) / 2,

the mean of the image->text and text->image cross-entropies. The kernels walk S tile by tile in
VMEM and never write it to HBM: the forward pass keeps O(N) statistics (log-sum-exps, positive
logits), the backward pass recomputes each tile from X and Y. Accumulation is float32 throughout;
inputs are float32 (matmuls at full f32 precision) or bfloat16 (matmuls at bf16 MXU rate).

Three kernels, each over a 2-D grid of blocks whose second axis is the sequential reduction,
serve both public forms (one device, and data-parallel under shard_map):
  * statistics, grid (row blocks, column blocks): per-row log-sum-exp (online over the column
    blocks, max and sum in VMEM scratch) and positive logit, and per-column max and sum-exp over
    each row block, which the wrapper combines;
  * dX and the per-row parts of d scale, grid (row blocks, column blocks): a row block of X and
    its f32 accumulator stay in VMEM while the column blocks of Y stream past;
  * dY, grid (column blocks, row blocks): the same with the roles swapped.
Rows and columns are padded to whole blocks in the wrappers and masked in the kernels: padded
entries add nothing to any statistic or gradient. D is taken whole in every tile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.typing import ArrayLike

from jaxvlm.errors import InputError
from jaxvlm.kernels.common import LANES, check_loss_inputs

__all__ = ["sharded_softmax_loss", "softmax_loss", "softmax_loss_reference"]

# Block sizes fit v4's 16 MiB of VMEM (the smallest; Mosaic reports the overflow at compile time):
# float32 tiles at full matmul precision spill more temporaries, hence the smaller first block,
# and a [block, D] slab of x or y is kept under _MAX_SLAB bytes (with its double buffer, the
# other operand's, the output's and the f32 accumulator, ~10 slabs are live).
_MAX_BLOCK = {jnp.dtype(jnp.bfloat16): 512, jnp.dtype(jnp.float32): 256}
_MAX_SLAB = 1152 * 1024
# Finite, so that a fully masked row or column gives exp(0), never exp(-inf - -inf) = nan.
_MASKED = -0.7 * float(np.finfo(np.float32).max)


def softmax_loss_reference(x: jax.Array, y: jax.Array, scale: ArrayLike) -> jax.Array:
    """The loss in plain jnp: materialises the N x N logits (O(N^2) memory). Float32 logits."""
    scale = jnp.asarray(scale, jnp.float32)
    logits = scale * jnp.einsum("nd,md->nm", x, y, preferred_element_type=jnp.float32, precision=lax.Precision.HIGHEST)
    positives = jnp.diagonal(logits)
    image_to_text = jax.nn.logsumexp(logits, axis=1) - positives
    text_to_image = jax.nn.logsumexp(logits, axis=0) - positives
    return (image_to_text.mean() + text_to_image.mean()) / 2


def softmax_loss(x: jax.Array, y: jax.Array, scale: ArrayLike, *, interpret: bool = False) -> jax.Array:
    """The loss of ``softmax_loss_reference`` on one device, by the Pallas kernels.

    x, y: [N, D], both float32 or both bfloat16; scale: a scalar. Differentiable in x, y and scale
    (gradients in the inputs' dtypes, scale's in float32). Memory beyond the inputs: O(N) for the
    statistics autodiff keeps, plus the gradients; never N x N. ``interpret=True`` runs the
    kernels in the Pallas interpreter (any backend, e.g. CPU tests).

    A concrete non-finite scale raises InputError (a ValueError); a traced one (under jit) cannot be checked.
    """
    x, y, scale = check_loss_inputs("softmax_loss", x, y, scale, same_shape=True)
    return _loss(x, y, scale, interpret)


def sharded_softmax_loss(
    x: jax.Array, y: jax.Array, scale: ArrayLike, *, axis_name: str | tuple[str, ...], interpret: bool = False
) -> jax.Array:
    """The global loss, called inside ``shard_map`` over the data axis ``axis_name``.

    x, y: this device's shards [n, D] of the global [N, D] batch (N = n * axis size; global
    pair i lives on device i // n); scale: a scalar, the same on every device. Returns the loss
    of the whole batch, the same on every device, differentiable like ``softmax_loss``.

    Y is all-gathered; this device's rows meet all N columns, so row log-sum-exps are local and
    the per-column statistics are combined with a pmax and a psum of [N] vectors. The backward
    pass gathers Y again and recomputes the tiles: dX stays local, dY for all N columns (float32)
    is reduce-scattered to its owners and the partial d scale summed over devices. Memory beyond
    the inputs: the gathered Y and its float32 gradient, [N, D] each, and O(n + N) statistics;
    never n x N.

    ``interpret=True`` needs ``check_vma=False`` on the shard_map (an InputError says so): jax's
    Pallas interpreter does not track varying mesh axes. Compiled kernels work either way.
    """
    x, y, scale = check_loss_inputs("sharded_softmax_loss", x, y, scale, same_shape=True)
    # The loss is a psum of per-device shares, and each device works with its own copy of scale,
    # so autodiff hands every device the full cotangent and sums the partial d scale, with or
    # without shard_map's check_vma.
    share = _sharded_share(x, y, _as_varying(scale, axis_name), axis_name, interpret)
    return lax.psum(share, axis_name)


# ----------------------------------------------------------------------------------------------
# Single device.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _loss(x, y, scale, interpret):
    return _loss_fwd(x, y, scale, interpret)[0]


def _loss_fwd(x, y, scale, interpret):
    row_lse, positives, col_max, col_sum = _statistics(x, y, scale, 0, interpret)
    col_lse = col_max + jnp.log(col_sum)
    loss = (jnp.sum(row_lse) + jnp.sum(col_lse) - 2 * jnp.sum(positives)) / (2 * x.shape[0])
    return loss, (x, y, scale, row_lse, col_lse)


def _loss_bwd(interpret, residuals, cotangent):
    x, y, scale, row_lse, col_lse = residuals
    weight = cotangent / (2 * x.shape[0])
    return _gradients(x, y, scale, 0, row_lse, col_lse, weight, weight, y.dtype, interpret)


_loss.defvjp(_loss_fwd, _loss_bwd)


# ----------------------------------------------------------------------------------------------
# Data-parallel over a shard_map axis.


def _as_varying(value, axis_name):
    """``value`` typed as varying over ``axis_name`` (a no-op without shard_map's check_vma)."""
    axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    invariant = tuple(a for a in axes if a not in jax.typeof(value).mat.varying)
    return lax.pcast(value, invariant, to="varying") if invariant else value


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _sharded_share(x, y, scale, axis_name, interpret):
    """This device's share of the global loss: its rows' and its own columns' terms."""
    return _sharded_share_fwd(x, y, scale, axis_name, interpret)[0]


def _sharded_share_fwd(x, y, scale, axis_name, interpret):
    n = x.shape[0]
    offset = lax.axis_index(axis_name) * n  # global column of local row 0's positive
    y_all = lax.all_gather(y, axis_name, tiled=True)
    row_lse, positives, col_max, col_sum = _statistics(x, y_all, scale, offset, interpret)
    global_max = lax.pmax(col_max, axis_name)
    col_lse = global_max + jnp.log(lax.psum(col_sum * jnp.exp(col_max - global_max), axis_name))
    own_cols = lax.dynamic_slice_in_dim(col_lse, offset, n)
    share = (jnp.sum(row_lse) + jnp.sum(own_cols) - 2 * jnp.sum(positives)) / (2 * y_all.shape[0])
    return share, (x, y, scale, row_lse, col_lse)


def _sharded_share_bwd(axis_name, interpret, residuals, cotangent):
    # The cotangent is the same on every device (the transpose of the psum over the shares), so
    # each device returns its part of the gradient of the whole loss: dX of its rows, dY of all
    # columns from its rows (summed onto the owners), d scale from its rows (summed by autodiff).
    x, y, scale, row_lse, col_lse = residuals
    offset = lax.axis_index(axis_name) * x.shape[0]
    y_all = lax.all_gather(y, axis_name, tiled=True)
    weight = cotangent / (2 * y_all.shape[0])
    dx, dy_all, dscale = _gradients(x, y_all, scale, offset, row_lse, col_lse, weight, weight, jnp.float32, interpret)
    dy = lax.psum_scatter(dy_all, axis_name, scatter_dimension=0, tiled=True)
    return dx, dy.astype(y.dtype), dscale


_sharded_share.defvjp(_sharded_share_fwd, _sharded_share_bwd)


# ----------------------------------------------------------------------------------------------
# Wrappers: padding, block specs, combining the per-block column statistics.


def _blocks(size, d, dtype):
    """(block, padded size) for ``size`` rows of [size, d] ``dtype``: a multiple of 128, at most
    the largest block that fits VMEM, as even as can be (the last block is never all padding)."""
    max_block = _MAX_BLOCK[dtype]
    while max_block > LANES and max_block * d * dtype.itemsize > _MAX_SLAB:
        max_block //= 2
    count = pl.cdiv(size, max_block)
    block = pl.cdiv(pl.cdiv(size, count), LANES) * LANES
    return block, block * count


def _pad_rows(a, rows):
    return jnp.pad(a, ((0, rows - a.shape[0]),) + ((0, 0),) * (a.ndim - 1))


def _precision(dtype):
    # Mosaic's default f32 matmul may use fewer bf16 passes; f32 inputs ask for full precision.
    return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _scalars(*values, dtype):
    return jnp.stack([jnp.asarray(v, dtype) for v in values])


def _out_shapes(operands, interpret, *shapes_dtypes):
    """Kernel output types; under shard_map (check_vma) they vary over every axis an operand does."""
    varying = frozenset().union(*(jax.typeof(a).mat.varying for a in operands))
    if interpret and varying:
        raise InputError(
            "softmax_loss: interpret mode inside shard_map needs check_vma=False (jax's Pallas "
            "interpreter does not track varying mesh axes; compiled kernels have no such limit)"
        )
    mat = jax.sharding.ManualAxisType(varying=varying)
    return [jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat) for shape, dtype in shapes_dtypes]


_SMEM = pl.BlockSpec(memory_space=pltpu.SMEM)


def _statistics(x, y, scale, offset, interpret):
    """Row log-sum-exp [n], positive logits [n] and column max and sum-exp over x's rows [m].

    x: [n, D] rows, y: [m, D] columns; local row r's positive is column ``offset + r``.
    HBM beyond the inputs (and their padding): [n] row vectors and [n / block, m] column partials.
    """
    (n, d), m = x.shape, y.shape[0]
    tn, n_pad = _blocks(n, d, x.dtype)
    tm, m_pad = _blocks(m, d, x.dtype)
    grid = (n_pad // tn, m_pad // tm)
    row_spec = pl.BlockSpec((tn, 1), lambda i, j: (i, 0))
    col_spec = pl.BlockSpec((None, 1, tm), lambda i, j: (i, 0, j))
    operands = (
        _scalars(offset, dtype=jnp.int32),
        _scalars(scale, dtype=jnp.float32),
        _pad_rows(x, n_pad),
        _pad_rows(y, m_pad),
    )
    row_stat, col_stat = ((n_pad, 1), jnp.float32), ((grid[0], 1, m_pad), jnp.float32)
    row_lse, positives, col_max, col_sum = pl.pallas_call(
        functools.partial(_statistics_kernel, n=n, m=m, precision=_precision(x.dtype)),
        grid=grid,
        in_specs=[_SMEM, _SMEM, pl.BlockSpec((tn, d), lambda i, j: (i, 0)), pl.BlockSpec((tm, d), lambda i, j: (j, 0))],
        out_specs=[row_spec, row_spec, col_spec, col_spec],
        out_shape=_out_shapes(operands, interpret, row_stat, row_stat, col_stat, col_stat),
        scratch_shapes=[pltpu.VMEM((tn, 1), jnp.float32)] * 3,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=pl.CostEstimate(
            flops=2 * n_pad * m_pad * d,
            transcendentals=2 * n_pad * m_pad,
            bytes_accessed=(n_pad + grid[0] * m_pad) * d * x.dtype.itemsize,
        ),
        interpret=interpret,
        name="softmax_loss_statistics",
    )(*operands)
    block_max, block_sum = col_max[:, 0, :m], col_sum[:, 0, :m]
    col_max = jnp.max(block_max, axis=0)
    col_sum = jnp.sum(block_sum * jnp.exp(block_max - col_max), axis=0)
    return row_lse[:n, 0], positives[:n, 0], col_max, col_sum


def _gradients(x, y, scale, offset, row_lse, col_lse, row_weight, col_weight, dy_dtype, interpret):
    """The gradients through x's rows of the logits of

        row_weight * sum_i (row_lse_i - S_i,i+offset) + col_weight * sum_j (col_lse_j - S_j-offset,j)

    given the row log-sum-exps and the column ones (over all rows, on any device): dX [n, D]
    (x.dtype), the part of dY [m, D] (dy_dtype) and of d scale (f32) that comes from x's rows.
    HBM beyond the inputs: the gradients.
    """
    (n, d), m = x.shape, y.shape[0]
    tn, n_pad = _blocks(n, d, x.dtype)
    tm, m_pad = _blocks(m, d, x.dtype)
    # Padded entries are masked in the kernels.
    row_lse, col_lse = jnp.pad(row_lse, (0, n_pad - n)), jnp.pad(col_lse, (0, m_pad - m))
    operands = (
        _scalars(offset, dtype=jnp.int32),
        _scalars(scale, row_weight, col_weight, dtype=jnp.float32),
        _pad_rows(x, n_pad),
        _pad_rows(y, m_pad),
    )
    precision = _precision(x.dtype)
    cost = pl.CostEstimate(
        flops=4 * n_pad * m_pad * d,
        transcendentals=2 * n_pad * m_pad,
        bytes_accessed=(n_pad + m_pad) * d * (x.dtype.itemsize + 4),
    )
    compiler_params = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))

    rows_x = pl.BlockSpec((tn, d), lambda i, j: (i, 0))
    cols_y = pl.BlockSpec((tm, d), lambda i, j: (j, 0))
    row_col = pl.BlockSpec((tn, 1), lambda i, j: (i, 0))
    dx, dscale = pl.pallas_call(
        functools.partial(_dx_kernel, n=n, m=m, precision=precision),
        grid=(n_pad // tn, m_pad // tm),
        in_specs=[_SMEM, _SMEM, rows_x, cols_y, row_col, pl.BlockSpec((1, tm), lambda i, j: (0, j))],
        out_specs=[rows_x, row_col],
        out_shape=_out_shapes(operands, interpret, ((n_pad, d), x.dtype), ((n_pad, 1), jnp.float32)),
        scratch_shapes=[pltpu.VMEM((tn, d), jnp.float32), pltpu.VMEM((tn, 1), jnp.float32)],
        compiler_params=compiler_params,
        cost_estimate=cost,
        interpret=interpret,
        name="softmax_loss_dx",
    )(*operands, row_lse[:, None], col_lse[None, :])

    # The dY grid is (column blocks, row blocks): a column block stays resident, rows stream.
    cols_y = pl.BlockSpec((tm, d), lambda j, i: (j, 0))
    dy = pl.pallas_call(
        functools.partial(_dy_kernel, n=n, m=m, precision=precision),
        grid=(m_pad // tm, n_pad // tn),
        in_specs=[
            _SMEM,
            _SMEM,
            pl.BlockSpec((tn, d), lambda j, i: (i, 0)),
            cols_y,
            pl.BlockSpec((1, tn), lambda j, i: (0, i)),
            pl.BlockSpec((tm, 1), lambda j, i: (j, 0)),
        ],
        out_specs=cols_y,
        out_shape=_out_shapes(operands, interpret, ((m_pad, d), dy_dtype))[0],
        scratch_shapes=[pltpu.VMEM((tm, d), jnp.float32)],
        compiler_params=compiler_params,
        cost_estimate=cost,
        interpret=interpret,
        name="softmax_loss_dy",
    )(*operands, row_lse[None, :], col_lse[:, None])
    return dx[:n], dy[:m], jnp.sum(dscale)


# ----------------------------------------------------------------------------------------------
# Kernels. A tile is [block of the grid's first axis, block of its second], float32 in VMEM.


def _tile_dot(a, b, precision):
    """a [p, D] . b [q, D]^T -> [p, q] float32, contracting D of both (no transpose in memory)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32, precision=precision)


def _tile_masks(shape, row_start, col_start, offset, n, m, transposed=False):
    """(positive, valid) boolean masks of a tile whose first axis starts at local row ``row_start``
    and second at column ``col_start`` (the other way round when ``transposed``): positive marks
    column == row + offset, valid the rows < n and columns < m (None when n and m are whole
    blocks: only the last block of an axis can hold padding)."""
    first, second = (lax.broadcasted_iota(jnp.int32, shape, a) for a in (0, 1))
    rows, cols = (second, first) if transposed else (first, second)
    rows, cols = rows + row_start, cols + col_start
    (tn, tm) = shape[::-1] if transposed else shape
    valid = None
    if n % tn:
        valid = rows < n
    if m % tm:
        valid = cols < m if valid is None else valid & (cols < m)
    return cols == rows + offset, valid


def _statistics_kernel(
    offset_ref,
    scale_ref,
    x_ref,
    y_ref,
    row_lse_ref,
    positive_ref,
    col_max_ref,
    col_sum_ref,
    max_sc,
    sum_sc,
    positive_sc,
    *,
    n,
    m,
    precision,
):
    i, j = pl.program_id(0), pl.program_id(1)
    (tn, _), (tm, _) = x_ref.shape, y_ref.shape
    offset = offset_ref[0]

    @pl.when(j == 0)
    def _():
        max_sc[...] = jnp.full_like(max_sc, _MASKED)
        sum_sc[...] = jnp.zeros_like(sum_sc)
        positive_sc[...] = jnp.zeros_like(positive_sc)

    logits = scale_ref[0] * _tile_dot(x_ref[...], y_ref[...], precision)
    positive, valid = _tile_masks(logits.shape, i * tn, j * tm, offset, n, m)
    if valid is not None:
        logits = jnp.where(valid, logits, _MASKED)

    # Online log-sum-exp along the rows, carried across column blocks.
    old_max = max_sc[...]
    new_max = jnp.maximum(old_max, jnp.max(logits, axis=1, keepdims=True))
    sum_sc[...] = sum_sc[...] * jnp.exp(old_max - new_max) + jnp.sum(jnp.exp(logits - new_max), axis=1, keepdims=True)
    max_sc[...] = new_max

    # Column statistics over this block's rows; the wrapper combines them across row blocks.
    col_max = jnp.max(logits, axis=0, keepdims=True)
    col_max_ref[...] = col_max
    col_sum_ref[...] = jnp.sum(jnp.exp(logits - col_max), axis=0, keepdims=True)

    first_positive = i * tn + offset  # the column of this row block's first positive

    @pl.when((first_positive < (j + 1) * tm) & (j * tm < first_positive + tn))
    def _():
        positive_sc[...] += jnp.sum(jnp.where(positive, logits, 0.0), axis=1, keepdims=True)

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        row_lse_ref[...] = max_sc[...] + jnp.log(sum_sc[...])
        positive_ref[...] = positive_sc[...]


def _logit_gradient(logits, row_lse, col_lse, row_weight, col_weight, positive, valid):
    """d loss / d logits of a tile: row_weight * (softmax over the row - onehot) + col_weight *
    (softmax over the column - onehot), zero where not valid."""
    grad = row_weight * jnp.exp(logits - row_lse) + col_weight * jnp.exp(logits - col_lse)
    # The one-hot goes in here, in f32, before the bf16 cast for the MXU: on a well-trained
    # batch softmax(positive) is close to 1 and 1 - p would be lost to bf16 rounding.
    grad = jnp.where(positive, grad - (row_weight + col_weight), grad)
    # A select, not a product: exponents of padded entries may overflow to inf.
    return grad if valid is None else jnp.where(valid, grad, 0.0)


def _dx_kernel(
    offset_ref,
    floats_ref,
    x_ref,
    y_ref,
    row_lse_ref,
    col_lse_ref,
    dx_ref,
    dscale_ref,
    dx_sc,
    dscale_sc,
    *,
    n,
    m,
    precision,
):
    i, j = pl.program_id(0), pl.program_id(1)
    (tn, _), (tm, _) = x_ref.shape, y_ref.shape
    scale, row_weight, col_weight = floats_ref[0], floats_ref[1], floats_ref[2]

    @pl.when(j == 0)
    def _():
        dx_sc[...] = jnp.zeros_like(dx_sc)
        dscale_sc[...] = jnp.zeros_like(dscale_sc)

    y = y_ref[...]
    dot = _tile_dot(x_ref[...], y, precision)
    positive, valid = _tile_masks(dot.shape, i * tn, j * tm, offset_ref[0], n, m)
    grad = _logit_gradient(scale * dot, row_lse_ref[...], col_lse_ref[...], row_weight, col_weight, positive, valid)
    dx_sc[...] += jnp.dot(grad.astype(y.dtype), y, preferred_element_type=jnp.float32, precision=precision)
    dscale_sc[...] += jnp.sum(grad * dot, axis=1, keepdims=True)

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        dx_ref[...] = (scale * dx_sc[...]).astype(dx_ref.dtype)
        dscale_ref[...] = dscale_sc[...]


def _dy_kernel(offset_ref, floats_ref, x_ref, y_ref, row_lse_ref, col_lse_ref, dy_ref, dy_sc, *, n, m, precision):
    j, i = pl.program_id(0), pl.program_id(1)
    (tn, _), (tm, _) = x_ref.shape, y_ref.shape
    scale, row_weight, col_weight = floats_ref[0], floats_ref[1], floats_ref[2]

    @pl.when(i == 0)
    def _():
        dy_sc[...] = jnp.zeros_like(dy_sc)

    x = x_ref[...]
    # The transposed tile [columns, rows], so that dY = grad^T X is a plain matmul.
    dot = _tile_dot(y_ref[...], x, precision)
    positive, valid = _tile_masks(dot.shape, i * tn, j * tm, offset_ref[0], n, m, transposed=True)
    grad = _logit_gradient(scale * dot, row_lse_ref[...], col_lse_ref[...], row_weight, col_weight, positive, valid)
    dy_sc[...] += jnp.dot(grad.astype(x.dtype), x, preferred_element_type=jnp.float32, precision=precision)

    @pl.when(i == pl.num_programs(1) - 1)
    def _():
        dy_ref[...] = (scale * dy_sc[...]).astype(dy_ref.dtype)
