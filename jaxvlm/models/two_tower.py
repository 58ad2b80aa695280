"""Two-tower image-text model: CLIP (softmax loss, exp(t) scale) and SigLIP (sigmoid loss,
exp(t) scale plus bias b). Parameter tree: img/..., txt/..., t, and b when the config has a bias."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm.models.config import ModelConfig
from jaxvlm.models.text import TextTower
from jaxvlm.models.vit import VisionTower


def l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def contrastive_logits(zimg, ztxt, t, b=None):
    """[N, M] = exp(t) * zimg @ ztxt.T (+ b)."""
    logits = jnp.exp(t) * (zimg @ ztxt.T)
    return logits if b is None else logits + b


class TwoTower(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        self.img = VisionTower(cfg.vision, cfg.embed_dim, dtype, cfg.remat, cfg.attention)
        self.txt = TextTower(cfg.text, cfg.embed_dim, dtype, cfg.remat, cfg.attention)
        self.t = self.param("t", nn.initializers.constant(cfg.logit_scale_init), ())
        if cfg.logit_bias_init is not None:
            self.b = self.param("b", nn.initializers.constant(cfg.logit_bias_init), ())

    def encode_image(self, images):
        return l2_normalize(self.img(images)[0])

    def encode_text(self, ids):
        return l2_normalize(self.txt(ids)[0])

    def scale_and_bias(self):
        return self.t, (self.b if self.cfg.logit_bias_init is not None else None)

    def __call__(self, images, ids):
        """Returns (image embeddings, text embeddings, logits [N, M])."""
        zimg, ztxt = self.encode_image(images), self.encode_text(ids)
        return zimg, ztxt, contrastive_logits(zimg, ztxt, *self.scale_and_bias())
