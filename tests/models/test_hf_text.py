"""The hf_encoder text tower on its own: padding never changes a text's features (masked keys, positions counted
past the padding id, mean over real tokens), M2M100's sinusoids are transformers', bad configs are one error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.errors import InputError
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers import HFTextConfig, build_tower
from jaxvlm.models.towers.hf_text import sinusoids

BERT = dict(vocab_size=50, context_length=16, width=32, depth=2, heads=2, mlp_dim=64, max_positions=20)
ROBERTA = dict(BERT, pad_id=1, position_ids="after_padding", type_vocab_size=1, pool="mean", proj="mlp")
NLLB = dict(
    BERT,
    pad_id=1,
    positions="sinusoidal",
    position_ids="after_padding",
    type_vocab_size=0,
    embed_scale=True,
    embed_norm=False,
    post_norm=False,
    pool="cls",
    act="relu",
)


@pytest.mark.parametrize("fields", [dict(BERT, pool="pooler"), ROBERTA, NLLB], ids=["bert-pooler", "roberta", "nllb"])
def test_padding_does_not_change_features(fields):
    cfg = HFTextConfig(**fields)
    tower = build_tower(cfg, 24)
    params = jax.jit(tower.init)(jax.random.key(0), cfg.example_input(1))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    text = np.array([[0, 7, 8, 9, 2]])
    short = np.pad(text, ((0, 0), (0, 3)), constant_values=cfg.pad_id)
    long = np.pad(text, ((0, 0), (0, cfg.context_length - 5)), constant_values=cfg.pad_id)
    apply = jax.jit(tower.apply)
    (a, tokens), (b, _) = apply(params, short), apply(params, long)
    error = float(jnp.max(jnp.abs(a - b)))
    print(f"\n{fields.get('positions', 'learned')} {cfg.pool}: padding 8 vs 16 max abs {error:.1e}")
    assert a.shape == (1, 24) and tokens.shape == (1, 8, 32) and error <= 1e-5


def test_bfloat16_runs():
    cfg = HFTextConfig(**ROBERTA)
    tower = build_tower(cfg, 24, Runtime(dtype="bfloat16"))
    params = jax.jit(tower.init)(jax.random.key(0), cfg.example_input(2))
    pooled, _ = jax.jit(tower.apply)(params, cfg.example_input(2) + 3)
    assert pooled.dtype == jnp.bfloat16 and bool(jnp.isfinite(pooled).all())


def test_sinusoids_are_m2m100s():
    torch = pytest.importorskip("torch")
    m2m = pytest.importorskip("transformers.models.m2m_100.modeling_m2m_100")
    with torch.no_grad():
        reference = m2m.M2M100SinusoidalPositionalEmbedding.get_embedding(1026, 1024, 1).numpy()
    table = sinusoids(1026, 1024, 1)
    near, far = (float(np.max(np.abs(table[rows] - reference[rows]))) for rows in (slice(0, 80), slice(None)))
    print(f"\nsinusoids vs transformers max abs: rows 0-79 {near:.1e}, all 1026 rows {far:.1e}")
    assert near <= 1e-6 and far <= 2e-5  # float32 angles of large rows: an ulp of exp times the row


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(context_length=20), "text.context_length 20 needs position 21, past the 20 rows"),
        (dict(positions="sinusoidal", width=33, heads=3), "text.width 33: sinusoidal positions need"),
        (dict(pool="max"), "text.pool"),
        (dict(proj="bias"), "text.proj"),
    ],
)
def test_bad_configs_are_one_error(change, message):
    with pytest.raises(InputError, match=message):
        HFTextConfig(**{**ROBERTA, **change})


def test_no_projection_needs_the_embedding_width():
    with pytest.raises(InputError, match="text.proj is 'none' but text.width 32 != embed_dim 24"):
        HFTextConfig(**{**ROBERTA, "proj": "none"}).check(24)
