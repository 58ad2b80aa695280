"""CPU training speed: jaxvlm's train step against open_clip's own, same weights, same data, side by side.

A small CLIP, ViT-S/16 (224 px, width 384, 12 layers, 6 heads) with a 6-layer text tower of
width 384, batch 64, float32: samples/s of one full step (forward, contrastive loss, backward,
AdamW update).

  jaxvlm     the step `jaxvlm train` runs: `jaxvlm.train.program.build` from a training config
             whose model starts from a model directory holding the converted weights; jitted,
             the train state donated, on a one-device mesh. The step also computes what
             `jaxvlm train` logs (gradient and parameter norms, in-batch accuracy, NaN guard).
             By default with ``model.remat = "dots"`` (matmul outputs kept, the rest recomputed
             in the backward pass): "none" keeps every activation, ~10 GB at batch 64, more than
             a shared 24 GB machine holds next to torch's own.
  open_clip  the step of open_clip's training loop (open_clip_train.train.train_one_epoch):
             zero_grad, forward, ``open_clip.loss.ClipLoss``, backward,
             ``torch.optim.AdamW`` over open_clip's two parameter groups (no weight decay for
             gains, biases, 1-d parameters and the logit scale), then the logit-scale clamp.

Precision (``--dtype``): float32 on both sides; or bfloat16 mixed precision on both sides: jaxvlm
with ``model.dtype = "bfloat16"`` (float32 parameters and optimizer state), open_clip with its
``--precision amp_bf16`` (forward and loss under ``torch.autocast`` in bfloat16, float32
parameters). Mixed-precision losses agree to bfloat16's rounding, not exactly.

Both use the same hyper-parameters: lr 5e-4 constant, betas (0.9, 0.98), eps 1e-6, weight decay
0.2 on the same parameters, no gradient clipping (open_clip's defaults for ViTs). open_clip's
randomly initialised model, every tensor perturbed, is converted by jaxvlm's converter; the
losses of both at step 0 (same weights, same batch) and at step 1 (after one update each) are
compared before anything is timed. Torch gets as many threads as XLA uses (one per core). The
two steps are then timed in turn, ``--repeats`` rounds (every other round reversed); the speed-up
is the median over rounds of each round's ratio.

    python benchmarks/train_step_cpu.py [--repeats 5] [--batch 64] [--dtype float32] [--remat dots]
    python benchmarks/train_step_cpu.py --smoke --out /tmp/train_step_cpu.json  # tiny model: checks the script

Prints the figures and writes benchmarks/results/train_step_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU benchmark: no accelerator plugin initialised

import jax
import numpy as np
from harness import RESULTS_DIR, metric, open_clip_on_every_core, perturbed, speedup, time_interleaved, write_results

from jaxvlm import model_dir, parallel
from jaxvlm.convert.open_clip import convert_state_dict
from jaxvlm.models.registry import clip
from jaxvlm.models.runtime import REMAT_POLICIES
from jaxvlm.tokenizers import CLIP_BPE_FILE
from jaxvlm.train.config import base_config
from jaxvlm.train.program import build

REQUIRES = ("jaxvlm.train",)
TARGET = 1.2  # jaxvlm's speed over open_clip's
# open_clip.CLIP arguments: ViT-S/16 with a 6-layer text tower; and a tiny model for --smoke
MODELS = {
    "ViT-S-16, 6-layer text": dict(
        embed_dim=384,
        vision_cfg=dict(image_size=224, patch_size=16, width=384, layers=12),
        text_cfg=dict(context_length=77, vocab_size=49408, width=384, heads=6, layers=6),
    ),
    "smoke": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
    ),
}
HYPER = dict(lr=5e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2)
# open_clip_train.main's rule: no decay for 1-d parameters, norms, biases and the logit scale;
# in jaxvlm's names the rest are the kernels, both position embeddings and the token embedding.
DECAY_JAXVLM = r".*/kernel|.*/pos_embed|txt/token_embed/embedding"


def open_clip_no_decay(name: str, p) -> bool:
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def jaxvlm_architecture(kwargs: dict):
    """jaxvlm's architecture of the open_clip model built from ``kwargs`` (exact GELU, class token,
    argmax pooling, 64-wide heads: 6 at width 384)."""
    v, t = kwargs["vision_cfg"], kwargs["text_cfg"]
    vision = {"image_size": v["image_size"], "patch_size": v["patch_size"], "width": v["width"], "depth": v["layers"]}
    return clip(embed_dim=kwargs["embed_dim"], vision=vision, text={"width": t["width"], "depth": t["layers"]})


def train_config(init_from: Path, batch: int, dtype: str, remat: str):
    c = base_config()
    c.model.init_from = str(init_from)
    c.model.dtype = dtype
    c.model.remat = remat
    c.global_batch_size = batch
    c.total_steps = 10_000
    c.optimizer.update(
        lr=HYPER["lr"],
        b1=HYPER["b1"],
        b2=HYPER["b2"],
        eps=HYPER["eps"],
        weight_decay=HYPER["weight_decay"],
        weight_decay_on=DECAY_JAXVLM,
        grad_clip_norm=0.0,
        schedule="constant",
        warmup_steps=0,
    )
    c.loss.implementation = "xla"
    return c


def jaxvlm_program(arch, params: dict, batch: dict, dtype: str, remat: str, workdir: Path):
    """(program, state, inputs): jaxvlm's train program for the model directory holding ``params``,
    its initial state and ``batch`` placed on the mesh."""
    directory = workdir / "model"
    model_dir.save(
        directory,
        model_dir.ModelDir(arch.model, arch.preprocess, arch.tokenizer, {"source": "train_step benchmark"}, params),
        CLIP_BPE_FILE,
    )
    config = train_config(directory, len(batch["image"]), dtype, remat)
    program = build(config, parallel.create_mesh(config.mesh, config.mesh.dcn))
    sharding = parallel.batch_sharding(program.mesh)
    return program, program.init(), {k: jax.device_put(v, sharding) for k, v in batch.items()}


def jaxvlm_step(program, state, inputs):
    """fn() -> loss of one step of ``program``, the state carried from call to call."""

    def step():
        nonlocal state
        state, metrics = program.run_step(state, inputs)
        return float(metrics["loss"])

    return step


def open_clip_step(torch, open_clip, model, batch: dict, dtype: str, device: str = "cpu"):
    """fn() -> loss of one step of open_clip's training loop on ``device`` ("cpu", "cuda"):
    float32, or for bfloat16 its ``amp_bf16`` precision (forward and loss under autocast, the
    backward pass outside it). The model is moved to ``device``; reading the loss waits for the step."""
    import math

    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if not open_clip_no_decay(n, p)]
    rest = [p for n, p in model.named_parameters() if open_clip_no_decay(n, p)]
    optimizer = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": HYPER["weight_decay"]}],
        lr=HYPER["lr"],
        betas=(HYPER["b1"], HYPER["b2"]),
        eps=HYPER["eps"],
    )
    loss_fn = open_clip.loss.ClipLoss()
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(device)
    texts = torch.from_numpy(batch["text"]).long().to(device)

    def step():
        optimizer.zero_grad()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = model(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="both sides' compute dtype (bfloat16: mixed precision)",
    )
    parser.add_argument(
        "--remat",
        default="dots",
        choices=REMAT_POLICIES,
        help="jaxvlm's ModelConfig.remat (dots: about half the activation memory of none, see docs/perf.md)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny model, batch 8, one repeat: checks the script")
    parser.add_argument("--out", default=str(RESULTS_DIR / "train_step_cpu.json"))
    args = parser.parse_args()
    name = "smoke" if args.smoke else "ViT-S-16, 6-layer text"
    if args.smoke:
        args.batch, args.repeats = 8, 1
    started = time.perf_counter()

    torch, open_clip, threads = open_clip_on_every_core("train_step_cpu")

    torch.manual_seed(0)
    model = perturbed(torch, open_clip.CLIP(**MODELS[name], output_dict=True))
    arch = jaxvlm_architecture(MODELS[name])
    cfg = arch.model
    params = convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, cfg, f"open_clip {name}")
    rng = np.random.default_rng(0)
    size, context = cfg.vision.image_size, cfg.text.context_length
    batch = {
        "image": rng.standard_normal((args.batch, size, size, 3), dtype=np.float32),
        "text": rng.integers(0, cfg.text.vocab_size, (args.batch, context), dtype=np.int32),
    }

    with tempfile.TemporaryDirectory() as workdir:
        steps = {
            "jaxvlm": jaxvlm_step(*jaxvlm_program(arch, params, batch, args.dtype, args.remat, Path(workdir))),
            "open_clip": open_clip_step(torch, open_clip, model, batch, args.dtype),
        }
    # the first two steps of each, before any timing: same weights and batch, then one update each
    compile_started = time.perf_counter()
    losses = {lib: [fn(), fn()] for lib, fn in steps.items()}
    agreement = {
        f"step {i}": {
            "jaxvlm": losses["jaxvlm"][i],
            "open_clip": losses["open_clip"][i],
            "abs_diff": abs(losses["jaxvlm"][i] - losses["open_clip"][i]),
        }
        for i in (0, 1)
    }
    for step, row in agreement.items():
        print(
            f"loss at {step}: jaxvlm {row['jaxvlm']:.6f}  open_clip {row['open_clip']:.6f}  "
            f"abs diff {row['abs_diff']:.1e}",
            flush=True,
        )
    first_steps = time.perf_counter() - compile_started

    seconds, samples, _ = time_interleaved(steps, args.repeats)
    ratio = speedup(samples["open_clip"], samples["jaxvlm"])
    results = {
        lib: {"seconds": s, "samples_per_second": args.batch / s, "samples": samples[lib]} for lib, s in seconds.items()
    }
    for lib, row in results.items():
        print(f"{lib:<10} {row['samples_per_second']:7.2f} samples/s ({row['seconds']:.3f} s/step)")
    print(f"speed-up {ratio:.2f}x (target >= {TARGET}x)")
    summary = [metric(f"{name} train step, batch {args.batch}, {args.dtype}: jaxvlm vs open_clip", ratio, TARGET)]
    write_results(
        "train_step_cpu",
        {
            "settings": {
                "model": name,
                "open_clip_args": MODELS[name],
                "batch": args.batch,
                "repeats": args.repeats,
                "dtype": args.dtype,
                "remat": args.remat,
                "hyper_parameters": HYPER,
                "threads": {"torch": torch.get_num_threads(), "xla": threads},
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "weights": "open_clip random init, perturbed, converted by jaxvlm",
            },
            "loss_agreement": agreement,
            "results": results,
            "speedup": ratio,
            "first_two_steps_seconds": first_steps,
            "seconds": time.perf_counter() - started,
        },
        summary,
        path=args.out,
    )


if __name__ == "__main__":
    main()
