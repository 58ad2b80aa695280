"""The largest SigLIP B/16 global batch whose train step fits a TPU slice, with the fused Pallas
ring loss and with the plain jitted loss, from programs compiled ahead of time for the slice on
this CPU (needs libtpu: the `jax[tpu]` extra). Deterministic: nothing runs, each verdict is the
compiled program's memory_analysis() against the chip's HBM.

The train step is the real one of configs/siglip_b16.py (bf16, towers fully rematerialised),
with gradient caching at a fixed micro-batch per chip, so that the towers' activations do not
grow with the batch: what grows is the batch itself (the images), its embeddings, and the loss.
  fused   loss.implementation "pallas": the sigmoid ring (`jaxvlm.kernels.sigmoid_loss`), text
          chunks passed around the chips, no chip ever holding logits beyond one tile
  plain   loss.implementation "xla": each chip all-gathers the texts and holds its rows' logits
          against the whole batch, [B / chips, B] in float32, and their gradients
For each, `jaxvlm.plan.largest_fitting` brackets the largest batch by doubling and narrows it by
bisection over compiles to within 1/8.

    python benchmarks/max_batch.py [--slice v4-8] [--micro-batch 128]

Prints a table and writes benchmarks/results/max_batch.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from importlib import metadata
from pathlib import Path

# only compiling: libtpu may load while another process (a test run) holds its lock file
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from jaxvlm import parallel, plan
from jaxvlm.train import config as train_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "siglip_b16.py"
RESULTS = Path(__file__).resolve().parent / "results" / "max_batch.json"
VARIANTS = {"fused": "pallas", "plain": "xla"}
TOLERANCE = 1 / 8
TARGET = 2.0  # fused / plain, the SigLIP paper's gain on four TPU v4 chips
GIB = 2**30
REQUIRES = ("libtpu",)  # benchmarks/run_all.py skips this script where libtpu is missing


def search(tpu: plan.TpuSlice, implementation: str, micro_batch: int, start: int) -> dict:
    """The largest global batch (a multiple of chips x micro_batch) that fits, and every probe."""
    devices = plan.topology_devices(tpu)
    unit = len(devices) * micro_batch
    probes = []

    def fits(units: int) -> bool:
        config = train_config.load(
            CONFIG,
            [f"global_batch_size={units * unit}", f"microbatches={units}", f"loss.implementation={implementation}"],
        )
        train_config.check(config, len(devices))
        mesh = parallel.create_mesh(config.mesh, config.mesh.dcn, devices=devices)
        started = time.perf_counter()
        memory, reason = plan._Step(config, mesh).compile(units * unit)
        ok = memory is not None and memory.total <= tpu.chip.hbm_bytes
        probes.append(
            {
                "global_batch": units * unit,
                "microbatches": units,
                "fits": ok,
                "total_bytes_per_chip": memory and memory.total,
                "temporaries_bytes_per_chip": memory and memory.temporaries,
                "compiler_refused": reason or None,
                "compile_seconds": time.perf_counter() - started,
            }
        )
        shown = f"{memory.total / GIB:8.2f} GiB" if memory else "refused by the compiler"
        print(
            f"  {implementation:<6} batch {units * unit:>8}: {shown} {'fits' if ok else ''} "
            f"({probes[-1]['compile_seconds']:.0f} s)",
            flush=True,
        )
        return ok

    lo, hi = plan.largest_fitting(fits, start // unit, TOLERANCE)
    return {"largest_global_batch": lo * unit, "smallest_not_fitting": hi * unit, "probes": probes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", default="v4-8", help="the TPU slice (default v4-8: 4 chips, as in the SigLIP paper)")
    parser.add_argument("--micro-batch", type=int, default=128, help="examples per chip per micro-batch")
    parser.add_argument("--start", type=int, default=65536, help="the global batch the search starts from")
    args = parser.parse_args()
    tpu = plan.parse_slice(args.slice)
    started = time.perf_counter()
    rows = {}
    for variant, implementation in VARIANTS.items():
        print(f"{variant} ({implementation}) on {tpu.name}:", flush=True)
        rows[variant] = search(tpu, implementation, args.micro_batch, args.start)
    ratio = rows["fused"]["largest_global_batch"] / rows["plain"]["largest_global_batch"]
    print(
        f"\nSigLIP B/16 on {tpu.name} ({tpu.chips} chips, {tpu.chip.hbm_bytes / GIB:g} GiB HBM each), "
        f"{args.micro_batch} examples per chip per micro-batch:"
    )
    for variant, row in rows.items():
        print(
            f"  {variant:<6} largest global batch {row['largest_global_batch']:>8} "
            f"({row['smallest_not_fitting']} does not fit)"
        )
    print(f"  fused / plain: {ratio:.2f}x")
    record = {
        "benchmark": RESULTS.stem,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "versions": {name: metadata.version(name) for name in ("jax", "jaxlib", "libtpu", "flax")},
        "summary": [
            {
                "kind": "metric",
                "name": f"largest SigLIP B/16 batch on {tpu.name}, fused ring / plain loss",
                "value": ratio,
                "target": TARGET,
                "better": "higher",
                "unit": "x",
                "holds": ratio >= TARGET,
            }
        ],
        "settings": {
            "config": "configs/siglip_b16.py",
            "slice": tpu.name,
            "topology": tpu.topology,
            "chips": tpu.chips,
            "hbm_bytes_per_chip": tpu.chip.hbm_bytes,
            "micro_batch_per_chip": args.micro_batch,
            "tolerance": TOLERANCE,
        },
        "variants": rows,
        "fused_over_plain": ratio,
        "seconds": time.perf_counter() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    staging = RESULTS.with_name(f".{RESULTS.name}.partial")
    staging.write_text(json.dumps(record, indent=2) + "\n")
    staging.replace(RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
