"""Compile time of the ViT-L/14 CLIP train step on this machine, from shapes alone.

The step is the one `jaxvlm train` runs (`jaxvlm.train.program.build`: AdamW, the softmax
contrastive loss, the NaN guard and logged metrics), its 24 vision and 12 text layers each one
scanned block. Nothing is allocated: the parameters and the optimizer state are shapes
(`jax.eval_shape`), the step is lowered for abstract inputs (`TrainProgram.lower`) and compiled
for this process's CPU device. Times tracing + lowering and XLA's compilation separately; the
headline figure is their sum (wall time), target under 60 s. The process's CPU time is a second
figure: on a shared machine it shows how much of the wall time was waiting for a core.

    python benchmarks/compile_time.py [--model ViT-L-14] [--batch 256] [--remat none]
    python benchmarks/compile_time.py --smoke --out /tmp/compile_time.json  # tiny-clip: checks the script

Prints the times and writes benchmarks/results/compile_time.json.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
from harness import RESULTS_DIR, metric, write_results

from jaxvlm import parallel
from jaxvlm.models.runtime import REMAT_POLICIES
from jaxvlm.train.config import base_config
from jaxvlm.train.program import build

REQUIRES = ("jaxvlm.train",)
TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--remat", default="none", choices=REMAT_POLICIES)
    parser.add_argument("--smoke", action="store_true", help="tiny-clip, batch 8: checks the script")
    parser.add_argument("--out", default=str(RESULTS_DIR / "compile_time.json"))
    args = parser.parse_args()
    if args.smoke:
        args.model, args.batch = "tiny-clip", 8

    config = base_config()
    config.model.name = args.model
    config.model.remat = args.remat
    config.global_batch_size = args.batch
    clocks = [(time.perf_counter(), time.process_time())]
    program = build(config, parallel.create_mesh(config.mesh, config.mesh.dcn))
    clocks.append((time.perf_counter(), time.process_time()))
    lowered = program.lower(args.batch)
    clocks.append((time.perf_counter(), time.process_time()))
    compiled = lowered.compile()
    clocks.append((time.perf_counter(), time.process_time()))

    params = sum(x.size for x in jax.tree.leaves(program.state.abstract.params))
    memory = compiled.memory_analysis()
    phases = ("build", "trace_and_lower", "compile")
    times = {phase: clocks[i + 1][0] - clocks[i][0] for i, phase in enumerate(phases)}
    cpu = {phase: clocks[i + 1][1] - clocks[i][1] for i, phase in enumerate(phases)}
    total = times["trace_and_lower"] + times["compile"]
    cpu_total = cpu["trace_and_lower"] + cpu["compile"]
    print(
        f"{args.model} train step, batch {args.batch}, remat {args.remat}, {params / 1e6:.1f}M parameters: "
        f"build {times['build']:.1f} s, trace + lower {times['trace_and_lower']:.1f} s, "
        f"compile {times['compile']:.1f} s; total {total:.1f} s (target < {TARGET_SECONDS:.0f} s); "
        f"CPU time of lower + compile {cpu_total:.1f} s"
    )
    summary = [
        metric(
            f"{args.model} train step (scanned layers), lower + compile",
            total,
            TARGET_SECONDS,
            better="lower",
            unit="s",
        ),
        metric(
            f"{args.model} train step, CPU time of lower + compile", cpu_total, TARGET_SECONDS, better="lower", unit="s"
        ),
    ]
    write_results(
        "compile_time",
        {
            "settings": {
                "model": args.model,
                "batch": args.batch,
                "remat": args.remat,
                "dtype": config.model.dtype,
                "backend": jax.default_backend(),
                "devices": jax.device_count(),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            },
            "parameters": params,
            "seconds": {**times, "total": total},
            "cpu_seconds": {**cpu, "total": cpu_total},  # this process's: steadier under load
            "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        },
        summary,
        path=args.out,
    )


if __name__ == "__main__":
    main()
