"""GPU training speed: jaxvlm's ViT-B/16 CLIP train step against open_clip's, bfloat16 mixed
precision, same weights, same data, same GPU, side by side; and jaxvlm's MFU.

  jaxvlm     the step `jaxvlm train` runs (`train_step_cpu.jaxvlm_program`): model.dtype
             "bfloat16" (float32 parameters and AdamW state), remat "none" by default (open_clip
             keeps every activation too), the flash attention kernel where `implementation="auto"`
             picks it (the image tower's 197 tokens), the loss in XLA (256 x 256 logits per step).
  open_clip  its training loop's step at ``--precision amp_bf16`` (`train_step_cpu.open_clip_step`
             on "cuda"): forward and loss under torch.autocast, AdamW, the logit-scale clamp.

Both take the same batch of normalised float32 images and token ids, the same hyper-parameters
and the same starting weights (open_clip's random init, perturbed, converted by jaxvlm); their
losses at steps 0 and 1 are printed before anything is timed. The steps are timed in turn,
``--repeats`` rounds, reading each loss back (which waits for the step); the speed-up is the
median of the per-round ratios. MFU: the step's matrix-multiply FLOPs (`jaxvlm.flops`, counted on
the traced step: with remat "none" they are the model's) over the step time and the GPU's peak
dense bfloat16 FLOP/s.

    python benchmarks/train_step_gpu.py [--batch 256] [--repeats 10] [--remat none]
    python benchmarks/train_step_gpu.py --smoke --out /tmp/train_step_gpu.json  # a tiny model on any backend

Prints the figures and writes benchmarks/results/train_step_gpu.json. Without a GPU (and without
--smoke) it prints one line saying it skipped and exits 0.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from harness import RESULTS_DIR, metric, open_clip_on_every_core, perturbed, speedup, time_interleaved, write_results
from train_step_cpu import HYPER, MODELS, jaxvlm_architecture, jaxvlm_program, jaxvlm_step, open_clip_step

from jaxvlm import parallel
from jaxvlm.convert.open_clip import convert_state_dict
from jaxvlm.flops import per_device_flops
from jaxvlm.models.registry import get_architecture
from jaxvlm.models.runtime import REMAT_POLICIES

REQUIRES = ("gpu",)
TARGETS = {"speed-up": 1.2, "MFU": 45.0}
# Peak dense bfloat16 tensor-core FLOP/s per GPU, from NVIDIA's data sheets (SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device_kind: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16.items() if name in device_kind), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--remat", default="none", choices=REMAT_POLICIES, help="jaxvlm's ModelConfig.remat")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, batch 8, one repeat, any backend")
    parser.add_argument("--out", default=str(RESULTS_DIR / "train_step_gpu.json"))
    args = parser.parse_args()
    if not args.smoke and jax.default_backend() != "gpu":
        print(f"train_step_gpu: skipped, no GPU (JAX's backend is {jax.default_backend()})")
        return
    started = time.perf_counter()
    torch, open_clip, _ = open_clip_on_every_core("train_step_gpu")
    if not args.smoke and not torch.cuda.is_available():  # a CPU build of torch next to jax[cuda]
        raise SystemExit("train_step_gpu: torch sees no CUDA device; install a CUDA build of torch to compare")
    device = "cpu" if args.smoke else "cuda"
    torch.manual_seed(0)
    if args.smoke:
        name, args.batch, args.repeats = "smoke", 8, 1
        model, arch = open_clip.CLIP(**MODELS["smoke"], output_dict=True), jaxvlm_architecture(MODELS["smoke"])
    else:
        name = "ViT-B-16"
        model, arch = open_clip.create_model(name, output_dict=True), get_architecture(name)
    model = perturbed(torch, model)
    cfg = arch.model
    params = convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, cfg, f"open_clip {name}")
    rng = np.random.default_rng(0)
    size = cfg.vision.image_size
    batch = {
        "image": rng.standard_normal((args.batch, size, size, 3), dtype=np.float32),
        "text": rng.integers(0, cfg.text.vocab_size, (args.batch, cfg.text.context_length), dtype=np.int32),
    }

    with tempfile.TemporaryDirectory() as workdir:
        program, state, inputs = jaxvlm_program(arch, params, batch, "bfloat16", args.remat, Path(workdir))
    with parallel.activate(program.mesh):
        flops = per_device_flops(program.step.trace(state, inputs).jaxpr, 1, platform="cuda")
    steps = {
        "jaxvlm": jaxvlm_step(program, state, inputs),
        "open_clip": open_clip_step(torch, open_clip, model, batch, "bfloat16", device),
    }
    losses = {lib: [fn(), fn()] for lib, fn in steps.items()}
    for i in (0, 1):
        print(f"loss at step {i}: jaxvlm {losses['jaxvlm'][i]:.5f}  open_clip {losses['open_clip'][i]:.5f}")

    seconds, samples, _ = time_interleaved(steps, args.repeats)
    ratio = speedup(samples["open_clip"], samples["jaxvlm"])
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    mfu = None if peak is None else 100 * flops / seconds["jaxvlm"] / peak
    for lib, s in seconds.items():
        print(f"{lib:<10} {args.batch / s:9.1f} images/s ({s * 1e3:.1f} ms/step)")
    print(
        f"speed-up {ratio:.2f}x (target >= {TARGETS['speed-up']}x); jaxvlm {flops / 1e12:.2f} TFLOP per step, "
        + (f"MFU {mfu:.1f}% of {kind}'s {peak / 1e12:g} TFLOP/s" if mfu is not None else f"no peak known for {kind}")
    )
    summary = [
        metric(
            f"{name} train step, batch {args.batch}, bf16, {kind}: jaxvlm vs open_clip AMP", ratio, TARGETS["speed-up"]
        )
    ]
    if mfu is not None:
        summary.append(
            metric(f"{name} train step, batch {args.batch}, bf16: jaxvlm MFU on {kind}", mfu, TARGETS["MFU"], unit="%")
        )
    write_results(
        "train_step_gpu",
        {
            "settings": {
                "model": name,
                "batch": args.batch,
                "repeats": args.repeats,
                "remat": args.remat,
                "hyper_parameters": HYPER,
                "device": kind,
                "torch_device": device,
            },
            "losses": losses,
            "results": {
                lib: {"seconds": s, "images_per_second": args.batch / s, "samples": samples[lib]}
                for lib, s in seconds.items()
            },
            "speedup": ratio,
            "flops_per_step": flops,
            "peak_bf16_flops": peak,
            "mfu_percent": mfu,
            "seconds": time.perf_counter() - started,
        },
        summary,
        path=args.out,
    )


if __name__ == "__main__":
    main()
