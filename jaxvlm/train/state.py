"""The train state and its creation: built from shapes first (no data, no devices touched), so
its shardings are known before anything is allocated, then initialised directly sharded by a
jitted ``init`` whose out_shardings place every array on its devices."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxvlm import parallel


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: batches consumed so far
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data; step s uses fold_in(rng, s)
    skipped: jax.Array  # int32: updates the NaN guard skipped, in total
    nan_streak: jax.Array  # int32: ... in a row, up to this step
    # BatchNorm's running statistics (the "batch_stats" collection, replicated); {} for models without BatchNorm,
    # whose state tree, and so their checkpoints, are as they were before it existed (an empty dict has no leaves)
    batch_stats: Any = flax.struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Shapes and shardings of a train state, and the jitted function that creates it."""

    abstract: TrainState  # ShapeDtypeStructs carrying their shardings
    shardings: TrainState
    init: Callable[[], TrainState]


def layout(
    module: nn.Module,
    inputs: tuple[jax.Array, ...],
    boxed: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    seed: int,
    fsdp_min_size: int,
) -> StateLayout:
    """``inputs``: example inputs of ``module`` (`jaxvlm.models.example_inputs`); ``boxed``:
    `jaxvlm.models.abstract_params`' tree, whose logical names give the parameters' shardings."""
    param_shardings = parallel.param_shardings(boxed, mesh, fsdp_min_size=fsdp_min_size)

    def init() -> TrainState:
        init_key, state_key = jax.random.split(jax.random.key(seed))
        variables = nn.unbox(module.init(init_key, *inputs))
        params = variables["params"]
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero,
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(state_key),
            skipped=zero,
            nan_streak=zero,
            batch_stats=variables.get("batch_stats", {}),
        )

    shapes = jax.eval_shape(init)
    replicated = parallel.replicated(mesh)
    shardings = TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=parallel.shardings_like_params(shapes.opt_state, shapes.params, param_shardings, mesh),
        rng=replicated,
        skipped=replicated,
        nan_streak=replicated,
        batch_stats=jax.tree.map(lambda _: replicated, shapes.batch_stats),
    )
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return StateLayout(abstract, shardings, jax.jit(init, out_shardings=shardings))


def place(value: np.ndarray, like: jax.ShapeDtypeStruct) -> jax.Array:
    """A host array (the same on every process) as a global array with ``like``'s sharding."""
    value = np.asarray(value, like.dtype)
    return jax.make_array_from_callback(value.shape, like.sharding, lambda index: value[index])
