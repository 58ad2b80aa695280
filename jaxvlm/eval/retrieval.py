"""Image <-> text retrieval recall@k with several captions per image, block by block.

The score matrix is never formed: each block of queries (split over the devices of a 1-D
data mesh) scans the candidates in blocks and keeps a running top-k, so at most
``block_size x block_size`` scores exist per step. Ties keep the lower candidate index, as a
stable top-k of the whole row would. Metric names are CLIP_benchmark's:
``image_retrieval_recall@k`` (text -> image) and ``text_retrieval_recall@k`` (image -> text);
a query scores 1 when any of its correct items is among its top k.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from jaxvlm.errors import InputError

DEFAULT_KS = (1, 5, 10)


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ("data",) mesh over the given devices (all local devices by default)."""
    return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), ("data",))


def _scan_top_k(queries, blocks, count, k):
    """Top-k candidate indices [Q, k] of queries [Q, D] over candidate blocks [B, S, D]."""
    size = blocks.shape[1]

    def step(carry, xs):
        best_scores, best_ids = carry
        block, offset = xs
        ids = offset + jnp.arange(size)
        scores = jnp.where(ids < count, queries @ block.T, -jnp.inf)
        scores, pos = jax.lax.top_k(scores, k)
        # earlier blocks first, so on equal scores the lower index stays ahead
        merged_scores = jnp.concatenate([best_scores, scores], axis=1)
        merged_ids = jnp.concatenate([best_ids, ids[pos]], axis=1)
        best_scores, keep = jax.lax.top_k(merged_scores, k)
        return (best_scores, jnp.take_along_axis(merged_ids, keep, axis=1)), None

    init = (jnp.full((len(queries), k), -jnp.inf, queries.dtype), jnp.zeros((len(queries), k), jnp.int32))
    offsets = jnp.arange(blocks.shape[0], dtype=jnp.int32) * size
    return jax.lax.scan(step, init, (blocks, offsets))[0][1]


@functools.cache
def _top_k_fn(mesh: Mesh, k: int):
    rows = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(
        functools.partial(_scan_top_k, k=k),
        in_shardings=(rows, NamedSharding(mesh, PartitionSpec()), None),
        out_shardings=rows,
    )


def _pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    return np.pad(x, ((0, -len(x) % multiple), (0, 0)))


def top_k_indices(
    queries: ArrayLike, candidates: ArrayLike, k: int, *, block_size: int = 4096, mesh: Mesh | None = None
) -> np.ndarray:
    """int32 [Q, min(k, M)]: each query's highest-scoring candidates (dot product), best first."""
    queries, candidates = np.asarray(queries, np.float32), np.asarray(candidates, np.float32)
    mesh = mesh or local_mesh()
    k = min(k, len(candidates))
    block_size = max(block_size, k)
    query_block = -(-min(block_size, len(queries)) // mesh.size) * mesh.size
    cand_block = min(block_size, len(candidates))
    # placed explicitly: with several processes, jit takes no numpy input for a split argument
    rows = NamedSharding(mesh, PartitionSpec("data"))
    blocks = jax.device_put(
        _pad_rows(candidates, cand_block).reshape(-1, cand_block, candidates.shape[1]),
        NamedSharding(mesh, PartitionSpec()),
    )
    fn = _top_k_fn(mesh, k)
    out = []
    for start in range(0, len(queries), query_block):
        chunk = queries[start : start + query_block]
        found = fn(jax.device_put(_pad_rows(chunk, query_block), rows), blocks, np.int32(len(candidates)))
        out.append(np.asarray(found)[: len(chunk)])
    return np.concatenate(out)


def retrieval_metrics(
    image_embeds: ArrayLike,
    text_embeds: ArrayLike,
    text_image: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    block_size: int = 4096,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Recall@k both ways. ``text_image[j]`` is the index of the image text ``j`` describes."""
    image_embeds, text_embeds = np.asarray(image_embeds), np.asarray(text_embeds)
    text_image = np.asarray(text_image)
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise InputError(
            f"retrieval needs embeddings [N, D] and [M, D], got {image_embeds.shape} and {text_embeds.shape}"
        )
    if text_image.shape != (len(text_embeds),) or not len(text_image):
        raise InputError(f"text_image must give one image index per text ({len(text_embeds)}), got {text_image.shape}")
    if text_image.min() < 0 or text_image.max() >= len(image_embeds):
        raise InputError(f"text_image indices must be in [0, {len(image_embeds)})")
    if not ks or min(ks) < 1:
        raise InputError(f"recall@k needs k >= 1, got {list(ks)}")
    k = max(ks)
    # image -> text: a hit when a retrieved caption belongs to the image
    texts_found = top_k_indices(image_embeds, text_embeds, k, block_size=block_size, mesh=mesh)
    text_hits = text_image[texts_found] == np.arange(len(image_embeds))[:, None]
    # text -> image: a hit when the retrieved image is the caption's own
    images_found = top_k_indices(text_embeds, image_embeds, k, block_size=block_size, mesh=mesh)
    image_hits = images_found == text_image[:, None]
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(image_hits[:, :k].any(axis=1).mean())
        metrics[f"text_retrieval_recall@{k}"] = float(text_hits[:, :k].any(axis=1).mean())
    return metrics
