"""Matrix-multiply FLOPs counted on jaxprs: dots and convolutions, scanned bodies times their
length, Pallas kernel bodies times their grid (against the kernel's own cost estimate), the
platform branch, shard_map's per-device shapes, and dead code left out."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxvlm import ops
from jaxvlm.flops import per_device_flops
from jaxvlm.kernels import softmax_loss as sl


def flops(fn, *shapes, devices: int = 1, platform: str = "tpu") -> float:
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return per_device_flops(jax.make_jaxpr(fn)(*args), devices, platform)


def test_dots_and_convolutions():
    assert flops(lambda x, w: x @ w, (32, 64), (64, 16)) == 2 * 32 * 64 * 16
    assert flops(lambda x, y: jnp.einsum("bqd,bkd->bqk", x, y), (4, 8, 16), (4, 10, 16)) == 2 * 4 * 8 * 10 * 16
    # a 16x16 patch embedding: 2 * (output pixels x features) * (patch area x input channels)
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (16, 16), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert flops(conv, (2, 64, 64, 3), (16, 16, 3, 8)) == 2 * (2 * 4 * 4 * 8) * (16 * 16 * 3)


def test_a_scanned_body_counts_once_per_iteration_and_remat_adds_its_recomputation():
    def layers(x, w):  # 6 layers of [32, 64] @ [64, 64]
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=6)[0].sum()

    one = 2 * 32 * 64 * 64
    assert flops(layers, (32, 64), (64, 64)) == 6 * one
    grad = jax.grad(layers, argnums=1)
    assert flops(grad, (32, 64), (64, 64)) == 6 * 3 * one  # forward, gradient of h, gradient of w
    remat = jax.grad(
        lambda x, w: jax.lax.scan(jax.checkpoint(lambda h, _: (jnp.tanh(h @ w), None)), x, None, length=6)[0].sum(),
        argnums=1,
    )
    assert flops(remat, (32, 64), (64, 64)) == 6 * 4 * one  # + the forward again


def test_pallas_kernels_count_their_body_times_the_grid():
    """The softmax loss kernel declares its cost; counting its body over the grid agrees."""
    x, y = (jax.ShapeDtypeStruct((1024, 128), jnp.float32),) * 2
    scale = jax.ShapeDtypeStruct((), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda a, b, s: sl.softmax_loss(a, b, s))(x, y, scale)
    declared = sum(e.params["cost_estimate"].flops for e in _pallas_calls(jaxpr.jaxpr))
    print(f"softmax loss kernel: counted {per_device_flops(jaxpr, 1):.4g}, declared {declared:.4g}")
    assert declared > 0 and per_device_flops(jaxpr, 1) == declared


def test_the_platform_branch_is_the_one_lowered():
    """The fused sigmoid loss on TPU recomputes the logits in its backward pass (5 N M D
    multiply-adds, D padded to the kernel's 128 lanes); XLA's reference keeps them (3)."""
    n, d = 512, 128
    loss = jax.value_and_grad(lambda x, y: ops.sigmoid_contrastive_loss(x, y, 10.0, -10.0), argnums=(0, 1))
    assert flops(loss, (n, d), (n, d), platform="tpu") == 5 * 2 * n * n * d
    assert flops(loss, (n, d), (n, d), platform="cpu") == 3 * 2 * n * n * d


def test_per_device_under_shard_map_and_outside_it():
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    local = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    assert flops(local, (64, 32), (32, 16), devices=8) == 2 * (64 // 8) * 32 * 16
    assert flops(lambda x, w: x @ w, (64, 32), (32, 16), devices=8) == 2 * 64 * 32 * 16 / 8


def test_dead_code_is_not_counted():
    """Only w2's gradient is returned: the backward pass into w1 (and into x) is dead."""

    def loss(w1, w2, x):
        return jnp.sum((jnp.tanh(x @ w1) @ w2) ** 2)

    one = 2 * 32 * 64 * 64
    assert flops(jax.grad(loss, argnums=(0, 1)), (64, 64), (64, 64), (32, 64)) == 5 * one
    assert flops(lambda *a: jax.grad(loss, argnums=(0, 1))(*a)[1], (64, 64), (64, 64), (32, 64)) == 3 * one


def _pallas_calls(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn
        for value in eqn.params.values():
            for item in value if isinstance(value, tuple) else (value,):
                if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                    yield from _pallas_calls(item.jaxpr)
                elif hasattr(item, "eqns"):
                    yield from _pallas_calls(item)
