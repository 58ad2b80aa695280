"""Device mesh, logical axis rules and the shardings of parameters, optimizer state and batches.

The mesh has three axes: ``data`` (pure data parallelism), ``fsdp`` (data parallelism whose
parameters and optimizer state are also split over it, ZeRO-3 style) and ``tensor`` (attention
heads, MLP width and vocabulary split across devices). The batch is split over data x fsdp.
The models name their axes logically (see `jaxvlm.models.layers`); `LOGICAL_RULES` maps those
names to mesh axes, and `param_shardings` turns a parameter tree's names into shardings.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm.errors import InputError

if TYPE_CHECKING:
    from flax.linen.spmd import LogicalRules

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical name, mesh axes) in order of precedence: a mesh axis already used by an earlier
# dimension of the same array is skipped, so activations [batch, length, embed] put data x fsdp
# on the batch and leave embed whole, while parameters [embed, mlp] put fsdp on embed.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("proj", None),
)


def mesh_shape(sizes: Mapping[str, int], devices: int, what: str = "mesh") -> tuple[int, ...]:
    """The sizes of MESH_AXES for ``devices`` devices; one size may be -1 (the rest)."""
    shape = [int(sizes[a]) for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
        raise InputError(f"{what} {dict(zip(MESH_AXES, shape))}: sizes must be positive, with at most one -1")
    fixed = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if devices % fixed:
            raise InputError(f"{what} {dict(zip(MESH_AXES, shape))} does not divide {devices} devices")
        shape[shape.index(-1)] = devices // fixed
    if math.prod(shape) != devices:
        raise InputError(f"{what} {dict(zip(MESH_AXES, shape))} has {math.prod(shape)} devices, not {devices}")
    return tuple(shape)


def create_mesh(
    ici: Mapping[str, int], dcn: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh over ``devices`` (default: all). ``ici`` gives the axis sizes within a slice,
    ``dcn`` the number of slices along each axis (multi-slice); each mesh axis is their product."""
    devices = list(jax.devices() if devices is None else devices)
    dcn_shape = tuple(int((dcn or {}).get(a, 1)) for a in MESH_AXES)
    if min(dcn_shape) < 1:
        raise InputError(f"mesh.dcn {dict(zip(MESH_AXES, dcn_shape))}: slice counts must be positive")
    slices = math.prod(dcn_shape)
    if len(devices) % slices:
        raise InputError(f"{len(devices)} devices cannot form {slices} slices")
    ici_shape = mesh_shape(ici, len(devices) // slices, "mesh")
    if slices > 1:  # devices all in one slice (CPU, GPU, one TPU slice): each process stands for a slice
        one_slice = len({getattr(d, "slice_index", 0) for d in devices}) == 1
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=one_slice)
    else:
        grid = mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules = LOGICAL_RULES) -> Iterator[None]:
    """Mesh and logical rules for tracing: the models' activation constraints take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def spec_for(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    *,
    fsdp_min_size: int = 0,
    rules: LogicalRules = LOGICAL_RULES,
) -> P:
    """The mesh PartitionSpec of an array with logical axis ``names``: mesh axes that do not
    divide their dimension (or have size 1) are dropped, and so is fsdp for arrays under
    ``fsdp_min_size`` elements (splitting those costs more communication than it saves memory)."""
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    small = math.prod(shape) < fsdp_min_size
    entries = []
    for entry, size in zip(spec, shape):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and not (small and a == "fsdp"))
        if axes and size % math.prod(mesh.shape[a] for a in axes):
            axes = ()
        entries.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*entries)


def param_shardings(boxed: Any, mesh: Mesh, *, fsdp_min_size: int = 0, rules: LogicalRules = LOGICAL_RULES) -> Any:
    """NamedShardings for a parameter tree whose leaves may be flax ``Partitioned`` boxes (as
    `jax.eval_shape` of ``module.init`` gives them); unnamed leaves are replicated."""

    def one(leaf):
        if isinstance(leaf, nn.Partitioned):
            shape = leaf.value.shape
            return NamedSharding(mesh, spec_for(leaf.names, shape, mesh, fsdp_min_size=fsdp_min_size, rules=rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def shardings_like_params(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree that holds parameter-shaped leaves (optimizer moments): a leaf whose
    key path ends with a parameter's path and has its shape gets the parameter's sharding; any
    other leaf (step counts, factored statistics) is replicated."""
    by_path = {}
    for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings)):
        by_path[_dict_keys(path)] = (p.shape, s)

    def one(path, leaf):
        keys = _dict_keys(path)
        for start in range(len(keys)):
            shape, sharding = by_path.get(keys[start:], (None, None))
            if shape is not None and shape == leaf.shape:
                return sharding
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)


def _dict_keys(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def per_device_bytes(tree: Any) -> dict[jax.Device, int]:
    """Bytes each device holds of the arrays in ``tree``."""
    totals: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals
