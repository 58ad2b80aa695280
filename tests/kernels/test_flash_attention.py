"""Flash attention kernels: numerics of both backends in interpret mode against the jnp
reference (forward and the gradients of q, k, v), the cases each backend refuses, and Mosaic
lowering of the TPU kernel for every TPU generation, ahead of time."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm.errors import InputError
from jaxvlm.kernels.flash_attention import attention_reference, flash_attention, unsupported
from tests.kernels.tpu import TOPOLOGIES, compile_for_tpu, mosaic_kernels, tpu_mesh

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}  # max abs error / max abs value of the reference

# (queries, keys, head_dim, causal, key_mask): every ViT token count, every head dim, causal text,
# CoCa's cross-attention; the longest sequences forward only (interpret mode is slow).
CASES = [
    (50, 50, 64, False, False),
    (50, 50, 80, False, True),
    (197, 197, 64, False, True),
    (197, 197, 72, False, False),
    (257, 257, 128, False, True),
    (257, 257, 80, False, False),
    (77, 77, 64, True, False),
    (77, 77, 72, True, True),
    (76, 255, 128, False, False),
    (76, 255, 80, False, True),
    (50, 50, 192, False, True),  # above 128 the TPU wrapper pads the head dim to a multiple of 128
]
FORWARD_ONLY = [(577, 577, 64, False, True), (729, 729, 72, False, False)]
BFLOAT16 = [(197, 197, 64, False, True), (77, 77, 80, True, False), (76, 255, 72, False, False)]


def inputs(t, s, d, key_mask, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    q, k, v = (jax.random.normal(key, (1, n, 2, d), jnp.float32).astype(dtype) for key, n in zip(keys, (t, s, s)))
    mask = jax.random.bernoulli(keys[3], 0.7, (1, s)).at[:, 0].set(True) if key_mask else None  # no query sees none
    cotangent = jax.random.normal(keys[4], (1, t, 2, d), jnp.float32).astype(dtype)
    return (q, k, v), mask, cotangent


@functools.partial(jax.jit, static_argnames=("backend", "causal", "grads"))
def kernel_and_reference(q, k, v, mask, cotangent, *, backend, causal, grads):
    """(kernel output, reference output, kernel grads of q, k, v, reference grads) in one program."""
    kernel = functools.partial(flash_attention, causal=causal, key_mask=mask, backend=backend, interpret=True)
    reference = functools.partial(attention_reference, causal=causal, key_mask=mask)
    if not grads:
        return kernel(q, k, v), reference(q, k, v), (), ()
    (out, kernel_vjp), (ref, reference_vjp) = jax.vjp(kernel, q, k, v), jax.vjp(reference, q, k, v)
    return out, ref, kernel_vjp(cotangent), reference_vjp(cotangent)


def supported(cases):
    """(backend, *case) for each case each backend's kernel covers (the GPU kernel takes no key_mask)."""
    return [
        (backend, t, s, d, causal, mask)
        for backend in ("tpu", "gpu")
        for t, s, d, causal, mask in cases
        if not unsupported(backend, t, s, causal=causal, key_mask=mask)
    ]


def check(backend, t, s, d, causal, key_mask, dtype, grads=True):
    qkv, mask, cotangent = inputs(t, s, d, key_mask, dtype)
    out, ref, kernel_grads, reference_grads = kernel_and_reference(
        *qkv, mask, cotangent, backend=backend, causal=causal, grads=grads
    )
    errors = {}
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *kernel_grads), (ref, *reference_grads)):
        assert a.shape == b.shape and a.dtype == b.dtype
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        errors[name] = (float(np.abs(a - b).max()), float(np.abs(b).max()))
    print(
        f"\n{backend} T={t} S={s} D={d} causal={causal} key_mask={key_mask} {jnp.dtype(dtype).name}: max abs error "
        + ", ".join(f"{name} {err:.2e} (of {top:.2f})" for name, (err, top) in errors.items())
    )
    for name, (err, top) in errors.items():
        assert err <= TOLERANCE[dtype] * top, name


