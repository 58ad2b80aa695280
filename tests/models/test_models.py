"""Model definitions: every named architecture builds, parameters carry logical axes, and the
config switches (pooling, position embedding) and runtime options (remat, dtype, attention) do
what they say."""

import dataclasses
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.errors import InputError
from jaxvlm.models import ModelConfig, Runtime, TwoTower, param_shapes
from jaxvlm.models.registry import get_architecture, list_models
from jaxvlm.models.towers.text_transformer import pool_tokens
from jaxvlm.models.towers.vit import sincos_2d
from jaxvlm.models.two_tower import contrastive_logits


def inputs(cfg: ModelConfig, n=2, m=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    ids = rng.integers(1, cfg.text.vocab_size, (m, cfg.text.context_length)).astype(np.int32)
    return jnp.asarray(images), jnp.asarray(ids)


def init(cfg: ModelConfig):
    return flax.linen.meta.unbox(jax.jit(TwoTower(cfg).init)(jax.random.key(0), *inputs(cfg))["params"])


def variant(name, vision=None, **model):
    cfg = get_architecture(name).model
    if vision:
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, **vision))
    return cfg.replace(**model)


@pytest.mark.parametrize("name", list_models())
def test_every_named_architecture_builds(name):
    cfg = get_architecture(name).model
    shapes = param_shapes(cfg)
    print(f"{name}: {len(shapes)} parameter arrays")
    assert ("b" in shapes) == (cfg.loss == "sigmoid") and ("dec/head/kernel" in shapes) == (cfg.decoder is not None)


@pytest.mark.slow
def test_every_parameter_has_logical_axes():
    cfg = get_architecture("tiny-siglip").model
    boxed = TwoTower(cfg).init(jax.random.key(0), *inputs(cfg))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, flax.linen.Partitioned))
    unnamed = [x for x in leaves if not isinstance(x, flax.linen.Partitioned) and np.ndim(x) > 0]
    assert not unnamed
    flat = flax.traverse_util.flatten_dict(boxed, sep="/")
    kernel = flat["img/encoder/blocks/attn/query/kernel"]
    assert kernel.names == ("layers", "embed", "heads", "kv")
    assert all(len(x.names) == x.value.ndim for x in leaves if isinstance(x, flax.linen.Partitioned))


def test_blocks_are_scanned():
    shapes = param_shapes(get_architecture("tiny-clip").model)
    assert shapes["img/encoder/blocks/mlp/fc1/kernel"] == (2, 64, 256)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_memory_not_numbers(policy):
    base = get_architecture("tiny-clip").model
    params = init(base)
    images, ids = inputs(base)

    def loss(runtime):
        def f(p):
            module = TwoTower(base, runtime)
            zi, zt, _ = module.apply({"params": p}, images, ids)
            return jnp.sum(contrastive_logits(zi, zt, p["t"]) ** 2)

        return jax.value_and_grad(f)(params)

    (l0, g0), (l1, g1) = loss(Runtime()), loss(Runtime(remat=policy))
    assert np.allclose(l0, l1, atol=1e-5)
    # recomputation may reorder float sums: compare relative to the largest gradient
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale), g0, g1)


@pytest.mark.slow  # make test checks bfloat16 on a smaller model (tests/test_model_dir.py)
def test_bfloat16_compute_stays_close_to_float32():
    cfg = get_architecture("tiny-siglip").model
    params = init(cfg)
    images, ids = inputs(cfg)
    f32 = TwoTower(cfg).apply({"params": params}, images, method=TwoTower.encode_image)
    bf16 = TwoTower(cfg, Runtime(dtype="bfloat16")).apply({"params": params}, images, method=TwoTower.encode_image)
    assert bf16.dtype == jnp.float32  # embeddings are normalised in float32
    error = float(jnp.max(jnp.abs(f32 - bf16)))
    print(f"bf16 vs f32 image embedding max abs error: {error:.3e}")
    assert error < 5e-2


