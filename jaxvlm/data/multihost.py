"""From per-process numpy batches to global `jax.Array`s sharded over the mesh's data axes."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def global_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, data_axes: tuple[str, ...] = ("data", "fsdp")
) -> dict[str, jax.Array]:
    """This process's batch -> global arrays whose first dimension is split over `data_axes` (each
    array of a pytree value, e.g. the fields of `NaFlexImages`).

    Every process passes its own rows (as `train_iterator` yields them); the global batch is
    their concatenation in process order. Axes the mesh does not have are ignored; with none
    left, each process must pass the same rows.
    """
    axes = tuple(a for a in data_axes if a in mesh.axis_names)
    sharding = NamedSharding(mesh, PartitionSpec(axes or None))
    put = lambda value: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    return {name: jax.tree.map(put, value) for name, value in batch.items()}
