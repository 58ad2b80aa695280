"""Training objectives: CLIP's softmax and SigLIP's sigmoid contrastive losses over the whole
batch (on a mesh: the multi-device forms of `jaxvlm.ops` under `shard_map` over the batch axes),
in-batch retrieval accuracy, and CoCa's captioning loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxvlm import ops
from jaxvlm.parallel import BATCH_AXES


def _split_axes(mesh: Mesh | None):
    """The batch axes the rows are split over (those of size > 1): a single name when there is one."""
    axes = () if mesh is None else tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    return axes[0] if len(axes) == 1 else axes


def _over_batch(fn, mesh: Mesh | None, rows: tuple, scalars: tuple):
    """``fn(*rows, *scalars, axis_name)``. On a mesh of several devices it runs under shard_map,
    manual over every mesh axis (Mosaic kernels cannot be partitioned automatically): the rows
    split over the batch axes of size > 1 (``axis_name``) and replicated over the others, the
    scalars replicated. check_vma is off: the kernels then treat the gradient of the replicated
    result as shares that sum (see jaxvlm.kernels)."""
    if mesh is None or mesh.size == 1:
        return fn(*rows, *scalars, None)
    axes = _split_axes(mesh)
    row_spec = P(axes) if axes else P()
    return jax.shard_map(
        lambda *a: fn(*a, axes or None),
        mesh=mesh,
        out_specs=P(),
        check_vma=False,
        in_specs=(row_spec,) * len(rows) + (P(),) * len(scalars),
    )(*rows, *scalars)


def contrastive_loss(
    kind: str,
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array | None = None,
    *,
    mesh: Mesh | None = None,
    implementation: str = "auto",
) -> jax.Array:
    """The loss of L2-normalised image and text embeddings [N, D] (pair i is positive), with
    logit scale exp(t) and, for "sigmoid", bias b. On ``mesh`` the rows are split over its batch
    axes and the loss is still that of the whole batch."""
    if kind == "softmax":

        def fn(x, y, scale, axis_name):
            return ops.softmax_contrastive_loss(x, y, scale, axis_name=axis_name, implementation=implementation)

        return _over_batch(fn, mesh, (zimg, ztxt), (jnp.exp(t),))

    def fn(x, y, scale, bias, axis_name):
        return ops.sigmoid_contrastive_loss(x, y, scale, bias, axis_name=axis_name, implementation=implementation)

    return _over_batch(fn, mesh, (zimg, ztxt), (jnp.exp(t), b))


def retrieval_accuracy(zimg: jax.Array, ztxt: jax.Array, *, mesh: Mesh | None = None) -> jax.Array:
    """Fraction of images whose most similar text in the batch is their own (on a mesh each
    device scores its images against the gathered texts)."""

    def fn(x, y, axis_name):
        first = 0
        if axis_name:
            first = jax.lax.axis_index(axis_name) * x.shape[0]
            y = jax.lax.all_gather(y, axis_name, tiled=True)
        best = jnp.argmax(jnp.dot(x, y.T, preferred_element_type=jnp.float32), axis=1)
        hits = jnp.sum(best == first + jnp.arange(x.shape[0]))
        total = hits if not axis_name else jax.lax.psum(hits, axis_name)
        return total / y.shape[0]

    return _over_batch(fn, mesh, (jax.lax.stop_gradient(zimg), jax.lax.stop_gradient(ztxt)), ())


def caption_nll(caption_logits: jax.Array, ids: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """CoCa's teacher-forced captioning loss as (sum of token negative log-likelihoods, token
    count): caption_logits[:, i] predicts ids[:, i + 1]; padding targets are ignored. The mean
    is sum / count (open_clip's cross-entropy with ignore_index = pad); keeping the two apart
    lets micro-batches add up to exactly the full batch's mean."""
    logits = caption_logits[:, :-1].astype(jnp.float32)
    targets = ids[:, 1:]
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    mask = targets != pad_id
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask)
