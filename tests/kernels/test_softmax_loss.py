"""The fused softmax (CLIP) contrastive loss kernels: numerics against the jnp reference in
interpret mode (one device and 8 simulated devices under shard_map), ahead-of-time compilation
for real TPU generations, and bad inputs. Run with -s to see the measured errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm.errors import InputError
from jaxvlm.kernels.softmax_loss import sharded_softmax_loss, softmax_loss, softmax_loss_reference
from tests.kernels.checks import assert_close
from tests.kernels.tpu import TOPOLOGIES, compile_for_tpu, mosaic_kernels, tpu_mesh

ARGS = (0, 1, 2)  # x, y, scale


def embeddings(n, d, dtype, *, noise=None, seed=0):
    """Unit-norm [n, d] image and text embeddings: independent, or each text its image plus
    ``noise`` times a random vector (noise 1 and scale 20: a well-trained batch, the softmax of
    the positives within 1e-3 of 1)."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d), jnp.float32)
    y = jax.random.normal(ky, (n, d), jnp.float32)
    if noise is not None:
        y = x + noise * y
    normalise = lambda a: (a / jnp.linalg.norm(a, axis=1, keepdims=True)).astype(dtype)
    return normalise(x), normalise(y)


def check_against_reference(loss_and_grads, x, y, scale):
    loss, grads = loss_and_grads
    ref_loss, ref_grads = jax.value_and_grad(softmax_loss_reference, ARGS)(x, y, scale)
    assert [g.dtype for g in grads] == [x.dtype, y.dtype, jnp.float32]
    assert_close("loss", loss, ref_loss, x.dtype)
    for name, grad, ref in zip(("dx", "dy", "dscale"), grads, ref_grads):
        assert_close(name, grad, ref, x.dtype)


@pytest.mark.parametrize(
    "n, d, dtype, scale, noise",
    [
        (1, 64, jnp.float32, 10.0, None),
        (100, 200, jnp.float32, 20.0, None),
        (300, 1152, jnp.float32, 20.0, 1.0),
        (300, 64, jnp.float32, 100.0, None),
        (200, 1536, jnp.float32, 20.0, None),
        (100, 200, jnp.bfloat16, 20.0, None),
        (300, 1152, jnp.bfloat16, 20.0, 1.0),
        (600, 64, jnp.bfloat16, 50.0, None),
    ],
)
def test_matches_reference(n, d, dtype, scale, noise):
    x, y = embeddings(n, d, dtype, noise=noise)
    loss_fn = functools.partial(softmax_loss, interpret=True)
    print(f"\nsoftmax_loss N={n} D={d} {jnp.dtype(dtype).name} scale={scale} noise={noise}")
    scale = jnp.float32(scale)
    check_against_reference(jax.jit(jax.value_and_grad(loss_fn, ARGS))(x, y, scale), x, y, scale)


def sharded(loss_fn, mesh, **kwargs):
    """loss_fn(x, y, scale) as a shard_map over the data axis, the batch split across devices."""
    return jax.shard_map(loss_fn, mesh=mesh, in_specs=(P("data"), P("data"), P()), out_specs=P(), **kwargs)


@pytest.mark.parametrize("n, d, dtype", [(37, 64, jnp.float32), (20, 200, jnp.bfloat16)])
def test_sharded_matches_reference(n, d, dtype):
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    x, y = embeddings(8 * n, d, dtype, noise=2.0, seed=1)
    scale = jnp.float32(30.0)
    # jax's Pallas interpreter needs check_vma=False (compiled kernels do not: see the TPU tests)
    loss_fn = sharded(functools.partial(sharded_softmax_loss, axis_name="data", interpret=True), mesh, check_vma=False)
    print(f"\nsharded_softmax_loss 8 devices x n={n}, D={d} {jnp.dtype(dtype).name}")
    check_against_reference(jax.jit(jax.value_and_grad(loss_fn, ARGS))(x, y, scale), x, y, scale)


def test_sharded_interpret_with_check_vma_says_what_to_do():
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    x, y = embeddings(8 * 4, 64, jnp.float32)
    loss_fn = sharded(functools.partial(sharded_softmax_loss, axis_name="data", interpret=True), mesh)
    with pytest.raises(ValueError, match="check_vma=False"):
        loss_fn(x, y, jnp.float32(10.0))


@pytest.mark.slow
@pytest.mark.parametrize("generation", sorted(TOPOLOGIES))
def test_compiles_for_tpu(generation):
    n, d = 1000, 1152  # rows per chip: not whole blocks, so the masking compiles too
    for dtype in (jnp.float32, jnp.bfloat16):
        mesh = tpu_mesh(generation, devices=1)
        replicated = NamedSharding(mesh, P())
        compiled = compile_for_tpu(
            jax.value_and_grad(softmax_loss, ARGS),
            jax.ShapeDtypeStruct((n, d), dtype, sharding=replicated),
            jax.ShapeDtypeStruct((n, d), dtype, sharding=replicated),
            jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated),
        )
        single = mosaic_kernels(compiled)

        mesh = tpu_mesh(generation)
        batch = jax.ShapeDtypeStruct((n * mesh.size, d), dtype, sharding=NamedSharding(mesh, P("data")))
        loss_fn = sharded(functools.partial(sharded_softmax_loss, axis_name="data"), mesh)
        compiled = compile_for_tpu(
            jax.value_and_grad(loss_fn, ARGS),
            batch,
            batch,
            jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P())),
        )
        multi = mosaic_kernels(compiled)
        print(f"\n{generation} {jnp.dtype(dtype).name}: {single} Mosaic kernels on 1 chip, {multi} on {mesh.size}")
        assert single > 0 and multi > 0


@pytest.mark.parametrize(
    "x_shape, y_shape, match",
    [
        ((8, 64), (9, 64), "same shape"),
        ((8, 64), (8, 32), "same shape"),
        ((8,), (8,), "must be 2-D"),
        ((0, 64), (0, 64), "empty input"),
    ],
)
def test_bad_shapes(x_shape, y_shape, match):
    with pytest.raises(InputError, match=match):
        softmax_loss(jnp.ones(x_shape), jnp.ones(y_shape), 1.0, interpret=True)


@pytest.mark.parametrize(
    "scale, error, match",
    [
        (jnp.ones(1), InputError, "scalar"),
        (float("nan"), InputError, "finite"),
        (jnp.float32(-jnp.inf), InputError, "finite"),
        (1j, InputError, "real"),
    ],
)
def test_bad_scale(scale, error, match):
    x, y = embeddings(8, 64, jnp.float32)
    for loss_fn in (softmax_loss, functools.partial(sharded_softmax_loss, axis_name="data")):
        with pytest.raises(error, match=match) as raised:
            loss_fn(x, y, scale, interpret=True)
        assert "\n" not in str(raised.value)


def test_traced_non_finite_scale_is_not_silent():
    """Under jit the scale cannot be checked; a non-finite one gives a non-finite loss."""
    x, y = embeddings(8, 64, jnp.float32)
    loss = jax.jit(functools.partial(softmax_loss, interpret=True))(x, y, jnp.float32(jnp.nan))
    assert not jnp.isfinite(loss)


@pytest.mark.parametrize(
    "x_dtype, y_dtype", [(jnp.float16, jnp.float16), (jnp.int32, jnp.int32), (jnp.float32, jnp.bfloat16)]
)
def test_bad_dtypes(x_dtype, y_dtype):
    x, y = embeddings(8, 64, jnp.float32)
    with pytest.raises(InputError, match="float32 or both bfloat16"):
        softmax_loss(x.astype(x_dtype), y.astype(y_dtype), 1.0, interpret=True)