@pytest.mark.parametrize("backend, t, s, d, causal, key_mask", supported(CASES))
def test_matches_reference(backend, t, s, d, causal, key_mask):
    check(backend, t, s, d, causal, key_mask, jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize("backend, t, s, d, causal, key_mask", supported(BFLOAT16))
def test_matches_reference_bfloat16(backend, t, s, d, causal, key_mask):
    check(backend, t, s, d, causal, key_mask, jnp.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("backend, t, s, d, causal, key_mask", supported(FORWARD_ONLY))
def test_long_sequences_forward(backend, t, s, d, causal, key_mask):
    check(backend, t, s, d, causal, key_mask, jnp.float32, grads=False)


@pytest.mark.parametrize(
    "backend, t, s, causal, key_mask, message",
    [
        ("tpu", 1, 77, True, False, "as many queries as keys"),
        ("gpu", 76, 77, True, False, "as many queries as keys"),
        ("gpu", 77, 77, False, True, "cannot mask a key"),
        ("gpu", 256, 50, False, False, "queries outnumber keys"),
        ("cpu", 77, 77, False, False, "unknown flash attention backend"),
    ],
)
def test_unsupported_cases_are_refused(backend, t, s, causal, key_mask, message):
    (q, k, v), mask, _ = inputs(t, s, 64, key_mask, jnp.float32)
    with pytest.raises(NotImplementedError, match=message):
        flash_attention(q, k, v, causal=causal, key_mask=mask, backend=backend)


def test_bad_inputs_are_refused():
    (q, k, v), _, _ = inputs(8, 8, 64, False, jnp.float32)
    with pytest.raises(InputError, match="share one float dtype"):
        flash_attention(q, k.astype(jnp.bfloat16), v, backend="tpu")
    with pytest.raises(InputError, match="key_mask must be bool"):
        flash_attention(q, k, v, key_mask=jnp.ones((1, 9), bool), backend="tpu")


# Lowered for every generation: ViT-B/16-like (head dim 80 to cover a non-power-of-two), causal
# text with a padding mask, CoCa's cross-attention.
LOWERED = {"vit": (197, 197, 80, False, False), "text": (77, 77, 64, True, True), "cross": (76, 255, 128, False, False)}


def lowered_args(mesh, t, s, d, key_mask, spec=None):
    spec, batch = spec or P(), mesh.size * 2
    args = [jax.ShapeDtypeStruct((batch, n, 4, d), jnp.bfloat16, sharding=NamedSharding(mesh, spec)) for n in (t, s, s)]
    mask = jax.ShapeDtypeStruct((batch, s), jnp.bool_, sharding=NamedSharding(mesh, spec)) if key_mask else None
    return args, mask


def forward_and_backward(causal):
    def forward(q, k, v, mask):
        return flash_attention(q, k, v, causal=causal, key_mask=mask, backend="tpu")

    def backward(q, k, v, mask):
        return jax.grad(lambda *x: forward(*x, mask).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)

    return forward, backward


@pytest.mark.slow
@pytest.mark.parametrize("generation", sorted(TOPOLOGIES))
@pytest.mark.parametrize("case", sorted(LOWERED))
def test_tpu_kernel_lowers_on_one_chip(generation, case):
    t, s, d, causal, key_mask = LOWERED[case]
    args, mask = lowered_args(tpu_mesh(generation, devices=1), t, s, d, key_mask)
    counts = [mosaic_kernels(compile_for_tpu(fn, *args, mask)) for fn in forward_and_backward(causal)]
    print(f"\n{generation} {case}: Mosaic kernels forward {counts[0]}, backward {counts[1]}")
    assert counts[0] > 0 and counts[1] > 0


@pytest.mark.slow
@pytest.mark.parametrize("generation", sorted(TOPOLOGIES))
def test_tpu_kernel_lowers_sharded_over_the_batch(generation):
    t, s, d, causal, key_mask = LOWERED["text"]
    mesh = tpu_mesh(generation)
    args, mask = lowered_args(mesh, t, s, d, key_mask, P("data"))
    qkv = P("data", None, None, None)
    counts = []
    for fn in forward_and_backward(causal):
        out_specs = qkv if fn.__name__ == "forward" else (qkv, qkv, qkv)
        # check_vma=False: JAX's TPU kernel declares its outputs without varying mesh axes
        sharded = jax.shard_map(
            fn, mesh=mesh, in_specs=(qkv, qkv, qkv, P("data")), out_specs=out_specs, check_vma=False
        )
        counts.append(mosaic_kernels(compile_for_tpu(sharded, *args, mask)))
    print(f"\n{generation} over {mesh.size} devices: Mosaic kernels forward {counts[0]}, backward {counts[1]}")
    assert counts[0] > 0 and counts[1] > 0
