"""Text transformer tower: token + learned position embedding, scanned encoder (causal or
bidirectional), final LN, pooling (argmax/EOS token, last, first), optional projection."""

from __future__ import annotations

import flax.linen as nn
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


class TextTower(nn.Module):
    cfg: TextConfig
    embed_dim: int
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, ids):
        """ids int [B, L] with L <= context_length -> pooled (projected) features [B, embed_dim]."""
        cfg = self.cfg
        x = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            dtype=self.dtype,
            embedding_init=param_with_axes(nn.initializers.normal(0.02), "vocab", "embed"),
            name="token_embed",
        )(ids)
        pos = self.param("pos_embed", param_with_axes(nn.initializers.normal(0.01), None, "length", "embed"),
                         (1, cfg.context_length, cfg.width))
        x = activations_with_axes(x + pos[:, : ids.shape[1]].astype(x.dtype))
        x = Encoder(cfg.depth, cfg.heads, cfg.mlp_dim, cfg.act, cfg.ln_eps, causal=cfg.causal, remat=self.remat,
                    dtype=self.dtype, name="encoder")(x)
        x = layer_norm(cfg.ln_eps, self.dtype, "final_norm")(x)
        x = pool_tokens(x, ids, cfg.pool, cfg.eos_id)
        if cfg.proj:
            x = dense(self.embed_dim, ("embed", "proj"), use_bias=cfg.proj_bias, dtype=self.dtype, name="proj")(x)
        return x
