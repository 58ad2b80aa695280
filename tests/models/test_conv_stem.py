"""timm's ConvStem (MobileCLIP-B's ViT): shapes, and BatchNorm statistics used as they are unless the
"batch_stats" collection is mutable (then the batch's, and the running averages move by torch's momentum); FLOPs of
the MobileCLIP ViTs."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxvlm.models import towers
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.runtime import Runtime
from jaxvlm.models.towers.conv_stem import BN_MOMENTUM, ConvStem
from tests.models.eva_flops import eva_vit_flops


def test_conv_stem_batch_stats():
    stem = ConvStem((8, 12, 16), (2, 2, 2))
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 2.0, (3, 16, 16, 3)).astype(np.float32)
    shapes = nn.meta.unbox(jax.eval_shape(stem.init, jax.random.key(1), images))  # XLA:CPU compiles init slowly
    variables = jax.tree.map(lambda x: rng.normal(0.0, 0.3, x.shape).astype(np.float32), shapes)
    assert set(variables["batch_stats"]) == {"bn0", "bn1"}
    assert "bias" not in variables["params"]["conv0"] and "bias" in variables["params"]["conv2"]
    stats = {bn: {"mean": x["mean"], "var": np.exp(x["var"])} for bn, x in variables["batch_stats"].items()}
    frozen = jax.jit(stem.apply)({**variables, "batch_stats": stats}, images)
    assert frozen.shape == (3, 4, 16)
    train = jax.jit(functools.partial(stem.apply, mutable=["batch_stats"]))
    trained, updates = train({**variables, "batch_stats": stats}, images)
    assert not np.allclose(frozen, trained)
    first = jax.lax.conv_general_dilated(  # the first conv's output: the running mean moves towards its batch mean
        np.asarray(images),
        variables["params"]["conv0"]["kernel"],
        (2, 2),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    expected = (1 - BN_MOMENTUM) * stats["bn0"]["mean"] + BN_MOMENTUM * first.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(updates["batch_stats"]["bn0"]["mean"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["MobileCLIP-B", "MobileCLIP2-L-14"])
def test_mobileclip_vit_flops_per_example(name):
    """The ConvStem's convolutions in place of the patch embedding's product; the rest as any eva_vit tower's."""
    arch = get_architecture(name)
    v = arch.model.vision
    counted = towers.flops_per_example(v, arch.model.embed_dim, Runtime(attention="xla"))
    expected = eva_vit_flops(v, arch.model.embed_dim)
    if v.stem_widths:
        size, channels, stem = v.image_size, 3, 0
        for width, k in zip(v.stem_widths, v.stem_kernels):
            size //= k
            stem += 2 * size * size * k * k * channels * width
            channels = width
        expected += stem - 2 * v.grid**2 * v.patch_size**2 * 3 * v.width
    print(f"\n{name} image tower: {counted / 1e9:.4g} GFLOPs per image")
    assert counted == expected
