"""`jaxvlm.ops`: attention's XLA path against the jnp reference, which implementation each
setting picks on CPU and when compiled for TPU (on one chip and under a mesh), clear errors for
bad input; the contrastive losses' dispatch, single-device and inside shard_map."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm import ops
from jaxvlm.kernels import sigmoid_loss as gl
from jaxvlm.kernels import softmax_loss as sl
from jaxvlm.kernels.flash_attention import attention_reference
from tests.kernels.gpu import lower_for_cuda, triton_kernels
from tests.kernels.tpu import compile_for_tpu, mosaic_kernels, tpu_mesh
from tests.tolerances import FLOAT32_EPS, assert_close_to_scale


def inputs(t, s, d=64, batch=2, heads=2, dtype=jnp.float32, key_mask=False, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v = (
        jax.random.normal(key, (batch, n, heads, d), jnp.float32).astype(dtype) for key, n in zip(keys, (t, s, s))
    )
    mask = jax.random.bernoulli(keys[3], 0.7, (batch, s)).at[:, 0].set(True) if key_mask else None
    return q, k, v, mask


# (T, S, causal, key_mask): self-attention, causal text (queries as the last T positions when T < S),
# cross-attention, the single probe of a MAP head
CASES = [
    (50, 50, False, False),
    (77, 77, True, True),
    (76, 255, False, True),
    (4, 9, True, False),
    (1, 729, False, False),
    (197, 197, False, True),
]


@pytest.mark.parametrize("t, s, causal, key_mask", CASES)
def test_xla_matches_reference(t, s, causal, key_mask):
    q, k, v, mask = inputs(t, s, key_mask=key_mask)
    xla = jax.jit(lambda q, k, v, mask: ops.attention(q, k, v, causal=causal, key_mask=mask, implementation="xla"))(
        q, k, v, mask
    )
    error = float(jnp.abs(xla - attention_reference(q, k, v, causal=causal, key_mask=mask)).max())
    print(f"\nT={t} S={s} causal={causal} key_mask={key_mask}: xla vs reference max abs error {error:.1e}")
    assert error <= 1e-6


def test_xla_matches_reference_in_bfloat16():
    q, k, v, mask = inputs(77, 77, dtype=jnp.bfloat16, key_mask=True)
    xla = ops.attention(q, k, v, causal=True, key_mask=mask, implementation="xla")
    ref = attention_reference(q, k, v, causal=True, key_mask=mask)
    assert xla.dtype == jnp.bfloat16
    error = float(jnp.abs(xla.astype(jnp.float32) - ref.astype(jnp.float32)).max())
    print(f"\nbfloat16 xla vs reference max abs error {error:.1e}")
    assert error <= 2e-2 * float(jnp.abs(ref.astype(jnp.float32)).max())


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_decoding_step_with_traced_offset(implementation):
    """One query at a traced position over a fixed-length cache, as cached decoding runs it; the
    kernels do not take an offset, so "pallas" runs XLA here too."""
    q, k, v, mask = inputs(1, 12, key_mask=True)

    @jax.jit
    def step(index):
        return ops.attention(q, k, v, causal=True, q_offset=index, key_mask=mask, implementation=implementation)

    for index in (0, 5, 11):
        expected = attention_reference(
            q, k[:, : index + 1], v[:, : index + 1], causal=True, key_mask=mask[:, : index + 1]
        )
        np.testing.assert_allclose(step(index), expected, atol=1e-6)


@pytest.mark.parametrize(
    "t, s, causal, key_mask", [(197, 197, False, True), (77, 77, True, False), (4, 9, True, False)]
)
def test_auto_is_xla_on_cpu(t, s, causal, key_mask):
    q, k, v, mask = inputs(t, s, key_mask=key_mask)

    def run(implementation):
        return jax.jit(
            lambda q, k, v: ops.attention(q, k, v, causal=causal, key_mask=mask, implementation=implementation)
        )(q, k, v)

    np.testing.assert_array_equal(run("auto"), run("xla"))


@pytest.mark.parametrize(
    "t, s, causal, key_mask, kernel",
    [
        (197, 197, False, False, True),
        (77, 77, True, False, True),
        (76, 255, False, False, True),
        (77, 77, True, True, False),
    ],
)
def test_pallas_on_cpu_interprets_the_triton_kernel(t, s, causal, key_mask, kernel):
    """Forward and gradients match XLA; with a key_mask (not a Triton kernel case) it is XLA."""
    q, k, v, mask = inputs(t, s, batch=1, key_mask=key_mask)

    def loss(implementation, q, k, v):
        return jnp.sum(ops.attention(q, k, v, causal=causal, key_mask=mask, implementation=implementation) ** 2)

    lowered = jax.jit(lambda *a: loss("pallas", *a)).lower(q, k, v).as_text()
    assert ("stablehlo.while" in lowered) == kernel  # the interpreter loops over the kernel's grid
    pallas = jax.jit(jax.value_and_grad(lambda *a: loss("pallas", *a), argnums=(0, 1, 2)))(q, k, v)
    xla = jax.jit(jax.value_and_grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2)))(q, k, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), pallas, xla)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q, k, v, m: (q[:, :, :1], k, v, m), "differ in batch, heads or head_dim"),
        (lambda q, k, v, m: (q, k, v[:, :-1], m), "k and v shapes differ"),
        (lambda q, k, v, m: (q[0], k, v, m), r"must be \[batch, length, heads, head_dim\]"),
        (lambda q, k, v, m: (q.astype(jnp.bfloat16), k, v, m), "share one float dtype"),
        (
            lambda q, k, v, m: (q.astype(jnp.int32), k.astype(jnp.int32), v.astype(jnp.int32), m),
            "share one float dtype",
        ),
        (lambda q, k, v, m: (q, k, v, m[:, :-1]), "key_mask must be bool"),
        (lambda q, k, v, m: (q, k, v, m.astype(jnp.int32)), "key_mask must be bool"),
    ],
)
def test_bad_inputs_are_one_clear_error(change, message):
    q, k, v, mask = change(*inputs(8, 8, key_mask=True))
    with pytest.raises(ValueError, match=message):
        ops.attention(q, k, v, key_mask=mask)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="implementation 'cudnn'"):
        ops.attention(*inputs(8, 8)[:3], implementation="cudnn")


def tpu_args(mesh, t, s, spec=None):
    sharding = NamedSharding(mesh, spec or P())
    return [jax.ShapeDtypeStruct((2 * mesh.size, n, 4, 64), jnp.bfloat16, sharding=sharding) for n in (t, s, s)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "t, s, causal, kernels", [(197, 197, False, True), (77, 77, True, False), (1, 197, True, False)]
)
def test_auto_picks_the_kernel_when_compiled_for_tpu(t, s, causal, kernels):
    """The choice is made for the platform the program is lowered for, not this CPU: sequences of
    at least ops.ATTENTION_KERNEL_MIN_LENGTH get the Mosaic kernel, forward and backward."""

    def loss(q, k, v):
        return ops.attention(q, k, v, causal=causal).astype(jnp.float32).sum()

    args = tpu_args(tpu_mesh("v5e", devices=1), t, s)
    found = [mosaic_kernels(compile_for_tpu(fn, *args)) for fn in (loss, jax.grad(loss, argnums=(0, 1, 2)))]
    assert found == ([1, 3] if kernels else [0, 0])


@pytest.mark.parametrize("rules, gathered", [([("batch", "data")], False), ([], True)])
def test_kernel_runs_per_device_under_a_mesh(rules, gathered):
    """Mosaic kernels cannot be partitioned automatically: under a mesh of several devices the
    kernel runs in shard_map, on each device's share of the batch as the logical axis rules say
    (none without rules: every device then gathers the whole batch)."""
    mesh = tpu_mesh("v5e")
    args = tpu_args(mesh, 197, 197, P("data"))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = compile_for_tpu(lambda q, k, v: ops.attention(q, k, v, implementation="pallas"), *args)
    assert mosaic_kernels(compiled) == 1
    assert ("all-gather" in compiled.as_text()) == gathered


# ---------------------------------------------------------------- contrastive losses

LOSSES = {  # name -> (ops function, single-device reference, number of scalar arguments)
    "softmax": (ops.softmax_contrastive_loss, sl.softmax_loss_reference, 1),
    "sigmoid": (ops.sigmoid_contrastive_loss, gl.sigmoid_loss_reference, 2),
}


def loss_rtol(args) -> float:
    """The loss and the scalars' gradients are sums over all n x n pairs, added in the kernels' block
    order: about sqrt(n * n) * eps = 4.8e-6 (n = 40) of the size of the loss and gradients apart."""
    return len(args[0]) * FLOAT32_EPS


def loss_inputs(n, d, scalars, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d)) / jnp.sqrt(d)
    y = 0.5 * x + jax.random.normal(ky, (n, d)) / jnp.sqrt(d)
    return (x, y, jnp.float32(10.0), jnp.float32(-10.0))[: 2 + scalars]


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("implementation", ["auto", "xla", "pallas"])
def test_contrastive_loss_dispatch_on_one_device(name, implementation):
    loss, reference, scalars = LOSSES[name]
    args = loss_inputs(37, 64, scalars)
    argnums = tuple(range(len(args)))
    value_and_grad = jax.jit(jax.value_and_grad(lambda *a: loss(*a, implementation=implementation), argnums))
    # "pallas" on CPU: the Triton kernels in the interpreter, which loops over their grids
    assert ("stablehlo.while" in value_and_grad.lower(*args).as_text()) == (implementation == "pallas")
    got = value_and_grad(*args)
    want = jax.value_and_grad(reference, argnums)(*args)
    print()
    assert_close_to_scale(got, want, rtol_of_scale=loss_rtol(args), what=f"{name} {implementation}: loss and gradients")


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_contrastive_loss_inside_shard_map(name, implementation):
    """On the 8 simulated devices, the sharded forms equal the single-device reference."""
    loss, reference, scalars = LOSSES[name]
    args = loss_inputs(8 * 5, 64, scalars)
    argnums = tuple(range(len(args)))
    mesh = jax.sharding.Mesh(jax.devices()[:8], ("data",))
    data, scalar = P("data"), P()
    sharded = jax.shard_map(
        lambda *a: loss(*a, axis_name="data", implementation=implementation),
        mesh=mesh,
        in_specs=(data, data, *[scalar] * scalars),
        out_specs=scalar,
        check_vma=implementation == "xla",
    )  # Pallas's interpreter cannot track varying axes
    got = jax.jit(jax.value_and_grad(sharded, argnums))(*args)
    want = jax.value_and_grad(reference, argnums)(*args)
    print()
    assert_close_to_scale(
        got, want, rtol_of_scale=loss_rtol(args), what=f"{name} {implementation} on 8 devices: loss and gradients"
    )


@pytest.mark.parametrize("name, kernels", [("softmax", 4), ("sigmoid", 3)])
@pytest.mark.parametrize("implementation", ["auto", "xla", "pallas"])
def test_contrastive_loss_lowered_for_cuda(name, kernels, implementation):
    """On one GPU "auto" and "pallas" run the Triton kernels, forward and backward (chosen for the
    platform the program is lowered for: here CUDA, on this CPU host)."""
    loss, _, scalars = LOSSES[name]
    args = [jax.ShapeDtypeStruct((300, 768), jnp.bfloat16)] * 2 + [jax.ShapeDtypeStruct((), jnp.float32)] * scalars
    fn = jax.value_and_grad(lambda *a: loss(*a, implementation=implementation), tuple(range(len(args))))
    assert triton_kernels(lower_for_cuda(fn, *args)) == (0 if implementation == "xla" else kernels)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("implementation", ["auto", "pallas"])
def test_sharded_contrastive_loss_is_the_reference_on_cuda(name, implementation):
    loss, _, scalars = LOSSES[name]
    mesh = jax.sharding.Mesh(jax.devices()[:8], ("data",))
    rows = jax.ShapeDtypeStruct((8 * 100, 768), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    sharded = jax.shard_map(
        lambda *a: loss(*a, axis_name="data", implementation=implementation),
        mesh=mesh,
        in_specs=(P("data"), P("data"), *[P()] * scalars),
        out_specs=P(),
        check_vma=False,
    )  # "pallas" in a CPU process also traces the interpreted kernel
    assert triton_kernels(lower_for_cuda(sharded, rows, rows, *[scalar] * scalars)) == 0


def test_contrastive_loss_unknown_implementation():
    with pytest.raises(ValueError, match="implementation"):
        ops.softmax_contrastive_loss(*loss_inputs(4, 8, 1), implementation="triton")


def conv_args(k: int, multiplier: int, dtype=jnp.float32):
    rng = np.random.default_rng(k * 10 + multiplier)
    x = jnp.asarray(rng.normal(size=(2, 13, 11, 8)), dtype)
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, 8 * multiplier)), dtype)
    return x, kernel


def depthwise_dims():
    return jax.lax.conv_dimension_numbers((2, 13, 11, 8), (3, 3, 1, 8), ("NHWC", "HWIO", "NHWC"))


def depthwise(conv, stride: int, padding):
    dims = depthwise_dims()
    return lambda x, kernel: conv(x, kernel, (stride, stride), padding, dimension_numbers=dims, feature_group_count=8)


@pytest.mark.parametrize(
    "k, multiplier, stride, padding",
    [(7, 1, 1, ((3, 3), (3, 3))), (3, 1, 2, ((0, 1), (0, 1))), (5, 2, 2, ((2, 2), (1, 2))), (3, 2, 1, "SAME")],
)
def test_depthwise_conv_is_the_convolution_forward_and_backward(k, multiplier, stride, padding):
    """On CPU the shifted slices; values and both gradients equal XLA's grouped convolution to float32 rounding
    (k * k products summed in another order, relative to the largest output)."""
    x, kernel = conv_args(k, multiplier)
    ours, xla = (depthwise(conv, stride, padding) for conv in (ops.depthwise_conv, jax.lax.conv_general_dilated))
    assert "feature_group_count" not in jax.jit(ours).lower(x, kernel).as_text()  # no convolution left on CPU
    assert_close_to_scale(jax.jit(ours)(x, kernel), xla(x, kernel), rtol_of_scale=4 * k * k * FLOAT32_EPS)
    grads = [jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, kernel) for f in (ours, xla)]
    assert_close_to_scale(grads[0], grads[1], rtol_of_scale=8 * k * k * FLOAT32_EPS, what="gradients")


def test_depthwise_conv_accumulates_bfloat16_in_float32():
    x, kernel = conv_args(7, 1, jnp.bfloat16)
    got = ops.depthwise_conv(
        x, kernel, (1, 1), ((3, 3), (3, 3)), dimension_numbers=depthwise_dims(), feature_group_count=8
    )
    exact = jax.lax.conv_general_dilated(
        x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), ((3, 3), (3, 3)),
        dimension_numbers=depthwise_dims(), feature_group_count=8,
    )  # fmt: skip
    assert got.dtype == jnp.bfloat16
    # one rounding to bfloat16 of the float32 sum: half a bfloat16 ulp of the largest output
    assert_close_to_scale(got.astype(jnp.float32), exact, rtol_of_scale=2**-8)


def test_depthwise_conv_compiled_for_tpu_is_the_convolution():
    pytest.importorskip("libtpu", reason="compiles for a TPU topology")
    mesh = tpu_mesh("v5e", devices=1)
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())) for a in conv_args(7, 1)]
    conv = depthwise(ops.depthwise_conv, 1, ((3, 3), (3, 3)))
    assert "feature_group_count=8" in compile_for_tpu(conv, *args).as_text()
