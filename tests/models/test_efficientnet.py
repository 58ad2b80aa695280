"""The EfficientNet tower (kind "efficientnet", ALIGN's): output shapes, BatchNorm statistics in their own collection
(used as they are unless that collection is mutable), logical axis names, FLOPs against the arithmetic (tiny and
ALIGN-base), config errors. Parity with transformers is tests/convert/test_hf_align.py's."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.errors import InputError
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers import EfficientNet, EfficientNetConfig, ImageTowerConfig, flops_per_example
from jaxvlm.parallel import LOGICAL_RULES

# three stages: expand ratio 1 and 6, strides 1 and 2, kernels 3 and 5, repeated blocks, one symmetric padding
TINY = EfficientNetConfig(
    image_size=32,
    width_coefficient=0.5,
    depth_coefficient=1.5,
    kernel_sizes=(3, 5, 3),
    in_channels=(32, 16, 24),
    out_channels=(16, 24, 40),
    strides=(1, 2, 2),
    block_repeats=(1, 1, 2),
    expand_ratios=(1, 6, 4),
    symmetric_padding=(3,),
)


@pytest.fixture(scope="module")
def tower():
    module = EfficientNet(TINY, embed_dim=TINY.features)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    return module, numpy_variables(module, images), images


def numpy_variables(module, images):
    """Random variables of ``module``'s shapes: kernels N(0, 1 / fan_in) (depthwise: over their window), biases
    and shifts N(0, 0.02), scales 1 + N(0, 0.1), running means N(0, 0.1), variances 1 + U(0, 0.2)."""
    rng = np.random.default_rng(0)
    shapes = flax.linen.unbox(jax.eval_shape(module.init, jax.random.key(0), images))

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            return rng.normal(0, np.prod(shape[:-1]) ** -0.5, shape)
        if name in ("scale", "var"):
            return 1 + (rng.normal(0, 0.1, shape) if name == "scale" else rng.uniform(0, 0.2, shape))
        return rng.normal(0, 0.1 if name == "mean" else 0.02, shape)

    return jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(draw(p, x), jnp.float32), shapes)


def test_blocks_and_widths():
    """Channels rounded to the divisor (never 10% down), repeats rounded up, later blocks residual."""
    assert [TINY.round_channels(c) for c in (32, 16, 24, 40)] == [16, 8, 16, 24]
    assert [(b.in_channels, b.out_channels, b.stride, b.residual) for b in TINY.blocks] == [
        (16, 8, 1, False),
        (8, 8, 1, True),
        (8, 16, 2, False),
        (16, 16, 1, True),
        (16, 24, 2, False),
        (24, 24, 1, True),
        (24, 24, 1, True),
    ]
    b7 = get_architecture("ALIGN-base").model.vision
    assert len(b7.blocks) == 55 and b7.round_channels(32) == 64 and b7.features == 640


def test_outputs_and_collections(tower):
    module, variables, images = tower
    pooled, tokens = jax.jit(module.apply)(variables, images)
    assert pooled.shape == (4, 24) and tokens.shape == (4, 16, 24) and TINY.token_width(24) == 24
    np.testing.assert_allclose(pooled, tokens.mean(axis=1), atol=1e-6)
    flat_params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    flat_stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
    assert "block0/expand/conv/kernel" not in flat_params and "block2/expand/conv/kernel" in flat_params
    assert flat_params["block2/depthwise/conv/kernel"].shape == (5, 5, 1, 48)
    assert set(flat_stats) == {
        k.replace("/scale", s) for k in flat_params if k.endswith("bn/scale") for s in ("/mean", "/var")
    }


def test_running_averages_unless_the_statistics_are_mutable(tower):
    module, variables, images = tower
    infer = jax.jit(module.apply)
    train = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))
    pooled = infer(variables, images)[0]
    other_stats = jax.tree.map(lambda x: x * 1.5, variables["batch_stats"])
    assert np.max(np.abs(pooled - infer({**variables, "batch_stats": other_stats}, images)[0])) > 1e-3
    (trained, _), updated = train(variables, images)
    assert np.max(np.abs(pooled - trained)) > 1e-3
    (trained_other, _), _ = train({**variables, "batch_stats": other_stats}, images)
    np.testing.assert_allclose(trained, trained_other, atol=1e-5)
    old, new = (flax.traverse_util.flatten_dict(t, sep="/") for t in (variables["batch_stats"], updated["batch_stats"]))
    assert all(not np.allclose(old[k], new[k]) for k in old)
    # torch's momentum 0.01: the running mean moves a hundredth of the way to the batch's
    key = "stem/bn/mean"
    assert np.max(np.abs(new[key] - old[key])) < 0.05 * np.max(np.abs(old[key])) + 0.05


def test_every_parameter_has_logical_axes(tower):
    module, _, images = tower
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), images))["params"]
    flat = flax.traverse_util.flatten_dict(boxed, sep="/")
    known = {name for name, _ in LOGICAL_RULES} | {None}
    assert all(isinstance(x, flax.linen.Partitioned) and len(x.names) == x.value.ndim for x in flat.values())
    assert set().union(*(x.names for x in flat.values())) <= known


def efficientnet_flops(v: EfficientNetConfig) -> float:
    """Multiply-adds x 2 of one image: the stem, per block the expansion, the depthwise convolution (k*k per
    output channel), the squeeze-and-excitation's two dense layers and the projection."""
    side = (v.image_size + 1 - 3) // 2 + 1
    stem = v.round_channels(v.stem_channels)
    total = 2 * side**2 * 9 * 3 * stem
    for b in v.blocks:
        expanded = b.in_channels * b.expand_ratio
        if b.expand_ratio != 1:
            total += 2 * side**2 * b.in_channels * expanded
        pad = 2 * (b.kernel // 2) - (1 if b.stride == 2 and not b.symmetric else 0)
        side = (side + pad - b.kernel) // b.stride + 1
        reduced = max(1, int(b.in_channels * v.se_ratio))
        total += 2 * side**2 * b.kernel**2 * expanded + 2 * 2 * expanded * reduced
        total += 2 * side**2 * expanded * b.out_channels
    return total


@pytest.mark.parametrize("name", ["tiny", "ALIGN-base"])
def test_flops_per_example(name):
    v = TINY if name == "tiny" else get_architecture(name).model.vision
    counted = flops_per_example(v, v.features)
    print(f"\n{name} image tower: {counted / 1e9:.4g} GFLOPs per image")
    assert counted == efficientnet_flops(v)


def test_config_round_trips_through_json():
    v = get_architecture("ALIGN-base").model.vision
    assert ImageTowerConfig.from_dict(json.loads(json.dumps(v.to_dict()))) == v


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"strides": (1, 2)}, r"vision.strides must list one value per stage \(3\)"),
        ({"strides": (1, 3, 2)}, "vision.strides must be 1 or 2"),
        ({"kernel_sizes": (3, 4, 3)}, "vision.kernel_sizes must be odd"),
        ({"expand_ratios": (1, 0, 4)}, r"vision.expand_ratios\[1\] must be an integer >= 1"),
        ({"width_coefficient": 0}, "vision.width_coefficient must be a positive number"),
        ({"pool": "attn"}, "vision.pool"),
        ({"bn_momentum": 0.99 + 0.02}, "bn_momentum must be in"),
    ],
)
def test_bad_configs(changes, match):
    with pytest.raises(InputError, match=match):
        TINY.replace(**changes)


def test_embed_dim_must_be_the_final_width():
    with pytest.raises(InputError, match="embed_dim 32 is not the efficientnet tower's final width 24"):
        TINY.check(32)
