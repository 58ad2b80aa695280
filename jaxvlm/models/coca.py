"""CoCa (contrastive captioner), open_clip's layout: a two-tower model whose vision tower also
returns image tokens (from an attentional pooler or the ViT's patch tokens) and whose text
tower appends a cls token, plus a multimodal decoder: per layer a causal self-attention block
over the text tower's tokens and a cross-attention block to the image tokens, then a final LN
and a vocabulary head.

Decoding (see `jaxvlm.generation`) runs one position at a time with fixed-shape key/value caches:
`CoCa.decode` with ``image_tokens`` computes the cross-attention keys/values once and returns
them in the cache; later steps pass ``image_tokens=None`` and read them from there.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm.models.config import DecoderConfig, ModelConfig
from jaxvlm.models.layers import Block, dense, layer_norm, scan_layers
from jaxvlm.models.two_tower import TwoTower, contrastive_logits, l2_normalize


class DecoderLayer(nn.Module):
    cfg: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"  # the attention implementation (`jaxvlm.ops.attention`)

    @nn.compact
    def __call__(self, x, cache, image_tokens, index):
        cfg = self.cfg
        self_cache, cross_cache = (None, None) if cache is None else cache
        block = functools.partial(
            Block, cfg.heads, cfg.mlp_dim, cfg.act, cfg.ln_eps, dtype=self.dtype, attention=self.attention
        )
        x, self_cache = block(causal=True, name="self_block")(x, self_cache, None, index)
        x, cross_cache = block(cross=True, name="cross_block")(x, cross_cache, None, index, image_tokens)
        return x, (None if index is None else (self_cache, cross_cache))


class Decoder(nn.Module):
    cfg: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"
    attention: str = "auto"

    @nn.compact
    def __call__(self, tokens, image_tokens, cache=None, index=None):
        """tokens [B, T, W], image_tokens [B', N, W] (B a multiple of B') -> (logits [B, T, vocab] float32, cache).

        Uncached, T is the whole text; while decoding T = 1 at position ``index`` and ``cache`` is
        per layer ((self keys, values), (cross keys, values) or None before the first step).
        """
        layers = scan_layers(DecoderLayer, self.cfg.depth, self.remat, in_axes=(0, nn.broadcast, nn.broadcast))(
            self.cfg, self.dtype, self.attention, name="layers"
        )
        x, cache = layers(tokens, cache, image_tokens, index)
        x = layer_norm(self.cfg.ln_eps, self.dtype, "final_norm")(x)
        logits = dense(self.cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32), cache


def empty_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
    """Zeroed self-attention caches for ``batch`` sequences of up to ``length`` positions; the
    decoder's cross-attention entry is None until the first `CoCa.decode` step fills it."""

    def zeros(depth, heads, width):
        shape = (depth, batch, length, heads, width // heads)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    t, d = cfg.text, cfg.decoder
    return {"txt": zeros(t.depth, t.heads, t.width), "dec": (zeros(d.depth, d.heads, d.width), None)}


def reorder_cache(cache: dict, rows) -> dict:
    """The self-attention caches of the sequences ``rows`` (beam search keeps the best beams);
    the cross-attention keys/values belong to the images and stay as they are."""
    take = functools.partial(jnp.take, indices=rows, axis=1)
    self_kv, cross_kv = cache["dec"]
    return {"txt": jax.tree.map(take, cache["txt"]), "dec": (jax.tree.map(take, self_kv), cross_kv)}


class CoCa(TwoTower):
    """Parameters: img/..., txt/..., dec/..., t (no bias)."""

    def setup(self):
        super().setup()
        self.dec = Decoder(self.cfg.decoder, jnp.dtype(self.cfg.dtype), self.cfg.remat, self.cfg.attention)

    def __call__(self, images, ids):
        """Returns (image embeddings, text embeddings, logits [N, M], caption logits [N, L, vocab]);
        caption_logits[:, i] predicts ids[:, i + 1]."""
        pooled_image, image_tokens = self.img(images)
        pooled_text, text_tokens = self.txt(ids)
        zimg, ztxt = l2_normalize(pooled_image), l2_normalize(pooled_text)
        caption_logits, _ = self.dec(text_tokens, image_tokens)
        return zimg, ztxt, contrastive_logits(zimg, ztxt, *self.scale_and_bias()), caption_logits

    def image_tokens(self, images):
        return self.img(images)[1]

    def decode(self, ids, index, cache, image_tokens=None):
        """Next-token logits [B, vocab] at position ``index`` of ``ids`` [B, S], and the new cache
        (`empty_cache` for the first step, which must also get ``image_tokens``)."""
        tokens, txt_cache = self.txt.decode(ids, index, cache["txt"])
        logits, dec_cache = self.dec(tokens, image_tokens, cache["dec"], index)
        return logits[:, 0], {"txt": txt_cache, "dec": dec_cache}
