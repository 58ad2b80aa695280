"""The train step: CLIP (softmax), SigLIP (sigmoid) and CoCa (contrastive + captioning)
objectives, gradient accumulation over micro-batches, the NaN guard and the logit-scale clamp.

Gradient accumulation for a contrastive loss cannot average micro-batch gradients: each
micro-batch's loss would only see its own negatives. Instead (GradCache): embed every micro-batch
without gradients, compute the loss of the whole batch and its gradient with respect to the
embeddings, then run each micro-batch again and backpropagate that cached embedding gradient
through the towers. The result is the full batch's gradient, at the activation memory of one
micro-batch.

BatchNorm (``batch_norm``): "frozen" normalises with the running statistics and leaves them as they
are; "train" normalises each batch by its own statistics (under jit over a batch sharded on the data
axes, global ones: GSPMD reduces across the shards) and returns the updated running statistics through
the loss's aux. With micro-batches, each micro-batch is normalised by its own statistics in both passes
(so the second pass recomputes exactly the embeddings the first cached), and the running statistics are
updated once per micro-batch, in order, in the first pass only (the second pass's updates, repeats, are
dropped): as k steps of micro-batches would, and as PyTorch's gradient accumulation does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm import losses, parallel
from jaxvlm.models import Embeddings
from jaxvlm.preprocess import PreprocessConfig, normalize_images
from jaxvlm.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: str  # "softmax" (CLIP) or "sigmoid" (SigLIP)
    caption: bool  # CoCa: add the captioning loss
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0
    pad_id: int = 0  # the tokenizer's padding id: caption targets holding it are ignored
    implementation: str = "auto"  # contrastive loss: auto, xla or pallas (see jaxvlm.ops)
    batch_accuracy: bool = True  # log in-batch image->text top-1 accuracy (gathers the texts)


def embed(
    module: nn.Module,
    params: Any,
    batch: dict,
    rng: jax.Array,
    caption: bool,
    preprocess: PreprocessConfig,
    batch_stats: Any = None,
    train_stats: bool = False,
) -> tuple[Embeddings, Any]:
    """The model's `embed` of a batch (caption logits only with ``caption``) and BatchNorm's running
    statistics: ``batch_stats`` as given, or with ``train_stats`` updated by this batch (which is then
    normalised by its own statistics). uint8 images (pixels, or NaFlex patches) are normalised here per
    `preprocess`; float images are taken as normalised."""
    images = normalize_images(batch["image"], preprocess)
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    call = dict(method="embed", rngs={"dropout": rng})
    if not (train_stats and batch_stats):
        return module.apply(variables, images, batch["text"], caption, **call), batch_stats or {}
    embeddings, updated = module.apply(variables, images, batch["text"], caption, mutable=["batch_stats"], **call)
    return embeddings, updated["batch_stats"]


def make_gradients(
    module: nn.Module,
    objective: Objective,
    *,
    mesh: Mesh | None,
    preprocess: PreprocessConfig,
    microbatches: int = 1,
    batch_norm: str = "train",
) -> Callable:
    """``gradients(params, batch, rng, batch_stats=None) -> (loss, loss terms, image embeddings, text
    embeddings, gradients, batch_stats)`` of the whole batch; with ``microbatches`` > 1 by gradient
    caching; ``batch_norm``: "frozen" or "train" (see above)."""
    train_stats = batch_norm == "train"

    def contrastive(zimg, ztxt, t, b):
        return losses.contrastive_loss(
            objective.loss, zimg, ztxt, t, b, mesh=mesh, implementation=objective.implementation
        )

    def caption_tokens(batch):
        return jnp.maximum(jnp.sum(batch["text"][:, 1:] != objective.pad_id), 1)

    def total(terms):
        value = objective.contrastive_weight * terms["contrastive_loss"]
        if objective.caption:
            value = value + objective.caption_weight * terms["caption_loss"]
        return value

    def full_batch(params, batch, rng, batch_stats=None):
        def loss_fn(params):
            (zimg, ztxt, caption_logits), stats = embed(
                module, params, batch, rng, objective.caption, preprocess, batch_stats, train_stats
            )
            terms = {"contrastive_loss": contrastive(zimg, ztxt, params["t"], params.get("b"))}
            if objective.caption:
                nll, _ = losses.caption_nll(caption_logits, batch["text"], objective.pad_id)
                terms["caption_loss"] = nll / caption_tokens(batch)
            return total(terms), (terms, zimg, ztxt, stats)

        (loss, (terms, zimg, ztxt, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, terms, zimg, ztxt, grads, stats

    def accumulated(params, batch, rng, batch_stats=None):
        parts = jax.tree.map(lambda x: _interleave(x, microbatches, mesh), batch)
        take = lambda tree, i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, 1, keepdims=False), tree)

        def forward(stats, i):  # the running statistics updated by each micro-batch in turn
            (zi, zt, _), stats = embed(module, params, take(parts, i), rng, False, preprocess, stats, train_stats)
            return stats, (zi, zt)

        stats, (zimg, ztxt) = jax.lax.scan(forward, batch_stats or {}, jnp.arange(microbatches))
        zimg, ztxt = _merge(zimg), _merge(ztxt)
        t, b = params["t"], params.get("b")
        closs, (gimg, gtxt, gt, gb) = jax.value_and_grad(contrastive, argnums=(0, 1, 2, 3))(zimg, ztxt, t, b)
        weight = objective.contrastive_weight
        tokens = caption_tokens(batch)

        def backward(acc, i):
            mb, gimg_mb, gtxt_mb = take((parts, cached_gimg, cached_gtxt), i)

            def surrogate(p):  # its gradient is this micro-batch's share of the full loss's
                (zi, zt, caption_logits), _ = embed(
                    module, p, mb, rng, objective.caption, preprocess, batch_stats, train_stats
                )
                value = weight * (jnp.vdot(zi, gimg_mb) + jnp.vdot(zt, gtxt_mb))
                nll = jnp.zeros((), jnp.float32)
                if objective.caption:
                    nll, _ = losses.caption_nll(caption_logits, mb["text"], objective.pad_id)
                    value = value + objective.caption_weight * nll / tokens
                return value, nll

            grads, nll = jax.grad(surrogate, has_aux=True)(params)
            return jax.tree.map(jnp.add, acc, (grads, nll)), None

        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))
        cached_gimg, cached_gtxt = (_interleave(g, microbatches, mesh) for g in (gimg, gtxt))
        (grads, nll), _ = jax.lax.scan(backward, zeros, jnp.arange(microbatches))
        grads["t"] = grads["t"] + weight * gt
        if b is not None:
            grads["b"] = grads["b"] + weight * gb
        terms = {"contrastive_loss": closs}
        if objective.caption:
            terms["caption_loss"] = nll / tokens
        return total(terms), terms, zimg, ztxt, grads, stats

    return full_batch if microbatches == 1 else accumulated


def make_train_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    objective: Objective,
    *,
    mesh: Mesh | None,
    preprocess: PreprocessConfig,
    schedule: optax.Schedule,
    trainable: Any,
    microbatches: int = 1,
    logit_scale_max: float | None = None,
    batch_norm: str = "train",
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``step(state, batch) -> (state, metrics)``, to be jitted. ``batch``: {"image": u8 [B, H, W, 3]
    pixels (normalised per ``preprocess`` on the device) or f32 normalised, or a NaFlex model's
    `NaFlexImages` (u8 or f32 patches), "text": i32 [B, L]}
    (B a multiple of ``microbatches``). ``trainable``: tree of bools, False
    for frozen parameters (kept bitwise as they are). A step whose loss, gradient norm or new
    parameters are not finite changes nothing but the step and the NaN-guard counters. ``batch_norm``:
    "frozen" or "train", what BatchNorm does with its statistics (see above)."""
    compute = make_gradients(
        module, objective, mesh=mesh, preprocess=preprocess, microbatches=microbatches, batch_norm=batch_norm
    )

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, terms, zimg, ztxt, grads, batch_stats = compute(state.params, batch, rng, state.batch_stats)
        grad_norm = optax.tree.norm(jax.tree.map(lambda g, keep: g if keep else None, grads, trainable))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u, keep: p + u.astype(p.dtype) if keep else p, state.params, updates, trainable)
        if logit_scale_max is not None and trainable["t"]:
            params["t"] = jnp.minimum(params["t"], logit_scale_max)
        param_norm = optax.tree.norm(params)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
        keep_if_ok = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        metrics = {
            "loss": loss,
            **terms,
            "grad_norm": grad_norm,
            "param_norm": param_norm,
            "lr": schedule(state.step - state.skipped),
            "logit_scale": jnp.exp(state.params["t"]),
            "skipped": (~ok).astype(jnp.int32),
        }
        if "b" in state.params:
            metrics["logit_bias"] = state.params["b"]
        if objective.batch_accuracy:
            metrics["batch_accuracy"] = losses.retrieval_accuracy(zimg, ztxt, mesh=mesh)
        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_ok(params, state.params),
            opt_state=keep_if_ok(opt_state, state.opt_state),
            batch_stats=keep_if_ok(batch_stats, state.batch_stats),
            skipped=state.skipped + (~ok),
            nan_streak=jnp.where(ok, 0, state.nan_streak + 1),
        )
        metrics["nan_streak"] = new_state.nan_streak
        return new_state, metrics

    return step


def _interleave(x: jax.Array, k: int, mesh: Mesh | None) -> jax.Array:
    """[B, ...] -> [B/k, k, ...], a reshape: micro-batch i is [:, i], rows i, i + k, ..., so each
    device's rows feed every micro-batch equally, no row changes device, and each micro-batch is
    read when its turn comes rather than split off the whole batch up front."""
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(parallel.BATCH_AXES)))


def _merge(x: jax.Array) -> jax.Array:
    """Per-micro-batch results stacked by a scan, [k, B/k, ...] (see `_interleave`) -> [B, ...] in
    the original row order."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])
