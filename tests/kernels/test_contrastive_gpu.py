"""The fused contrastive losses as Pallas GPU (Triton) kernels (`jaxvlm.kernels.contrastive_gpu`):
numerics in interpret mode against the jnp references over ragged shapes, the Triton kernels in
programs lowered for CUDA on this CPU host (no [N, M] array among them), and the input checks the
TPU modules make. Run with -s to see the measured errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm.errors import InputError
from jaxvlm.kernels.contrastive_gpu import sigmoid_loss_gpu, softmax_loss_gpu
from jaxvlm.kernels.sigmoid_loss import sigmoid_loss_reference
from jaxvlm.kernels.softmax_loss import softmax_loss_reference
from tests.kernels.checks import assert_close  # the TPU kernels' tolerances: 1e-5 f32, 2e-2 bf16
from tests.kernels.gpu import lower_for_cuda, triton_kernels

SOFTMAX, SIGMOID = (0, 1, 2), (0, 1, 2, 3)  # differentiated arguments: x, y, scale (, bias)


def embeddings(n, m, d, dtype, *, noise=2.0, seed=0):
    """Unit-norm images [n, d] and texts [m, d], text i its image plus ``noise`` times a random
    vector (noise 1 and scale 20: a well-trained batch, softmax of the positives close to 1)."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d))
    y = noise * jax.random.normal(ky, (m, d))
    y = y.at[: min(n, m)].add(x[: min(n, m)])
    unit = lambda v: (v / jnp.linalg.norm(v, axis=1, keepdims=True)).astype(dtype)  # noqa: E731
    return unit(x), unit(y)


def check(kernel, reference, argnums, *args):
    """Loss and gradients of ``kernel`` in interpret mode against the reference's, computed in
    float32 from the same (possibly bf16) inputs; gradients come in the inputs' dtypes."""
    dtype = args[0].dtype
    loss, grads = jax.jit(jax.value_and_grad(lambda *a: kernel(*a, interpret=True), argnums))(*args)
    assert [g.dtype for g in grads] == [dtype, dtype] + [jnp.float32] * (len(argnums) - 2)
    ref_loss, ref_grads = jax.value_and_grad(reference, argnums)(*(jnp.asarray(a, jnp.float32) for a in args))
    assert_close("loss", loss, ref_loss, dtype)
    for name, grad, ref in zip(("dx", "dy", "dscale", "dbias"), grads, ref_grads):
        assert_close(name, grad, ref, dtype)


@pytest.mark.parametrize(
    "n, d, dtype, scale, noise",
    [
        (1, 64, jnp.float32, 10.0, 2.0),
        (7, 72, jnp.float32, 20.0, 2.0),
        (130, 1152, jnp.float32, 20.0, 1.0),
        (257, 64, jnp.bfloat16, 50.0, 2.0),
        (100, 72, jnp.bfloat16, 20.0, 1.0),
    ],
)
def test_softmax_matches_reference(n, d, dtype, scale, noise):
    print(f"\nsoftmax_loss_gpu N={n} D={d} {jnp.dtype(dtype).name} scale={scale} noise={noise}")
    x, y = embeddings(n, n, d, dtype, noise=noise)
    check(softmax_loss_gpu, softmax_loss_reference, SOFTMAX, x, y, jnp.float32(scale))


@pytest.mark.parametrize(
    "n, m, d, dtype",
    [
        (1, 7, 64, jnp.float32),
        (130, 7, 72, jnp.float32),
        (100, 257, 72, jnp.float32),
        (257, 130, 64, jnp.bfloat16),
        (7, 100, 1152, jnp.bfloat16),
    ],
)
def test_sigmoid_matches_reference(n, m, d, dtype):
    print(f"\nsigmoid_loss_gpu N={n} M={m} D={d} {jnp.dtype(dtype).name}")
    x, y = embeddings(n, m, d, dtype)
    check(sigmoid_loss_gpu, sigmoid_loss_reference, SIGMOID, x, y, jnp.float32(10.0), jnp.float32(-10.0))


def test_large_logits_are_stable():
    """Logits past exp's float32 range (~88) for the running log-sum-exp: CLIP's largest scale,
    100, on embeddings that share a direction (all logits ~87-97); logits in the thousands for
    softplus, which must keep its linear part."""
    x, y = embeddings(100, 100, 64, jnp.float32)
    shared = lambda v: (v + 0.4) / jnp.linalg.norm(v + 0.4, axis=1, keepdims=True)  # noqa: E731
    print("\nsoftmax_loss_gpu, scale 100, logits ~87-97")
    check(softmax_loss_gpu, softmax_loss_reference, SOFTMAX, shared(x), shared(y), jnp.float32(100.0))
    print("sigmoid_loss_gpu, logits up to ~3600")
    check(
        sigmoid_loss_gpu, sigmoid_loss_reference, SIGMOID, 30.0 * x, 30.0 * y[:77], jnp.float32(4.0), jnp.float32(3.0)
    )


