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
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.two_tower import Embeddings, TwoTower, l2_normalize


class DecoderLayer(nn.Module):
    cfg: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"  # the attention implementation (`jaxvlm.ops.attention`)

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: tuple | None, image_tokens: jax.Array | None, index: jax.Array | None
    ) -> tuple[jax.Array, tuple | None]:
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
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        image_tokens: jax.Array | None,
        cache: tuple | None = None,
        index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple | None]:
        """tokens [B, T, W], image_tokens [B', N, W] (B a multiple of B') -> (logits [B, T, vocab] float32, cache).

        Uncached, T is the whole text; while decoding T = 1 at position ``index`` and ``cache`` is
        per layer ((self keys, values), (cross keys, values) or None before the first step).
        """
        runtime, dtype = self.runtime, self.runtime.compute_dtype
        layers = scan_layers(DecoderLayer, self.cfg.depth, runtime.remat, in_axes=(0, nn.broadcast, nn.broadcast))(
            self.cfg, dtype, runtime.attention, name="layers"
        )
        x, cache = layers(tokens, cache, image_tokens, index)
        x = layer_norm(self.cfg.ln_eps, dtype, "final_norm")(x)
        logits = dense(self.cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dtype, name="head")(x)
        return logits.astype(jnp.float32), cache


def empty_cache(cfg: ModelConfig, batch: int, length: int, dtype: jnp.dtype = jnp.float32) -> dict:
    """Zeroed self-attention caches for ``batch`` sequences of up to ``length`` positions, in the
    model's compute ``dtype``; the decoder's cross-attention entry is None until the first
    `CoCa.decode` step fills it."""

    def zeros(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    d = cfg.decoder
    decoder_shape = (d.depth, batch, length, d.heads, d.width // d.heads)
    return {"txt": zeros(cfg.text.cache_shape(batch, length)), "dec": (zeros(decoder_shape), None)}


def reorder_cache(cache: dict, rows: jax.Array) -> dict:
    """The self-attention caches of the sequences ``rows`` (beam search keeps the best beams);
    the cross-attention keys/values belong to the images and stay as they are."""
    take = functools.partial(jnp.take, indices=rows, axis=1)
    self_kv, cross_kv = cache["dec"]
    return {"txt": jax.tree.map(take, cache["txt"]), "dec": (jax.tree.map(take, self_kv), cross_kv)}


class CoCa(TwoTower):
    """Parameters: img/..., txt/..., dec/..., t (no bias)."""

    def setup(self) -> None:
        super().setup()
        self.dec = Decoder(self.cfg.decoder, self.runtime)

    def embed(self, images: jax.Array, ids: jax.Array, captions: bool = True) -> Embeddings:
        pooled_image, image_tokens = self.img(images)
        pooled_text, text_tokens = self.txt(ids)
        caption_logits = self.dec(text_tokens, image_tokens)[0] if captions else None
        return Embeddings(l2_normalize(pooled_image), l2_normalize(pooled_text), caption_logits)

    def image_tokens(self, images: jax.Array) -> jax.Array:
        return self.img(images)[1]

    def caption_logits(self, ids: jax.Array, image_tokens: jax.Array) -> jax.Array:
        """Next-token logits [B, L, vocab] at every position of ``ids`` given the image tokens
        (`decode` computes one position of the same against caches)."""
        return self.dec(self.txt(ids)[1], image_tokens)[0]

    def decode(
        self, ids: jax.Array, index: jax.Array, cache: dict, image_tokens: jax.Array | None = None
    ) -> tuple[jax.Array, dict]:
        """Next-token logits [B, vocab] at position ``index`` of ``ids`` [B, S], and the new cache
        (`empty_cache` for the first step, which must also get ``image_tokens``)."""
        tokens, txt_cache = self.txt.decode(ids, index, cache["txt"])
        logits, dec_cache = self.dec(tokens, image_tokens, cache["dec"], index)
        return logits[:, 0], {"txt": txt_cache, "dec": dec_cache}
