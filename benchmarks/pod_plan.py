"""`jaxvlm plan` for the SigLIP B/16 and CLIP L/14 recipes on v5p-128 and v6e-256: per-chip memory
and the MFU estimate of each real train step, compiled ahead of time for the slice on this CPU
(needs libtpu: the `jax[tpu]` extra). Deterministic: nothing runs on a TPU.

CLIP L/14 is configs/clip_b16.py (bf16, 32k global batch) with the ViT-L-14 architecture and
full rematerialisation (open_clip's --grad-checkpointing: with the recipe's "dots" remat the L/14
step needs 102 GiB per v5p chip and 38 GiB per v6e chip); SigLIP B/16 is configs/siglip_b16.py as
it stands. MFU is the plan's: model FLOPs over executed FLOPs (what rematerialisation costs) at
the chip's peak bf16 FLOP/s.

    python benchmarks/pod_plan.py [--slices v5p-128 v6e-256]

Prints each plan's table and writes benchmarks/results/pod_plan.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# only compiling: libtpu may load while another process (a test run) holds its lock file
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from harness import plan_row, write_results

from jaxvlm import plan
from jaxvlm.train import config as train_config

REQUIRES = ("libtpu",)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = {  # name: (recipe file, overrides)
    "SigLIP B/16": ("siglip_b16.py", []),
    "CLIP L/14": ("clip_b16.py", ["model.name=ViT-L-14", "model.remat=full"]),
}
GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", nargs="+", default=["v5p-128", "v6e-256"])
    args = parser.parse_args()
    plans, summary = [], []
    for recipe, (path, overrides) in RECIPES.items():
        for name in args.slices:
            tpu = plan.parse_slice(name)
            config = train_config.load(CONFIGS / path, overrides)
            p = plan.plan(config, tpu, log=lambda message: print(f"  {message}", flush=True))
            print(f"{recipe}:\n{plan.format_table(p)}\n", flush=True)
            total = p.memory.total / GIB if p.memory else float("nan")
            summary.append(plan_row(recipe, tpu.name, tpu.topology, total, p.mfu))
            plans.append(
                {"recipe": recipe, "config": f"configs/{path}", "overrides": overrides, **json.loads(plan.to_json(p))}
            )
    write_results("pod_plan", {"plans": plans}, summary)


if __name__ == "__main__":
    main()
