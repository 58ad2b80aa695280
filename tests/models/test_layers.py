"""layers.dot_general: the product every Dense layer uses, and its derivative."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.models import layers
from jaxvlm.models.layers import dot_general
from tests.tolerances import FLOAT32_EPS, assert_close_to_scale

# (lhs shape, rhs shape, dimension numbers): Dense, DenseGeneral into heads, out of heads
# (two contracted axes), contracted axes out of order, free axes on both sides of them
CASES = [
    ((5, 7), (7, 3), (((1,), (0,)), ((), ()))),
    ((2, 5, 7), (7, 4, 3), (((2,), (0,)), ((), ()))),
    ((2, 5, 4, 3), (4, 3, 6), (((2, 3), (0, 1)), ((), ()))),
    ((2, 5, 4, 3), (3, 6, 4), (((3, 2), (0, 2)), ((), ()))),
    ((4, 2, 5), (3, 4, 6), (((0,), (1,)), ((), ()))),
]


def _loss(dot, dims):
    return lambda x, y: jnp.sum(jnp.sin(dot(x, y, dims).astype(jnp.float32)))


@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", CASES)
def test_gradients_equal_lax_in_float32(lhs_shape, rhs_shape, dims):
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (lhs_shape, rhs_shape))
    expected = jax.grad(_loss(jax.lax.dot_general, dims), (0, 1))(x, y)
    got = jax.grad(_loss(dot_general, dims), (0, 1))(x, y)
    assert np.array_equal(dot_general(x, y, dims), jax.lax.dot_general(x, y, dims))
    # an entry of one operand's gradient sums over the other operand's free axes, n terms (18 at most
    # here), which another contraction may add in another order: up to about n * eps of the gradients' size
    n = max(
        int(np.prod([size for i, size in enumerate(shape) if i not in contracted]))
        for shape, contracted in zip((lhs_shape, rhs_shape), dims[0])
    )
    assert_close_to_scale(got, expected, rtol_of_scale=n * FLOAT32_EPS, what=f"{lhs_shape} x {rhs_shape}: gradients")


@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", CASES)
def test_bfloat16_gradients_are_float32_gradients_rounded(lhs_shape, rhs_shape, dims):
    rng = np.random.default_rng(1)
    x, y = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in (lhs_shape, rhs_shape))
    grads = jax.grad(_loss(dot_general, dims), (0, 1))(x, y)
    # the same cotangent (rounded to bfloat16, as the product's output is) through float32 products
    up = (x.astype(jnp.float32), y.astype(jnp.float32))
    out, pullback = jax.vjp(lambda a, b: jax.lax.dot_general(a, b, dims), *up)
    cotangent = jnp.cos(out.astype(jnp.bfloat16).astype(jnp.float32)).astype(jnp.bfloat16).astype(jnp.float32)
    for got, expected in zip(grads, pullback(cotangent), strict=True):
        assert got.dtype == jnp.bfloat16
        error = float(jnp.max(jnp.abs(got.astype(jnp.float32) - expected)))
        scale = float(jnp.max(jnp.abs(expected)))
        print(f"{lhs_shape} x {rhs_shape}: max abs error {error:.2e} (largest gradient {scale:.2f})")
        assert error <= scale * 2**-8  # one bfloat16 rounding of the float32 result


def test_bfloat16_backward_multiplies_in_bfloat16():
    """Every product of a bfloat16 Dense layer's forward and backward pass takes bfloat16 operands:
    a float32 cotangent would make XLA multiply in float32."""
    x = jnp.ones((4, 8), jnp.bfloat16)
    w = jnp.ones((8, 16), jnp.bfloat16)
    dims = (((1,), (0,)), ((), ()))
    hlo = jax.jit(jax.grad(_loss(dot_general, dims), (0, 1))).lower(x, w).as_text()
    operands = re.findall(r"stablehlo.dot_general .*: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)", hlo)
    assert len(operands) == 3  # forward, input gradient, weight gradient
    assert all(pair == ("bf16", "bf16") for pair in operands), operands


@pytest.mark.parametrize("options", [dict(precision="highest"), dict(preferred_element_type=jnp.float32)])
def test_options_it_does_not_take_are_refused(options):
    with pytest.raises(ValueError, match="not supported"):
        dot_general(jnp.ones((2, 2)), jnp.ones((2, 2)), (((1,), (0,)), ((), ())), **options)


def test_batch_axes_are_refused():
    with pytest.raises(ValueError, match="batch axes"):
        dot_general(jnp.ones((3, 2, 2)), jnp.ones((3, 2, 2)), (((2,), (1,)), ((0,), (0,))))


@pytest.mark.parametrize("remat", ["none", "dots", "dots_no_batch", "full"])
def test_remat_policies_see_the_products(remat):
    """The dot policies keep every product: the backward pass recomputes none of them (a
    custom-VJP product is invisible to `checkpoint_dots`; the products are named for the policies)."""
    encoder = layers.Encoder(depth=2, heads=2, mlp_dim=32, act="gelu", ln_eps=1e-5, remat=remat)
    x = jnp.ones((2, 5, 8))
    params = encoder.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(encoder.apply(p, x)[0] ** 2)))
    names = re.findall(r'loc\("([^"]*)"', grad.lower(params).as_text(debug_info=True))
    recomputed = {n.split("/")[-2] for n in names if "rematted_computation" in n and "dot_general" in n}
    # dots_no_batch recomputes the attention's batched products (scores and weighted values)
    expected = {
        "none": set(),
        "dots": set(),
        "dots_no_batch": {"bhtd,bhsd->bhts", "bhts,bhsd->bhtd"},
        # full: every product whose output the backward pass needs (fc2's output it does not)
        "full": {"query", "key", "value", "out", "fc1", "bhtd,bhsd->bhts", "bhts,bhsd->bhtd"},
    }[remat]
    assert recomputed == expected
