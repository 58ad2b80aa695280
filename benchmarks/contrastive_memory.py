"""Per-chip memory of a contrastive loss and its gradients, from programs compiled ahead of time
for real TPU slices on this CPU (needs libtpu: the `jax[tpu]` extra). Deterministic: the figures
are XLA's `memory_analysis()` of the compiled programs, nothing is run.

For global batches of 32k, 128k and 1M, D = 1152, bfloat16 embeddings sharded over the data axis
of an 8-chip and a 256-chip v5p slice, it compiles loss + gradients (X, Y, scale, bias) of
  sigmoid fused   `sharded_sigmoid_loss`: the Pallas ring (ppermute of the text chunk, one custom_vjp)
  sigmoid plain   the jnp reference loss, jitted over the sharded inputs (XLA/GSPMD partitions it)
  softmax fused   `sharded_softmax_loss`: all-gathered texts, column statistics all-reduced
  softmax plain   the jnp reference, jitted likewise
and reports the temporary memory per chip (what the loss needs beyond its inputs and outputs);
a program that does not fit a chip's HBM is reported with the memory XLA says it needs.

    python benchmarks/contrastive_memory.py

Prints a table and writes benchmarks/results/contrastive_memory.json.
"""

from __future__ import annotations

import functools
import os
import re
import time

# only compiling: libtpu may load while another process (a test run) holds its lock file
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import jax.numpy as jnp
from harness import metric, write_results
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm.kernels.sigmoid_loss import sharded_sigmoid_loss, sigmoid_loss_reference
from jaxvlm.kernels.softmax_loss import sharded_softmax_loss, softmax_loss_reference

SLICES = {8: "v5p:2x2x2", 256: "v5p:4x8x8"}
BATCHES = (32 * 1024, 128 * 1024, 1024 * 1024)
DIM = 1152
GIB = 1024**3
TARGET_GIB = 0.1  # the sigmoid ring's temporary memory per chip at 128k on 8 chips


def loss_and_grads(kind: str, fused: bool, mesh: Mesh):
    """A function of (x, y, scale, bias) -> (loss, grads) over inputs sharded on "data"."""
    if kind == "sigmoid":
        local = functools.partial(sharded_sigmoid_loss, axis_name="data")
        reference = sigmoid_loss_reference
    else:
        local = lambda x, y, scale, bias: sharded_softmax_loss(x, y, scale, axis_name="data")  # noqa: E731
        reference = lambda x, y, scale, bias: softmax_loss_reference(x, y, scale)  # noqa: E731
    argnums = (0, 1, 2, 3) if kind == "sigmoid" else (0, 1, 2)
    if not fused:
        return jax.value_and_grad(reference, argnums=argnums)
    data, scalar = P("data"), P()
    return jax.shard_map(
        jax.value_and_grad(local, argnums=argnums),
        mesh=mesh,
        in_specs=(data, data, scalar, scalar),
        out_specs=(scalar, (data, data, *([scalar] * (len(argnums) - 2)))),
        check_vma=False,
    )


def temp_bytes(kind: str, fused: bool, mesh: Mesh, batch: int) -> tuple[float, bool]:
    """(temporary bytes per chip, whether the program fits the chip's HBM). A program that does
    not fit fails to compile; XLA's error says how much it needed."""
    rows = jax.ShapeDtypeStruct((batch, DIM), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    lowered = jax.jit(loss_and_grads(kind, fused, mesh)).lower(rows, rows, scalar, scalar)
    try:
        return lowered.compile().memory_analysis().temp_size_in_bytes, True
    except jax.errors.JaxRuntimeError as e:
        needed = re.search(r"HLO temporaries \(([\d.]+)([GT])\)", str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not needed:
            raise
        return float(needed.group(1)) * GIB * (1024 if needed.group(2) == "T" else 1), False


def main() -> None:
    started = time.perf_counter()
    rows = []
    for chips, name in SLICES.items():
        mesh = Mesh(topologies.get_topology_desc(platform="tpu", topology_name=name).devices, ("data",))
        for batch in BATCHES:
            for kind in ("sigmoid", "softmax"):
                for fused in (True, False):
                    temp, fits = temp_bytes(kind, fused, mesh, batch)
                    rows.append(
                        {
                            "slice": name,
                            "chips": chips,
                            "global_batch": batch,
                            "local_batch": batch // chips,
                            "loss": kind,
                            "variant": "fused" if fused else "plain",
                            "temp_bytes_per_chip": temp,
                            "fits": fits,
                        }
                    )
                    print(
                        f"{name:<10} batch {batch:>8} {kind:<8} {rows[-1]['variant']:<6} "
                        f"{temp / GIB:10.4f} GiB/chip{'' if fits else '  (does not fit in HBM)'}",
                        flush=True,
                    )
    target = (
        next(
            r
            for r in rows
            if r["chips"] == 8
            and r["global_batch"] == 128 * 1024
            and r["loss"] == "sigmoid"
            and r["variant"] == "fused"
        )["temp_bytes_per_chip"]
        / GIB
    )
    print(
        f"\nsigmoid fused ring, 128k on 8 chips: {target:.4f} GiB/chip (target < {TARGET_GIB} GiB: "
        f"{'holds' if target < TARGET_GIB else 'MISSED'})"
    )
    summary = [
        metric(
            "sigmoid loss fused ring, 128k batch on 8 v5p chips: temporary memory per chip",
            target,
            TARGET_GIB,
            better="lower",
            unit="GiB",
        )
    ]
    write_results(
        "contrastive_memory",
        {
            "settings": {"dim": DIM, "dtype": "bfloat16", "what": "loss + gradients, temp_size_in_bytes per chip"},
            "rows": rows,
            "sigmoid_fused_128k_8chips_gib": target,
            "seconds": time.perf_counter() - started,
        },
        summary,
    )


if __name__ == "__main__":
    main()
