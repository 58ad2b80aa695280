"""Zero-shot classification: a classifier from prompt ensembles, then classification metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxvlm.eval.classification import classification_metrics
from jaxvlm.eval.prompts import PromptSet
from jaxvlm.models.two_tower import l2_normalize

if TYPE_CHECKING:
    from jaxvlm.api import Model


def zeroshot_classifier(model: Model, prompts: PromptSet) -> np.ndarray:
    """[C, D] class embeddings: each class's prompts embedded and L2-normalised (the model's
    encoders normalise), averaged over templates, and normalised again, as CLIP does."""
    return zeroshot_classifier_counted(model, prompts)[0]


def zeroshot_classifier_counted(model: Model, prompts: PromptSet) -> tuple[np.ndarray, int]:
    """(`zeroshot_classifier`, how many of its prompts were longer than the model's context and truncated)."""
    ids, truncated = model.tokenize_with_truncation(prompts.texts())
    embeds = model.encode_text(ids)
    per_class = jnp.asarray(embeds).reshape(len(prompts.classes), len(prompts.templates), -1)
    return np.asarray(l2_normalize(per_class.mean(axis=1))), int(truncated.sum())


def zeroshot_scores(image_embeds: ArrayLike, classifier: ArrayLike) -> np.ndarray:
    """[N, C] similarities of images [N, D] to class embeddings [C, D]."""
    return np.asarray(jnp.asarray(image_embeds) @ jnp.asarray(classifier).T)


def zeroshot_metrics(image_embeds: ArrayLike, labels: ArrayLike, classifier: ArrayLike) -> dict[str, float]:
    """acc1 / acc5 / mean_per_class_recall of images [N, D] against class embeddings [C, D]."""
    return classification_metrics(zeroshot_scores(image_embeds, classifier), labels)
