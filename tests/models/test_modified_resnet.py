"""The ModifiedResNet tower: output shapes, BatchNorm statistics in their own collection (used as they are
unless that collection is mutable; then each batch's statistics, synchronised over a sharded batch),
FLOPs, config errors."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvlm.errors import InputError
from jaxvlm.models import abstract_variables, param_count, param_shapes
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers import ModifiedResNet, ModifiedResNetConfig, flops_per_example

TINY = ModifiedResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=8)


@pytest.fixture(scope="module")
def tower():
    module = ModifiedResNet(TINY, embed_dim=32)
    images = jax.random.normal(jax.random.key(1), (8, 64, 64, 3))
    return module, numpy_variables(module, images), images


def numpy_variables(module, images):
    """Random variables of ``module``'s shapes drawn by numpy (XLA:CPU takes a second to compile each conv's
    initialiser): kernels N(0, 1 / fan_in), biases and BatchNorm shifts N(0, 0.02), scales 1 + N(0, 0.1), running
    means N(0, 0.1) and variances 1 + U(0, 0.2): away from their initial values, so that using them or not shows
    (and not so far that every ReLU is dead, when nothing depends on them)."""
    rng = np.random.default_rng(0)
    shapes = flax.linen.unbox(jax.eval_shape(module.init, jax.random.key(0), images))

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = shape[0] if path[-2].key in ("query", "key", "value") else np.prod(shape[:-1])
            return rng.normal(0, fan_in**-0.5, shape)
        if name in ("scale", "var"):
            return 1 + (rng.normal(0, 0.1, shape) if name == "scale" else rng.uniform(0, 0.2, shape))
        return rng.normal(0, 0.1 if name == "mean" else 0.02, shape)

    return jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(draw(p, x), jnp.float32), shapes)


def frozen(module):
    return jax.jit(module.apply)


def training(module):
    return jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))


def test_outputs_and_collections(tower):
    module, variables, images = tower
    pooled, tokens = frozen(module)(variables, images)
    assert pooled.shape == (8, 32) and tokens.shape == (8, 4, TINY.features) == (8, 4, TINY.token_width(32))
    flat_params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    flat_stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
    assert "stem1/bn/scale" in flat_params and not any(k.endswith(("mean", "var")) for k in flat_params)
    assert set(flat_stats) == {
        k.replace("/scale", s) for k in flat_params if k.endswith("bn/scale") for s in ("/mean", "/var")
    }


def test_running_averages_unless_the_statistics_are_mutable(tower):
    module, variables, images = tower
    infer, train = frozen(module), training(module)
    pooled = infer(variables, images)[0]
    other_stats = jax.tree.map(lambda x: x * 1.5, variables["batch_stats"])
    assert np.max(np.abs(pooled - infer({**variables, "batch_stats": other_stats}, images)[0])) > 1e-3
    (trained, _), updated = train(variables, images)
    assert np.max(np.abs(pooled - trained)) > 1e-3
    # the batch's own statistics: what the running ones are does not matter, and they move towards the batch's
    (trained_other, _), _ = train({**variables, "batch_stats": other_stats}, images)
    np.testing.assert_allclose(trained, trained_other, atol=1e-6)
    old, new = (flax.traverse_util.flatten_dict(t, sep="/") for t in (variables["batch_stats"], updated["batch_stats"]))
    assert all(not np.allclose(old[k], new[k]) for k in old)


def test_batch_statistics_are_global_over_a_sharded_batch(tower):
    """Under jit with the batch split over 8 devices, the batch mean and variance are the whole batch's (GSPMD
    reduces across the shards): outputs and updated statistics equal those of one device."""
    module, variables, images = tower
    assert len(jax.devices()) >= 8
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
    step = training(module)
    (one, _), one_stats = step(variables, images)
    sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    (many, _), many_stats = step(replicated, sharded)
    assert many.sharding.spec == PartitionSpec("data") or len(many.sharding.device_set) == 8
    err = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves((one, one_stats)), jax.tree.leaves((many, many_stats)), strict=True)
    )
    print(f"\n8-device vs 1-device batch statistics: max abs error {err:.2e}")
    assert err <= 1e-5
    # each device's shard alone has other statistics: the reduction really is global
    (local, _), _ = step(variables, images[:1])
    assert not np.allclose(local, one[:1], atol=1e-4)


def test_full_size_trees_and_flops():
    cfg = get_architecture("RN50").model
    shapes = param_shapes(cfg, "batch_stats")
    assert shapes["img/stem1/bn/mean"] == (32,) and shapes["img/stage4_block2/conv3/bn/var"] == (2048,)
    assert set(abstract_variables(cfg)) == {"params", "batch_stats"}
    assert param_count(cfg) == 102_007_137  # open_clip's RN50 (its running statistics are buffers)
    flops = flops_per_example(cfg.vision, cfg.embed_dim)
    print(f"\nRN50 image tower: {flops / 1e9:.2f} GFLOPs per image")
    assert 8e9 < flops < 1.2e10  # about 2 x 5.4 G multiply-adds (ResNet-50's 4.1 G plus the wider stem and head)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(layers=(1, 1, 1)), "4 block counts"),
        (dict(image_size=80), "multiple of 32"),
        (dict(width=15), "even"),
        (dict(heads=7), "not divisible by heads"),
    ],
)
def test_bad_configs(changes, match):
    with pytest.raises(InputError, match=match):
        TINY.replace(**changes)