@pytest.mark.parametrize(
    "vision",
    [
        dict(pool="gap"),
        dict(pool="map"),
        dict(pos_embed="sincos2d"),
        dict(pre_norm=False, class_token=False, pool="gap"),
    ],
)
def test_vision_variants_run(vision):
    cfg = variant("tiny-clip", vision)
    params = init(cfg)
    assert ("map_head" in params["img"]) == (cfg.vision.pool == "map")
    assert ("pos_embed" in params["img"]) == (cfg.vision.pos_embed == "learned")
    zi = TwoTower(cfg).apply({"params": params}, inputs(cfg)[0], method=TwoTower.encode_image)
    np.testing.assert_allclose(np.linalg.norm(zi, axis=-1), 1.0, atol=1e-5)


def test_sincos_table():
    table = sincos_2d(grid=4, width=16)
    assert table.shape == (16, 16)
    np.testing.assert_array_equal(table[0], np.array([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    # the x half depends only on the column, the y half only on the row
    np.testing.assert_array_equal(table[1, :8], table[5, :8])
    np.testing.assert_array_equal(table[4, 8:], table[5, 8:])


def test_text_pooling():
    x = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
    ids = jnp.array([[5, 9, 7, 0], [5, 2, 9, 9]])
    assert pool_tokens(x, ids, "first", None)[:, 0].tolist() == [0, 4]
    assert pool_tokens(x, ids, "last", None)[:, 0].tolist() == [3, 7]
    assert pool_tokens(x, ids, "argmax", None)[:, 0].tolist() == [1, 6]  # first of equal maxima
    assert pool_tokens(x, ids, "eos", 7)[:, 0].tolist() == [2, 4]  # no eos: position 0


def test_causal_text_ignores_later_tokens():
    cfg = get_architecture("tiny-clip").model
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, pool="first"))
    params = init(cfg)
    ids = np.asarray(inputs(cfg)[1])
    changed = ids.copy()
    changed[:, 1:] = 3
    encode = lambda i: TwoTower(cfg).apply({"params": params}, jnp.asarray(i), method=TwoTower.encode_text)
    np.testing.assert_allclose(encode(ids), encode(changed), atol=1e-6)


def test_config_round_trips_through_json():
    cfg = get_architecture("ViT-SO400M-14-SigLIP-384").model
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "change",
    [
        {"colour": 1},
        {"loss": "hinge"},
        {"vision": {"depth": 2}},
        {"text": {"pool": "mean"}},
        {"text": {"kind": "bert"}},
        {"decoder": {"depth": 2}},
    ],
)
def test_bad_config_is_one_clear_error(change):
    d = get_architecture("tiny-clip").model.to_dict()
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value} if key != "vision" else value
        else:
            d[key] = value
    with pytest.raises(InputError):
        ModelConfig.from_dict(d)


def test_config_holds_the_architecture_only():
    """How a model runs is not part of its config; configs written with those fields still load."""
    cfg = get_architecture("tiny-coca").model
    written = cfg.to_dict()
    assert not {"dtype", "remat", "attention"} & set(written)
    assert (written["vision"]["kind"], written["text"]["kind"]) == ("vit", "transformer")
    old = {**written, "dtype": "bfloat16", "remat": "full", "attention": "xla"}
    for tower in ("vision", "text"):
        old[tower] = {k: v for k, v in written[tower].items() if k != "kind"}  # written before kinds
    assert ModelConfig.from_dict(old) == cfg


@pytest.mark.parametrize("change", [{"dtype": "float16"}, {"remat": "some"}, {"attention": "flash"}, {"colour": 1}])
def test_bad_runtime_options_are_one_clear_error(change):
    with pytest.raises(InputError, match=next(iter(change))):
        Runtime.from_dict(change)


def test_attention_switch():
    """Runtime.attention reaches every attention layer: "pallas" (on CPU, the Triton kernel in
    interpret mode) gives the embeddings "xla" gives."""
    base = get_architecture("tiny-clip").model
    params = init(base)
    images, ids = inputs(base)
    models = [TwoTower(base, Runtime(attention=name)) for name in ("xla", "pallas")]
    loops = [jax.jit(m.apply).lower({"params": params}, images, ids).as_text().count("stablehlo.while") for m in models]
    assert loops[1] > loops[0]  # the interpreted kernels' grid loops, besides the scans over layers
    xla, pallas = (jax.jit(m.apply)({"params": params}, images, ids) for m in models)
    for name, a, b in zip(("image", "text"), xla[:2], pallas[:2]):
        error = float(jnp.max(jnp.abs(a - b)))
        print(f"pallas vs xla {name} embedding max abs error: {error:.1e}")
        assert error < 1e-5
