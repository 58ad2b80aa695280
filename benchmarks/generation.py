"""CoCa caption decoding speed: the KV-cached generator against re-running the whole model per token.

For coca_ViT-B-32 (random weights, fp32, random 224x224 pixels) it times greedy decoding of exactly
``--tokens`` tokens for ``--batch`` images (the end token is ruled out, so nothing stops early):

  cached     `jaxvlm.generation.generator`: the text tower and decoder run one position per step
             against fixed-shape key/value caches;
  uncached   one jitted loop that re-runs the full text tower and decoder over the whole
             [batch, tokens + 1] buffer for every new token;
  open_clip  open_clip's own decoding loop (torch, no_grad), re-running the model on the growing
             text; skipped when torch / open_clip cannot be imported.

With open_clip present, its randomly initialised weights are converted to jaxvlm, so all three
decode with the same weights, and the generated ids are checked against each other. Each method
is compiled / warmed up once, then the methods are timed in turn ``--repeats`` times and the
median is kept; the machine is shared, so only the ratios within one run mean anything.

    python benchmarks/generation.py [--repeats 3] [--batch 8] [--tokens 30]

Prints a table and writes benchmarks/results/generation.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta
from harness import import_open_clip, metric, time_interleaved, write_results

from jaxvlm.convert.open_clip import convert
from jaxvlm.generation import GenerationConfig, generator
from jaxvlm.models import CoCa, build_model, example_inputs
from jaxvlm.models.registry import get_architecture

ARCH = "coca_ViT-B-32"
TARGET = 3.0  # the cache must beat re-running the model by this factor


def uncached_generator(module: CoCa, tokens: int, pad_id: int):
    """Jitted fn(params, pixels) -> ids [B, tokens]: greedy decoding that runs the text tower and
    decoder over the whole fixed-length buffer for each new token."""
    dec = module.cfg.decoder

    def run(params, pixels):
        image_tokens = module.apply({"params": params}, pixels, method=CoCa.image_tokens)
        ids = jnp.full((pixels.shape[0], tokens + 1), pad_id, jnp.int32).at[:, 0].set(dec.sot_id)

        def step(i, ids):
            logits = module.apply({"params": params}, ids, image_tokens, method=CoCa.caption_logits)[:, i]
            logits = logits.at[:, dec.eot_id].set(-jnp.inf)  # min_len = max_len: no end token
            return ids.at[:, i + 1].set(jnp.argmax(logits, axis=-1).astype(jnp.int32))

        return jax.lax.fori_loop(0, tokens, step, ids)[:, 1:]

    return jax.jit(run)


def open_clip_greedy(torch, model, images, tokens: int, sot: int, eot: int) -> np.ndarray:
    """open_clip's decoding loop (as in `CoCa.generate`), greedy, the end token ruled out."""
    with torch.no_grad():
        image_latent, image_embs = model._encode_image(images)
        ids = torch.full((images.shape[0], 1), sot, dtype=torch.long)
        for _ in range(tokens):
            logits = model(images, ids, image_latent=image_latent, image_embs=image_embs, output_labels=False)[
                "logits"
            ][:, -1]
            logits[:, eot] = -float("inf")
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return ids[:, 1:].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()

    arch = get_architecture(ARCH)
    cfg, pad_id = arch.model, arch.tokenizer.pad_id
    module = build_model(cfg)
    size = cfg.vision.image_size
    pixels = np.random.default_rng(0).standard_normal((args.batch, size, size, 3), dtype=np.float32)

    reference = import_open_clip()
    methods = {}
    if reference is None:
        print("open_clip / torch not importable: skipping the open_clip reference")
        params = meta.unbox(module.init(jax.random.key(0), *example_inputs(cfg)))["params"]
    else:
        torch, open_clip = reference
        torch.manual_seed(0)
        model = open_clip.create_model(ARCH, pretrained=None).eval()
        # open_clip leaves the vocabulary head as torch.empty memory (its init is never called)
        torch.nn.init.normal_(model.text_decoder.text_projection.data, std=cfg.decoder.width**-0.5)
        with tempfile.TemporaryDirectory() as tmp:
            from safetensors.torch import save_file

            weights = Path(tmp) / "open_clip.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
            params = convert(weights, ARCH).params
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        dec = cfg.decoder
        methods["open_clip"] = lambda: open_clip_greedy(torch, model, images, args.tokens, dec.sot_id, dec.eot_id)

    params = jax.device_put(params)
    gen_cfg = GenerationConfig(method="greedy", max_len=args.tokens, min_len=args.tokens)
    cached, uncached = generator(module, gen_cfg, pad_id), uncached_generator(module, args.tokens, pad_id)
    device_pixels, rng = jax.device_put(pixels), jax.random.key(0)
    methods = {
        "cached": lambda: np.asarray(cached(params, device_pixels, rng)[0][:, 0]),
        "uncached": lambda: np.asarray(uncached(params, device_pixels)),
        **methods,
    }

    seconds, _, outputs = time_interleaved(methods, args.repeats)
    assert np.array_equal(outputs["cached"], outputs["uncached"]), "cached and uncached decoding disagree"
    agree = None
    if "open_clip" in outputs:
        agree = int(np.sum(np.all(outputs["open_clip"] == outputs["cached"], axis=1)))
        print(f"open_clip greedy ids agree with jaxvlm's for {agree}/{args.batch} sequences")

    tokens = args.batch * args.tokens
    print(f"\n{ARCH}, batch {args.batch}, {args.tokens} greedy tokens, fp32, median of {args.repeats}")
    print(f"{'method':<10} {'s/batch':>8} {'tokens/s':>9} {'vs uncached':>12} {'vs open_clip':>13}")
    rows = {}
    for name, s in seconds.items():
        rows[name] = {
            "seconds_per_batch": s,
            "tokens_per_s": tokens / s,
            "vs_uncached": seconds["uncached"] / s,
            "vs_open_clip": seconds["open_clip"] / s if "open_clip" in seconds else None,
        }
        vs_open_clip = f"{rows[name]['vs_open_clip']:.2f}x" if "open_clip" in seconds else "-"
        print(f"{name:<10} {s:>8.3f} {tokens / s:>9.1f} {rows[name]['vs_uncached']:>11.2f}x {vs_open_clip:>13}")
    ratio = rows["cached"]["vs_uncached"]
    print(f"\ncached vs uncached: {ratio:.2f}x (target >= {TARGET:g}x: {'holds' if ratio >= TARGET else 'MISSED'})")

    summary = [metric(f"{ARCH} greedy decoding: KV cache vs re-running the model per token", ratio, TARGET)]
    if "open_clip" in seconds:
        summary.append(
            metric(f"{ARCH} greedy decoding: jaxvlm (KV cache) vs open_clip", rows["cached"]["vs_open_clip"])
        )
    write_results(
        "generation",
        {
            "settings": {
                "model": ARCH,
                "batch": args.batch,
                "tokens": args.tokens,
                "repeats": args.repeats,
                "method": "greedy",
                "dtype": "float32",
                "weights": "random (open_clip init)" if reference else "random (jaxvlm init)",
            },
            "results": rows,
            "cached_vs_uncached": ratio,
            "target": TARGET,
            "target_holds": ratio >= TARGET,
            "cached_equals_uncached": True,
            "open_clip_sequences_agreeing": agree,
            "total_seconds": time.perf_counter() - started,
        },
        summary,
    )


if __name__ == "__main__":
    main()
