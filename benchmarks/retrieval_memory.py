"""Memory of blockwise retrieval against the plain score matrix, from programs compiled for this
machine's devices (8 simulated CPU devices unless XLA_FLAGS says otherwise). Deterministic: the
figures are XLA's `memory_analysis()` of the compiled programs, nothing is run. (Compiled ahead
of time for a TPU slice instead, XLA reports no temporaries for the plain program, so TPU figures
would say nothing.)

For 100k images x 500k captions (D = 512, float32) it compiles
  blockwise   one step of `jaxvlm.eval.retrieval`: a block of 4096 queries (split over the devices)
              against all candidates, scanned in blocks of 4096 with a running top-10
  full        the plain way: the whole [queries, candidates] score matrix, then top-10
              (the 100k queries split over the devices, all 500k candidates on each)
and reports the program's temporary memory (beyond inputs and outputs).

    python benchmarks/retrieval_memory.py

Prints the figures and writes benchmarks/results/retrieval_memory.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
from harness import metric, write_results
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvlm.eval.retrieval import _top_k_fn

IMAGES, TEXTS, DIM, BLOCK, K = 100_000, 500_000, 512, 4096, 10
GIB = 1024**3


def main() -> None:
    mesh = Mesh(jax.devices(), ("data",))
    rows, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    blocks = -(-TEXTS // BLOCK)
    blockwise = _top_k_fn(mesh, K).lower(
        jax.ShapeDtypeStruct((BLOCK, DIM), jnp.float32, sharding=rows),
        jax.ShapeDtypeStruct((blocks, BLOCK, DIM), jnp.float32, sharding=whole),
        jax.ShapeDtypeStruct((), jnp.int32),
    )
    full = jax.jit(lambda q, c: jax.lax.top_k(q @ c.T, K)[1], out_shardings=rows).lower(
        jax.ShapeDtypeStruct((IMAGES, DIM), jnp.float32, sharding=rows),
        jax.ShapeDtypeStruct((TEXTS, DIM), jnp.float32, sharding=whole),
    )
    results = {}
    for name, lowered in (("blockwise", blockwise), ("full", full)):
        results[name] = lowered.compile().memory_analysis().temp_size_in_bytes
        print(f"{name:<10} {results[name] / GIB:10.4f} GiB")
    ratio = results["full"] / results["blockwise"]
    print(f"full / blockwise: {ratio:.0f}x")
    summary = [
        metric(f"retrieval temporaries, {IMAGES // 1000}k x {TEXTS // 1000}k: full score matrix / blockwise", ratio)
    ]
    write_results(
        "retrieval_memory",
        {
            "settings": {
                "devices": f"{len(jax.devices())} x {jax.devices()[0].platform}",
                "images": IMAGES,
                "texts": TEXTS,
                "dim": DIM,
                "block": BLOCK,
                "k": K,
                "dtype": "float32",
                "what": "temp_size_in_bytes of the compiled program, image -> text top-k",
            },
            "temp_bytes": results,
            "full_over_blockwise": ratio,
        },
        summary,
    )


if __name__ == "__main__":
    main()
