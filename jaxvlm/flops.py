"""Matrix-multiply FLOPs of a traced program, per device, counted on its jaxpr.

XLA's cost_analysis() counts the body of a loop once, so a model whose layers are a scanned
stack (`nn.scan`) shows 1/depth of its FLOPs there. Counting on the jaxpr instead multiplies a
scan's body by its length and a Pallas kernel's body by its grid, and reads the branch of
`lax.platform_dependent` that the target platform takes. Only dot_general and convolutions
count (2 FLOPs per multiply-add): they are what the chips' peak FLOP/s figures measure.

Per device: operations on global arrays are split evenly over all devices (what GSPMD does with
a batch-sharded step); inside shard_map the shapes already are per device along its manual axes.
"""

from __future__ import annotations

import math

from jax.extend import core


def per_device_flops(closed: core.ClosedJaxpr, devices: int, platform: str = "tpu") -> float:
    """Matrix-multiply FLOPs one device executes when ``closed`` (e.g. `jax.make_jaxpr` of a
    jitted step) runs over ``devices`` devices lowered for ``platform``. Dead code is removed
    first, as XLA removes it (e.g. the gradients of frozen parameters, which no output uses)."""
    # JAX's own dead-code elimination, the one jit applies; it has no public name
    from jax._src.interpreters.partial_eval import dce_jaxpr

    live, _ = dce_jaxpr(closed.jaxpr, used_outputs=True)
    return _count(live, devices, platform)


def _count(jaxpr: core.Jaxpr, share: float, platform: str) -> float:
    """FLOPs of ``jaxpr`` per device, its arrays split over ``share`` devices."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn) / share
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn) / share
        elif name == "scan":
            total += eqn.params["length"] * _count(eqn.params["jaxpr"].jaxpr, share, platform)
        elif name == "cond":
            total += _cond_flops(eqn, share, platform)
        elif name == "pallas_call":
            grid = eqn.params["grid_mapping"].grid
            total += math.prod(grid) * _count(eqn.params["jaxpr"], share, platform)
        elif name == "shard_map":
            mesh = eqn.params["mesh"]
            manual = math.prod(mesh.shape[a] for a in eqn.params["newly_manual_axes"])
            total += _count(eqn.params["jaxpr"], share / manual, platform)
        else:  # jit, remat, custom_jvp/vjp calls, while (its body once): every sub-program once
            total += sum(_count(sub, share, platform) for sub in _subjaxprs(eqn.params))
    return total


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
    return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * math.prod(out) * math.prod(rhs) / out_features


def _cond_flops(eqn, share: float, platform: str) -> float:
    branches = eqn.params["branches"]
    platforms = eqn.params.get("branches_platforms")
    if platforms:  # lax.platform_dependent: the branch listing the platform, else the default (None)
        index = next(
            (i for i, ps in enumerate(platforms) if ps is not None and platform in ps),
            next((i for i, ps in enumerate(platforms) if ps is None), None),
        )
        if index is not None:
            return _count(branches[index].jaxpr, share, platform)
    return max(_count(b.jaxpr, share, platform) for b in branches)


def _subjaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, core.Jaxpr):
                yield item
