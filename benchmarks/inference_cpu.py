"""CPU inference speed: jaxvlm against open_clip (torch) with the same weights, side by side.

For ViT-B-32, ViT-B-16-SigLIP and MobileCLIP-S1 it times ``encode_image`` (images/s) and ``encode_text``
(texts/s) on one batch (32), in float32 and in bfloat16:

  jaxvlm     the two-tower model's encoders, each jitted whole as `jaxvlm.Model` runs them
             (`TwoTower.encode_image` / `encode_text`: L2-normalised float32 embeddings), numpy in
             and out; bfloat16 is ``Runtime.dtype`` (bf16 compute, float32 parameters).
  open_clip  ``model.encode_image`` / ``encode_text(normalize=True)`` under torch.inference_mode,
             on its own NCHW tensors, numpy out; bfloat16 is the model cast with
             ``.to(torch.bfloat16)``, torch's fastest bf16 path on CPU (autocast is slower than
             float32 there).

open_clip's randomly initialised model, every tensor perturbed, is converted in memory with
jaxvlm's open_clip converter, so both run the same weights (MobileCLIP-S1's FastViT tower in the form both
libraries run it for inference: branches and BatchNorms folded, by timm's `reparameterize_model` and by
`jaxvlm.Model.reparameterize`'s function), and their embeddings are compared
(max abs difference, printed and recorded) before anything is timed. Torch gets as many threads
as XLA uses (one per core). Each method is warmed up (compiled) once, then the methods are timed
in turn ``--repeats`` times; images/s and texts/s come from the median times, the speed-up is
the median over rounds of each round's ratio (in every round the two libraries run one right
after the other, so they meet the same load: the machine may be shared, and only ratios within
one run mean anything). Token ids are random over the whole context: both models encode every
position whatever the text.

    python benchmarks/inference_cpu.py [--repeats 10] [--batch 32] [--models ...] [--dtypes ...]
    python benchmarks/inference_cpu.py --smoke --out /tmp/inference_cpu.json  # tiny-clip: checks the script

Prints a table and writes benchmarks/results/inference_cpu.json.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU benchmark: no accelerator plugin initialised

import jax
import numpy as np
from harness import (
    RESULTS_DIR,
    metric,
    open_clip_on_every_core,
    perturbed,
    print_summary,
    speedup,
    time_interleaved,
    write_results,
)

from jaxvlm.convert.open_clip import convert_variables
from jaxvlm.models import Runtime, build_model
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.towers.fastvit import reparameterize_model
from jaxvlm.models.two_tower import TwoTower

MODELS = ("ViT-B-32", "ViT-B-16-SigLIP", "MobileCLIP-S1")
DTYPES = ("float32", "bfloat16")
TARGET = 1.3  # jaxvlm's speed over open_clip's in float32
SMOKE_MODEL = "tiny-clip"
# open_clip.CLIP arguments with the sizes of jaxvlm's "tiny-clip" (open_clip has no such model)
TINY_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
)


def open_clip_model(open_clip, torch, name: str):
    """open_clip's model ``name`` with random weights, every tensor moved off its initial value
    (so that no zero-initialised tensor hides a difference)."""
    torch.manual_seed(0)
    return perturbed(
        torch, open_clip.CLIP(**TINY_CLIP) if name == SMOKE_MODEL else open_clip.create_model(name, pretrained=None)
    )


def jaxvlm_variables(name: str, state: dict) -> tuple:
    """(config, variables) of the open_clip state dict converted, its branches then folded for inference where
    it has any."""
    params, batch_stats = convert_variables(state, name, f"open_clip {name}")
    config, params, batch_stats = reparameterize_model(get_architecture(name).model, params, batch_stats)
    return config, jax.device_put({"params": params, **({"batch_stats": batch_stats} if batch_stats else {})})


def jaxvlm_encoders(config, variables: dict, dtype: str, inputs: dict) -> dict:
    """{tower: fn() -> float32 numpy embeddings of ``inputs[tower]``}: numpy in and out."""
    module = build_model(config, Runtime(dtype=dtype))
    image = jax.jit(lambda v, x: module.apply(v, x, method=TwoTower.encode_image))
    text = jax.jit(lambda v, x: module.apply(v, x, method=TwoTower.encode_text))
    return {
        "image": lambda: np.asarray(image(variables, inputs["image"])),
        "text": lambda: np.asarray(text(variables, inputs["text"])),
    }


def open_clip_encoders(torch, model, dtype: str, inputs: dict) -> dict:
    """{tower: fn() -> float32 numpy embeddings of ``inputs[tower]``} for ``model`` (cast to
    bfloat16 for "bfloat16"). The pixels are handed over as torch's own contiguous NCHW tensor,
    made before timing."""
    if dtype == "bfloat16":
        model = copy.deepcopy(model).to(torch.bfloat16)
    pixels = torch.from_numpy(inputs["image"]).permute(0, 3, 1, 2).contiguous().to(getattr(torch, dtype))
    ids = torch.from_numpy(inputs["text"]).long()

    def run(encode, x):
        with torch.inference_mode():
            return encode(x, normalize=True).float().numpy()

    return {"image": lambda: run(model.encode_image, pixels), "text": lambda: run(model.encode_text, ids)}


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def benchmark_model(torch, open_clip, name: str, dtypes, batch: int, repeats: int) -> dict:
    """{dtype: {tower: timings, speed ratio and embedding difference}} for one architecture."""
    from timm.utils.model import reparameterize_model as fold_branches  # timm only once harness imported open_clip

    cfg = get_architecture(name).model
    rng = np.random.default_rng(0)
    size = cfg.vision.image_size
    inputs = {
        "image": rng.standard_normal((batch, size, size, 3), dtype=np.float32),
        "text": rng.integers(0, cfg.text.vocab_size, (batch, cfg.text.context_length), dtype=np.int32),
    }
    trained_form = open_clip_model(open_clip, torch, name)
    config, variables = jaxvlm_variables(name, {k: v.numpy() for k, v in trained_form.state_dict().items()})
    reference = fold_branches(trained_form)  # as MobileCLIP's own inference runs it
    rows = {}
    for dtype in dtypes:
        encoders = {
            "jaxvlm": jaxvlm_encoders(config, variables, dtype, inputs),
            "open_clip": open_clip_encoders(torch, reference, dtype, inputs),
        }
        # each tower's two methods side by side: they meet the same load in each round
        methods = {(lib, tower): encoders[lib][tower] for tower in ("image", "text") for lib in encoders}
        seconds, samples, outputs = time_interleaved(methods, repeats)
        rows[dtype] = {}
        for tower in ("image", "text"):
            jax_s, torch_s = seconds["jaxvlm", tower], seconds["open_clip", tower]
            rows[dtype][tower] = {
                "jaxvlm": {"seconds": jax_s, "per_second": batch / jax_s, "samples": samples["jaxvlm", tower]},
                "open_clip": {
                    "seconds": torch_s,
                    "per_second": batch / torch_s,
                    "samples": samples["open_clip", tower],
                },
                "speedup": speedup(samples["open_clip", tower], samples["jaxvlm", tower]),
                "max_abs_diff": max_abs(outputs["jaxvlm", tower], outputs["open_clip", tower]),
            }
            row = rows[dtype][tower]
            print(
                f"{name:<16} {dtype:<9} {tower:<6} jaxvlm {row['jaxvlm']['per_second']:8.1f}/s  open_clip "
                f"{row['open_clip']['per_second']:8.1f}/s  speed-up {row['speedup']:5.2f}x  "
                f"max abs diff {row['max_abs_diff']:.1e}",
                flush=True,
            )
        del encoders, methods, outputs
        gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_MODEL}, batch 4, one repeat: checks the script")
    parser.add_argument("--out", default=str(RESULTS_DIR / "inference_cpu.json"))
    args = parser.parse_args()
    if args.smoke:
        args.models, args.batch, args.repeats = [SMOKE_MODEL], 4, 1
    started = time.perf_counter()

    torch, open_clip, threads = open_clip_on_every_core("inference_cpu")

    results = {
        name: benchmark_model(torch, open_clip, name, args.dtypes, args.batch, args.repeats) for name in args.models
    }
    summary = [
        metric(
            f"{name} encode_{tower} {dtype}: jaxvlm vs open_clip",
            row[tower]["speedup"],
            TARGET if dtype == "float32" else None,
        )
        for name, by_dtype in results.items()
        for dtype, row in by_dtype.items()
        for tower in ("image", "text")
    ]
    print_summary(summary)
    write_results(
        "inference_cpu",
        {
            "settings": {
                "batch": args.batch,
                "repeats": args.repeats,
                "models": args.models,
                "dtypes": args.dtypes,
                "threads": {"torch": torch.get_num_threads(), "xla": threads},
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "weights": "open_clip random init, perturbed, converted by jaxvlm",
                "bfloat16": "jaxvlm: Runtime.dtype, float32 params; open_clip: model.to(bfloat16)",
            },
            "results": results,
            "seconds": time.perf_counter() - started,
        },
        summary,
        path=args.out,
    )


if __name__ == "__main__":
    main()
