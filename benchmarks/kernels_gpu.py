"""Speed of the Pallas GPU (Triton) kernels against XLA, side by side in one run on a CUDA GPU.

  losses     loss + gradients (x, y, scale and bias) of bfloat16 embeddings [B, D], B = 4k, 16k,
             32k, D = 768, 1152: the fused kernels (`jaxvlm.kernels.contrastive_gpu`) against the
             jnp reference jitted (XLA materialises the B x B logits); also each compiled
             program's temporary memory (XLA's `memory_analysis()`) and the two losses' agreement.
  attention  forward + backward (q, k, v) of bfloat16 [batch, T, heads, head_dim] at ViT token
             counts T = 197, 257, 577 and causal CLIP text T = 77, head dims 64 and 128: the
             Triton flash attention (`flash_attention(backend="gpu")`) against
             `jax.nn.dot_product_attention` with implementation "xla" and "cudnn".

Each program is compiled and run once (warm-up), then run ``--repeats`` times and the median
kept, waiting on every result (`block_until_ready`). A case a method cannot run (out of memory,
cuDNN refusing a shape) is recorded with its error.

    python benchmarks/kernels_gpu.py [--repeats 10]
    python benchmarks/kernels_gpu.py --smoke

Prints a table and writes benchmarks/results/kernels_gpu.json. Without a GPU it prints one line
saying it skipped and exits 0. ``--smoke`` runs the same code at tiny sizes on any backend (off a
GPU the kernels run in Pallas's interpreter and cuDNN is left out) and writes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jaxvlm.kernels.contrastive_gpu import sigmoid_loss_gpu, softmax_loss_gpu
from jaxvlm.kernels.flash_attention import flash_attention
from jaxvlm.kernels.sigmoid_loss import sigmoid_loss_reference
from jaxvlm.kernels.softmax_loss import softmax_loss_reference

RESULTS = Path(__file__).resolve().parent / "results" / "kernels_gpu.json"
# (batch sizes, dims) of the losses; (T, causal) and (head_dim, heads) of attention, batch
FULL = {
    "losses": ((4096, 16384, 32768), (768, 1152)),
    "attention": (((197, False), (257, False), (577, False), (77, True)), ((64, 16), (128, 8)), 32),
}
SMOKE = {"losses": ((100,), (72,)), "attention": (((50, False), (17, True)), ((64, 2),), 1)}
LOSSES = {  # name -> (fused kernel, jnp reference, scalar arguments)
    "softmax": (softmax_loss_gpu, softmax_loss_reference, (jnp.float32(20.0),)),
    "sigmoid": (sigmoid_loss_gpu, sigmoid_loss_reference, (jnp.float32(10.0), jnp.float32(-10.0))),
}


def median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(fn, args, repeats: int) -> dict:
    """{"ms", "temp_bytes", "value"} of jit(fn) on args, or {"error"} when it cannot run."""
    try:
        compiled = jax.jit(fn).lower(*args).compile()
        seconds = median_seconds(compiled, args, repeats)
        value = compiled(*args)
    except (jax.errors.JaxRuntimeError, ValueError, NotImplementedError) as e:
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    memory = compiled.memory_analysis()
    return {"ms": 1e3 * seconds, "temp_bytes": None if memory is None else memory.temp_size_in_bytes, "value": value}


def embeddings(batch: int, dim: int):
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, dim), jnp.float32)
    y = x + jax.random.normal(ky, (batch, dim), jnp.float32)
    unit = lambda v: (v / jnp.linalg.norm(v, axis=1, keepdims=True)).astype(jnp.bfloat16)  # noqa: E731
    return unit(x), unit(y)


def loss_rows(sizes, repeats: int, interpret: bool) -> list[dict]:
    rows = []
    batches, dims = sizes
    for name, (kernel, reference, scalars) in LOSSES.items():
        for batch in batches:
            for dim in dims:
                args = (*embeddings(batch, dim), *scalars)
                argnums = tuple(range(len(args)))
                fused = measure(
                    jax.value_and_grad(functools.partial(kernel, interpret=interpret), argnums), args, repeats
                )
                plain = measure(jax.value_and_grad(reference, argnums), args, repeats)
                row = {"loss": name, "batch": batch, "dim": dim, "dtype": "bfloat16"}
                for label, result in (("fused", fused), ("plain", plain)):
                    row |= {f"{label}_{key}": value for key, value in result.items() if key != "value"}
                if "ms" in fused and "ms" in plain:
                    row["speedup"] = plain["ms"] / fused["ms"]
                    want = float(plain["value"][0])
                    row["loss_relative_difference"] = abs(float(fused["value"][0]) - want) / abs(want)
                rows.append(row)
                print(
                    f"{name:<8} B={batch:>6} D={dim:>5}  fused {cell(fused)}  plain {cell(plain)}  "
                    f"speed-up {row.get('speedup', float('nan')):5.2f}x  "
                    f"temp {gib(fused.get('temp_bytes'))} vs {gib(plain.get('temp_bytes'))} GiB",
                    flush=True,
                )
    return rows


def attention_rows(sizes, repeats: int, interpret: bool, cudnn: bool) -> list[dict]:
    shapes, widths, batch = sizes
    methods = {
        "kernel": lambda causal: functools.partial(flash_attention, causal=causal, backend="gpu", interpret=interpret),
        "xla": lambda causal: functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation="xla"),
    }
    if cudnn:
        methods["cudnn"] = lambda causal: functools.partial(
            jax.nn.dot_product_attention, is_causal=causal, implementation="cudnn"
        )
    rows = []
    for tokens, causal in shapes:
        for head_dim, heads in widths:
            keys = jax.random.split(jax.random.key(1), 4)
            q, k, v, cotangent = (
                jax.random.normal(key, (batch, tokens, heads, head_dim), jnp.bfloat16) for key in keys
            )
            row = {"tokens": tokens, "causal": causal, "head_dim": head_dim, "heads": heads, "batch": batch}
            results = {}
            for name, method in methods.items():
                attend = method(causal)

                def forward_backward(q, k, v, attend=attend, cotangent=cotangent):
                    out, vjp = jax.vjp(attend, q, k, v)
                    return out, vjp(cotangent)

                results[name] = measure(forward_backward, (q, k, v), repeats)
                row |= {f"{name}_{key}": value for key, value in results[name].items() if key != "value"}
            rows.append(row)
            print(
                f"attention T={tokens:>4}{' causal' if causal else '       '} head_dim={head_dim:>4}  "
                + "  ".join(f"{name} {cell(result)}" for name, result in results.items()),
                flush=True,
            )
    return rows


def cell(result: dict) -> str:
    return f"{result['ms']:9.3f} ms" if "ms" in result else f"{'failed':>12}"


def gib(value) -> str:
    return "   ?  " if value is None else f"{value / 2**30:6.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any backend; writes nothing")
    args = parser.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    if not (on_gpu or args.smoke):
        print(f"kernels_gpu: skipped, no GPU (jax's default backend is {jax.default_backend()})")
        return 0
    sizes = SMOKE if args.smoke else FULL
    repeats = min(args.repeats, 2) if args.smoke else args.repeats
    started = time.perf_counter()
    device = jax.devices()[0].device_kind
    print(f"{device}, jax {jax.__version__}, median of {repeats} runs")
    losses = loss_rows(sizes["losses"], repeats, interpret=not on_gpu)
    attention = attention_rows(sizes["attention"], repeats, interpret=not on_gpu, cudnn=on_gpu)
    if args.smoke:
        return 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "device": device,
                "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__},
                "settings": {"repeats": repeats, "what": "median ms of forward + backward, warm"},
                "losses": losses,
                "attention": attention,
                "seconds": time.perf_counter() - started,
            },
            indent=2,
            default=lambda v: np.asarray(v).tolist(),
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
