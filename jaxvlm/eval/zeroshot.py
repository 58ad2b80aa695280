"""Zero-shot classification: a classifier from prompt ensembles, then classification metrics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxvlm.eval.classification import classification_metrics
from jaxvlm.eval.prompts import PromptSet
from jaxvlm.models.two_tower import l2_normalize


def zeroshot_classifier(model, prompts: PromptSet) -> np.ndarray:
    """[C, D] class embeddings: each class's prompts embedded and L2-normalised (the model's
    encoders normalise), averaged over templates, and normalised again, as CLIP does."""
    embeds = model.encode_text(model.tokenize(prompts.texts()))
    per_class = jnp.asarray(embeds).reshape(len(prompts.classes), len(prompts.templates), -1)
    return np.asarray(l2_normalize(per_class.mean(axis=1)))


def zeroshot_metrics(image_embeds, labels, classifier) -> dict[str, float]:
    """acc1 / acc5 / mean_per_class_recall of images [N, D] against class embeddings [C, D]."""
    return classification_metrics(jnp.asarray(image_embeds) @ jnp.asarray(classifier).T, labels)
