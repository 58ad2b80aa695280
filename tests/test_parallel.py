"""Mesh construction, logical axis rules and the shardings derived from them (8 CPU devices)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxvlm import parallel
from jaxvlm.errors import InputError
from jaxvlm.models import abstract_params
from jaxvlm.models.registry import get_architecture


def sizes(data, fsdp, tensor):
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


@pytest.mark.parametrize(
    "given, shape",
    [
        (sizes(-1, 1, 1), (8, 1, 1)),
        (sizes(2, -1, 2), (2, 2, 2)),
        (sizes(1, 1, -1), (1, 1, 8)),
        (sizes(4, 2, 1), (4, 2, 1)),
    ],
)
def test_mesh_shape_fills_in_the_rest(given, shape):
    assert parallel.mesh_shape(given, 8) == shape
    assert tuple(parallel.create_mesh(given).shape.values()) == shape


@pytest.mark.parametrize(
    "given, message",
    [
        (sizes(3, 1, 1), "has 3 devices, not 8"),
        (sizes(3, -1, 1), "does not divide 8 devices"),
        (sizes(-1, -1, 1), "at most one -1"),
        (sizes(0, 1, 8), "must be positive"),
    ],
)
def test_impossible_meshes_are_one_line_errors(given, message):
    with pytest.raises(InputError, match=message):
        parallel.create_mesh(given)


def test_multi_slice_mesh_needs_whole_slices():
    with pytest.raises(InputError, match="cannot form 3 slices"):
        parallel.create_mesh(sizes(-1, 1, 1), {"data": 3})


def test_rules_put_parameters_and_activations_on_different_axes():
    mesh = parallel.create_mesh(sizes(2, 2, 2))
    spec = lambda names, shape, **kw: parallel.spec_for(names, shape, mesh, **kw)
    assert spec(("embed", "mlp"), (64, 256)) == P("fsdp", "tensor")
    assert spec(("layers", "embed", "heads", "kv"), (2, 64, 4, 16)) == P(None, "fsdp", "tensor", None)
    assert spec(("vocab", "embed"), (1000, 64)) == P("tensor", "fsdp")
    # activations: data x fsdp on the batch, so embed stays whole
    assert spec(("batch", "length", "embed"), (8, 16, 64)) == P(("data", "fsdp"), None, None)
    assert spec(("batch", "length", "mlp"), (8, 16, 256)) == P(("data", "fsdp"), None, "tensor")
    # a dimension the mesh axis does not divide stays whole; small arrays are not FSDP-split
    assert spec(("embed", "heads", "kv"), (64, 1, 64)) == P("fsdp", None, None)
    assert spec(("embed", "mlp"), (64, 256), fsdp_min_size=64 * 256 + 1) == P(None, "tensor")


def test_param_and_optimizer_shardings_of_a_model():
    mesh = parallel.create_mesh(sizes(2, 4, 1))
    arch = get_architecture("tiny-clip")
    boxed = abstract_params(arch.model)
    shardings = parallel.param_shardings(boxed, mesh, fsdp_min_size=1000)
    assert shardings["txt"]["token_embed"]["embedding"].spec == P(None, "fsdp")
    assert shardings["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].spec == P(None, "fsdp", None)
    assert shardings["img"]["final_norm"]["scale"].spec == P(None)  # 64 elements < fsdp_min_size
    assert shardings["t"].spec == P()
    params = nn.unbox(boxed)
    opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
    opt_shardings = parallel.shardings_like_params(opt_state, params, shardings, mesh)
    adam = opt_shardings[0]
    assert adam.mu["txt"]["token_embed"]["embedding"].spec == P(None, "fsdp")
    assert adam.nu["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].spec == P(None, "fsdp", None)
    assert adam.count.spec == P()


def test_per_device_bytes_counts_each_shard():
    mesh = parallel.create_mesh(sizes(1, 8, 1))
    x = jax.device_put(jnp.zeros((64, 8)), jax.sharding.NamedSharding(mesh, P("fsdp")))
    y = jax.device_put(jnp.zeros((3,)), parallel.replicated(mesh))
    held = parallel.per_device_bytes({"x": x, "y": y})
    assert set(held.values()) == {64 * 8 * 4 // 8 + 3 * 4}
    assert np.asarray(x).shape == (64, 8)
