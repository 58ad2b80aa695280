"""CoCa model: the cached one-position decoder against the uncached forward, the text padding
mask, and config checks."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.errors import InputError
from jaxvlm.models import CoCa, ModelConfig, build_model, example_inputs
from jaxvlm.models.coca import empty_cache
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers.text_transformer import key_mask
from tests.tolerances import FLOAT32_EPS, assert_close_to_scale

CFG = get_architecture("tiny-coca").model


@pytest.fixture(scope="module")
def params():
    params = flax.linen.meta.unbox(jax.jit(build_model(CFG).init)(jax.random.key(0), *example_inputs(CFG))["params"])

    @jax.jit
    def perturb(params):  # move every tensor off its initial value
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

    return perturb(params)


@pytest.mark.parametrize("beams", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_cached_decoding_matches_uncached_forward_at_every_step(params, beams):
    rng = np.random.default_rng(0)
    images = rng.random((2, 32, 32, 3), dtype=np.float32)
    length = 10
    ids = rng.integers(1, 49408, (2 * beams, length)).astype(np.int32)
    ids[0, 4] = 0  # a pad token mid-sequence: its key is masked (one position late, as open_clip does)
    ids[-1, 6:] = 0
    model = CoCa(CFG)
    full = jax.jit(model.apply)({"params": params}, np.repeat(images, beams, axis=0), ids).caption_logits
    image_tokens = jax.jit(lambda p, x: model.apply(p, x, method=CoCa.image_tokens))({"params": params}, images)
    decode = jax.jit(
        lambda cache, index, tokens: model.apply({"params": params}, ids, index, cache, tokens, method=CoCa.decode)
    )
    cache = empty_cache(CFG, 2 * beams, length)
    errors, steps = [], []
    for index in range(length):
        logits, cache = decode(cache, index, image_tokens if index == 0 else None)
        errors.append(float(jnp.max(jnp.abs(logits - full[:, index]))))
        steps.append(logits)
    print(
        f"\ncached vs uncached decoder logits, {beams} beam(s), max abs per step: "
        + " ".join(f"{e:.1e}" for e in errors)
    )
    # a logit ends a chain of float32 sums that the two passes group differently (other batch and sequence
    # shapes): about n = 4000 additions (vision tower and pooler ~1500, text layers ~650, decoder layers with
    # cross-attention over 255 image tokens ~1900), whose roundings add as a random walk: sqrt(n) * eps = 7.5e-6
    # of the logits' size (8e-5 at 10.7; it was 1e-4 absolute)
    assert_close_to_scale(
        jnp.stack(steps, axis=1),
        full,
        rtol_of_scale=np.sqrt(4000) * FLOAT32_EPS,
        what=f"cached vs uncached decoder logits, {beams} beam(s)",
    )


def test_shifted_pad_mask_is_open_clips():
    cfg = CFG.text
    ids = jnp.array([[49406, 320, 49407, 0, 0]])
    shifted = key_mask(ids, cfg)
    exact = key_mask(ids, dataclasses.replace(cfg, pad_mask="exact"))
    # positions: 5 text tokens then the appended cls token
    np.testing.assert_array_equal(exact, [[True, True, True, False, False, True]])
    # open_clip: the first pad stays visible and the cls token cannot see itself
    np.testing.assert_array_equal(shifted, [[True, True, True, True, False, False]])
    assert key_mask(ids, dataclasses.replace(cfg, pad_mask="none", append_cls=False)) is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.replace(decoder=dataclasses.replace(c.decoder, width=48)), "decoder.width"),
        (lambda c: c.replace(decoder=dataclasses.replace(c.decoder, eot_id=49408)), "eot_id"),
        (lambda c: c.replace(decoder=dataclasses.replace(c.decoder, context_length=77)), "context_length"),
        (lambda c: c.replace(text=dataclasses.replace(c.text, pool="argmax")), "append_cls"),
        (lambda c: c.replace(text=dataclasses.replace(c.text, append_cls=False, pool="argmax")), "shifted"),
        (lambda c: c.replace(text=dataclasses.replace(c.text, pad_mask="left")), "pad_mask"),
        (lambda c: c.replace(vision=dataclasses.replace(c.vision, attn_pool_heads=3)), "attn_pool_heads"),
    ],
)
def test_bad_coca_configs_are_refused(change, message):
    with pytest.raises(InputError, match=message):
        ModelConfig.from_dict(change(CFG).to_dict())


def test_config_round_trips():
    assert ModelConfig.from_dict(CFG.to_dict()) == CFG
