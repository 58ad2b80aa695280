"""Text transformer tower: token + learned position embedding, optional appended class token
(CoCa), scanned encoder (causal or bidirectional, optionally masking padding), final LN,
pooling (argmax/EOS token, last, first), optional projection."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvlm.models.config import TextConfig
from jaxvlm.models.layers import Encoder, activations_with_axes, dense, layer_norm, param_with_axes


def pool_tokens(x, ids, pool: str, eos_id: int | None):
    """Picks one token's features per sequence. x [B, L, W], ids [B, L] -> [B, W]."""
    if pool == "first":
        return x[:, 0]
    if pool == "last":
        return x[:, -1]
    if pool == "argmax":  # CLIP's EOT has the largest id, so argmax finds the first EOT
        index = jnp.argmax(ids, axis=-1)
    else:
        index = jnp.argmax(ids == eos_id, axis=-1)
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


def key_mask(ids, cfg: TextConfig):
    """Which positions attention may read: bool [B, L + append_cls], or None for all of them.

    "shifted" is open_clip's CoCa mask, kept because pretrained CoCa weights were trained with
    it: open_clip puts the appended cls token's (always true) flag first instead of last, so
    position j takes the padding flag of position j - 1. The first padding position stays
    visible and the cls token at the end does not see itself (unless the text fills the context).
    """
    if cfg.pad_mask == "none":
        return None
    valid = ids != cfg.pad_id
    if cfg.append_cls:
        cls = jnp.ones_like(valid[:, :1])
        valid = jnp.concatenate([cls, valid] if cfg.pad_mask == "shifted" else [valid, cls], axis=1)
    return valid


class TextTower(nn.Module):
    cfg: TextConfig
    embed_dim: int
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"
    attention: str = "auto"  # the attention implementation (`jaxvlm.ops.attention`)

    def setup(self):
        cfg = self.cfg
        self.token_embed = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            dtype=self.dtype,
            embedding_init=param_with_axes(nn.initializers.normal(0.02), "vocab", "embed"),
        )
        self.pos_embed = self.param(
            "pos_embed",
            param_with_axes(nn.initializers.normal(0.01), None, "length", "embed"),
            (1, cfg.positions, cfg.width),
        )
        if cfg.append_cls:
            self.cls = self.param(
                "cls", param_with_axes(nn.initializers.normal(0.01), None, None, "embed"), (1, 1, cfg.width)
            )
        self.encoder = Encoder(
            cfg.depth,
            cfg.heads,
            cfg.mlp_dim,
            cfg.act,
            cfg.ln_eps,
            causal=cfg.causal,
            remat=self.remat,
            dtype=self.dtype,
            attention=self.attention,
        )
        self.final_norm = layer_norm(cfg.ln_eps, self.dtype, None)
        if cfg.proj:
            self.proj = dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=self.dtype, name=None)

    def __call__(self, ids):
        """ids int [B, L], L <= context_length -> (pooled (projected) features [B, embed_dim],
        tokens [B, L, W]: the encoder's output at each text position, before the final norm)."""
        cfg = self.cfg
        x = self.token_embed(ids)
        if cfg.append_cls:
            x = jnp.concatenate([x, jnp.broadcast_to(self.cls.astype(x.dtype), (x.shape[0], 1, cfg.width))], axis=1)
        x = activations_with_axes(x + self.pos_embed[:, : x.shape[1]].astype(x.dtype))
        x, _ = self.encoder(x, None, key_mask(ids, self.cfg))
        pooled = pool_tokens(self.final_norm(x), ids, cfg.pool, cfg.eos_id)
        if cfg.proj:
            pooled = self.proj(pooled)
        return pooled, x[:, : ids.shape[1]]

    def decode(self, ids, index, cache):
        """The tokens of one position while decoding, reading earlier positions from ``cache``.

        ids int [B, S]: the sequences so far (positions after ``index`` are ignored); ``cache``:
        (keys, values) [layers, B, S, heads, head_dim]. Returns (tokens [B, 1, W], cache) with the
        same tokens as __call__ gives at position ``index``.
        """
        x = self.token_embed(jax.lax.dynamic_slice_in_dim(ids, index, 1, axis=1))
        x = x + jax.lax.dynamic_slice_in_dim(self.pos_embed, index, 1, axis=1).astype(x.dtype)
        mask = key_mask(ids, self.cfg)
        return self.encoder(x, cache, None if mask is None else mask[:, : ids.shape[1]], index)