# ----------------------------------------------------------------------------------------------
# Lowered for CUDA: the Triton kernels are the program.


def largest_tensor(text):
    """Elements of the largest tensor type in a lowered program."""
    shapes = re.findall(r"tensor<((?:\d+x)+)[a-z]", text)
    return max(int(np.prod([int(v) for v in s.rstrip("x").split("x")])) for s in shapes)


@pytest.mark.parametrize(
    "loss, m, argnums, kernels",
    [
        (softmax_loss_gpu, 4096, SOFTMAX, 4),  # forward: row and column statistics; backward: dX, dY
        (sigmoid_loss_gpu, 3000, SIGMOID, 3),  # forward: row sums; backward: dX, dY
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_to_triton_kernels_without_the_logits(loss, m, argnums, kernels, dtype):
    n, d = 4096, 1152
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    args = (jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((m, d), dtype)) + (scalar,) * (len(argnums) - 2)
    text = lower_for_cuda(jax.value_and_grad(loss, argnums), *args)
    print(
        f"\n{loss.__name__} {jnp.dtype(dtype).name}: {triton_kernels(text)} Triton kernels, largest array "
        f"{largest_tensor(text)} elements (N x M = {n * m})"
    )
    assert triton_kernels(text) == kernels
    assert largest_tensor(text) < n * m // 2


def test_lowers_inside_shard_map_with_check_vma():
    """A per-device loss inside shard_map: kernel outputs vary like their inputs, and the gradient
    of the replicated scale and bias is summed over the devices."""
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rows = jax.ShapeDtypeStruct((8 * 100, 768), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    loss = jax.shard_map(
        lambda *a: jax.lax.psum(sigmoid_loss_gpu(*a), "data"),
        mesh=mesh,
        in_specs=(P("data"), P("data"), P(), P()),
        out_specs=P(),
    )
    text = lower_for_cuda(jax.value_and_grad(loss, SIGMOID), rows, rows, scalar, scalar)
    assert triton_kernels(text) == 3


def test_interpret_inside_shard_map_with_check_vma_says_what_to_do():
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    x, y = embeddings(8 * 4, 8 * 4, 64, jnp.float32)
    loss = jax.shard_map(
        lambda *a: softmax_loss_gpu(*a, interpret=True),
        mesh=mesh,
        in_specs=(P("data"), P("data"), P()),
        out_specs=P("data"),
    )
    with pytest.raises(ValueError, match="check_vma=False"):
        loss(x, y, jnp.float32(10.0))


# ----------------------------------------------------------------------------------------------
# Bad input: the TPU modules' checks and messages.


@pytest.mark.parametrize(
    "x, y, scale, error, match",
    [
        ((8, 64), (9, 64), 1.0, InputError, "same shape"),
        ((0, 64), (0, 64), 1.0, InputError, "empty input"),
        ((8, 64), (8, 64), float("nan"), InputError, "finite"),
        ((8, 64), (8, 64), 1j, InputError, "real"),
        ((8, 64), (8, 64), jnp.ones(2), InputError, "scalar"),
    ],
)
def test_softmax_bad_input(x, y, scale, error, match):
    with pytest.raises(error, match=match) as raised:
        softmax_loss_gpu(jnp.ones(x), jnp.ones(y), scale, interpret=True)
    assert "softmax_loss_gpu" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "x, y, scale, bias, match",
    [
        (np.ones((4, 8), np.float32), np.ones((4, 6), np.float32), 1.0, 0.0, "embedding size D, got 8 and 6"),
        (np.ones((0, 8), np.float32), np.ones((4, 8), np.float32), 1.0, 0.0, "empty input"),
        (np.ones((4, 8), np.float32), np.ones((4, 8), np.float32), 1.0, -np.inf, "bias must be finite"),
        (np.ones((4, 8), np.float16), np.ones((4, 8), np.float16), 1.0, 0.0, "float32 or both bfloat16"),
    ],
)
def test_sigmoid_bad_input(x, y, scale, bias, match):
    with pytest.raises(InputError, match=match) as raised:
        sigmoid_loss_gpu(x, y, scale, bias, interpret=True)
    assert "sigmoid_loss_gpu" in str(raised.value)


def test_traced_non_finite_scale_is_not_silent():
    """Under jit a scale cannot be checked: a NaN one gives a NaN loss, never a finite wrong one."""
    x, y = embeddings(16, 16, 64, jnp.float32)
    nan = jnp.float32(np.nan)
    assert np.isnan(jax.jit(lambda s: softmax_loss_gpu(x, y, s, interpret=True))(nan))
    assert np.isnan(jax.jit(lambda s: sigmoid_loss_gpu(x, y, s, 0.0, interpret=True))(nan))
