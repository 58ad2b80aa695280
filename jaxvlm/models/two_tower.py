"""Two-tower image-text model: CLIP (softmax loss, exp(t) scale) and SigLIP (sigmoid loss,
exp(t) scale plus bias b), with towers of any registered kind. Parameter tree: img/..., txt/...,
t, and b when the config has a bias.

`embed` is the one forward pass: training, evaluation, `jaxvlm.Model` and generation all go
through a model's own methods, never into its towers.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm.models.config import ModelConfig
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers import build_tower


class Embeddings(NamedTuple):
    image: jax.Array  # [N, embed_dim] float32, L2-normalised
    text: jax.Array  # [M, embed_dim] float32, L2-normalised
    caption_logits: jax.Array | None = None  # CoCa: [M, L, vocab]; [:, i] predicts ids[:, i + 1]


def l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def contrastive_logits(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """[N, M] = exp(t) * zimg @ ztxt.T (+ b)."""
    logits = jnp.exp(t) * (zimg @ ztxt.T)
    return logits if b is None else logits + b


class TwoTower(nn.Module):
    cfg: ModelConfig
    runtime: Runtime = Runtime()

    def setup(self) -> None:
        cfg = self.cfg
        self.img = build_tower(cfg.vision, cfg.embed_dim, self.runtime)
        self.txt = build_tower(cfg.text, cfg.embed_dim, self.runtime)
        self.t = self.param("t", nn.initializers.constant(cfg.logit_scale_init), ())
        if cfg.logit_bias_init is not None:
            self.b = self.param("b", nn.initializers.constant(cfg.logit_bias_init), ())

    def encode_image(self, images: jax.Array) -> jax.Array:
        return l2_normalize(self.img(images)[0])

    def encode_text(self, ids: jax.Array) -> jax.Array:
        return l2_normalize(self.txt(ids)[0])

    def embed(self, images: jax.Array, ids: jax.Array, captions: bool = True) -> Embeddings:
        """Image and text embeddings (and, for a model with a caption decoder and ``captions``,
        the caption logits)."""
        return Embeddings(self.encode_image(images), self.encode_text(ids))

    def scale_and_bias(self) -> tuple[jax.Array, jax.Array | None]:
        return self.t, (self.b if self.cfg.logit_bias_init is not None else None)

    def __call__(self, images: jax.Array, ids: jax.Array) -> Embeddings:
        return self.embed(images, ids)
