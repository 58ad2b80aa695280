"""Ahead-of-time compilation for real TPU topologies on this CPU (needs libtpu, the `jax[tpu]`
extra): Mosaic lowers and compiles every Pallas kernel, which catches what interpret mode lets
through."""

import functools

import jax
import pytest
from jax.sharding import Mesh

# One small slice per TPU generation the kernels must compile for.
TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
MOSAIC_CALL = "tpu_custom_call"  # the custom-call target of a compiled Pallas TPU kernel


@functools.cache
def tpu_devices(generation: str) -> tuple:
    """The devices of a TPU topology (no hardware needed); skips when libtpu is missing."""
    from jax.experimental import topologies

    try:
        return tuple(topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[generation]).devices)
    except Exception as e:  # no libtpu, or one that cannot describe this topology
        pytest.skip(f"cannot describe TPU topology {TOPOLOGIES[generation]}: {e}")


def tpu_mesh(generation: str, axis: str = "data", devices: int | None = None) -> Mesh:
    """A 1-D mesh over the topology's chips (or its first ``devices``). A Mosaic kernel on a mesh
    of more than one device must be called inside shard_map."""
    return Mesh(tpu_devices(generation)[:devices], (axis,))


def compile_for_tpu(fn, *args: jax.ShapeDtypeStruct) -> jax.stages.Compiled:
    """jit(fn) lowered and compiled for the devices named by the args' shardings."""
    return jax.jit(fn).lower(*args).compile()


def mosaic_kernels(compiled: jax.stages.Compiled) -> int:
    """How many Mosaic (Pallas TPU) kernel calls the compiled program holds."""
    return compiled.as_text().count(f'custom_call_target="{MOSAIC_CALL}"')
