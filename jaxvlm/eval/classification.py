"""Classification metrics shared by zero-shot and linear-probe evaluation: top-1, top-5 and mean
per-class recall (scikit-learn's balanced accuracy), named as CLIP_benchmark names them.

Counts are taken in JAX and divided in float64 on the host, so the numbers equal
scikit-learn's exactly rather than to float32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxvlm.errors import InputError


@functools.partial(jax.jit, static_argnames=("k",))
def _counts(scores, labels, k):
    top = jax.lax.top_k(scores, k)[1]  # ties go to the lower class id, as argmax does
    hits = top == labels[:, None]
    num_classes = scores.shape[1]
    per_class_correct = jax.ops.segment_sum(hits[:, 0].astype(jnp.int32), labels, num_segments=num_classes)
    per_class_count = jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=num_classes)
    return hits[:, 0].sum(), hits.any(axis=1).sum(), per_class_correct, per_class_count


def classification_metrics(scores: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """scores [N, C] (any monotone score: logits, similarities), labels [N] in [0, C).

    acc1, acc5 (only with at least 5 classes) and mean_per_class_recall: the mean over the
    classes present in ``labels`` of the fraction of their examples ranked first.
    """
    scores, labels = np.asarray(scores, np.float32), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape[:1] or not len(labels):
        raise InputError(f"classification needs scores [N>0, C] and labels [N], got {scores.shape} and {labels.shape}")
    num_classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    top1, top5, correct, count = jax.device_get(
        _counts(jnp.asarray(scores), jnp.asarray(labels, jnp.int32), k=min(5, num_classes))
    )
    present = count > 0
    metrics = {"acc1": int(top1) / len(labels)}
    if num_classes >= 5:
        metrics["acc5"] = int(top5) / len(labels)
    metrics["mean_per_class_recall"] = float(np.mean(correct[present] / count[present]))
    return metrics
