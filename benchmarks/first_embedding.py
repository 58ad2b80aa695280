"""Time to first embedding: jaxvlm against open_clip (torch), from a fresh Python process to one image
and one text embedded, loading the same open_clip hub repo folder from disk.

A notebook user's first cell, timed from interpreter start to both embeddings materialised:

  jaxvlm     ``import jaxvlm``; ``m = jaxvlm.load(folder)`` (default ``devices``: one CPU device, what
             `jaxvlm.load` picks on a CPU host); ``m.preprocess([photo])``, ``m.tokenize([caption])``,
             ``m.encode_image``, ``m.encode_text`` (numpy out: computed and copied back). The folder
             was converted into the conversion cache (``$JAXVLM_CACHE``, a temporary folder) by a
             warm-up run, so the timed runs load the converted model from the cache, as every load
             after a user's first does.
  open_clip  ``import open_clip``; ``open_clip.create_model_and_transforms("local-dir:FOLDER")`` and
             ``open_clip.get_tokenizer("local-dir:FOLDER")``; the photo through its transform, the
             caption through its tokenizer, ``encode_image`` / ``encode_text(normalize=True)`` under
             ``torch.no_grad``, numpy out.

The folder is what open_clip's ``push_to_hf_hub`` writes (open_clip_config.json with model_cfg and
preprocess_cfg, open_clip_model.safetensors) for a randomly initialised ``open_clip.create_model(
"ViT-B-32")``: no network is needed, and the sizes, hence load and compile times, are those of the
published checkpoints. The photo is skimage's astronaut saved as a PNG, opened by each library's own
path (jaxvlm takes the file name, open_clip a ``PIL.Image.open`` of it).

Phases, in seconds, per run: ``startup`` (process spawn to the first line of the script: the
interpreter), ``import``, ``load``, ``first_embedding`` (preprocess + tokenize + both encoders,
jaxvlm's compilation included; split into ``inputs``, ``encode_image``, ``encode_text``) and
``total``, spawn to both embeddings. Cases:

  jaxvlm            as installed: jaxvlm keeps no compiled programs between processes, so XLA
                    compiles both encoders in every process (each run is "cold" as to compilation,
                    "warm" as to conversion). The untimed warm-up run is the first load ever: it
                    converts the folder too (``warm_up_seconds``).
  jaxvlm_xla_cold   the same with JAX's persistent compilation cache turned on by JAX's own
  jaxvlm_xla_warm   environment variables (``JAX_COMPILATION_CACHE_DIR``,
                    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``: these compiles take under the
                    default 1 s threshold), emptied before each cold run and filled by an earlier run
                    for each warm one: what a user can opt into, and what jaxvlm would gain by
                    turning it on itself.
  open_clip         no compilation: its one case stands against all three.

Each run is its own process; the cases are run in turn ``--runs`` times, every other round in
reverse order, after one untimed warm-up of each (conversion, OS file cache), so that load from
other processes falls on all alike. Medians are reported, and the ratios are medians over rounds
of each round's open_clip total / jaxvlm total (above 1: jaxvlm first). Both compute on every
core (torch's and XLA's defaults). ``JAX_PLATFORMS=cpu`` is set for the jaxvlm processes: this
environment has libtpu installed for ahead-of-time TPU compiles (a test dependency), which JAX
would otherwise probe at start-up (about 0.4 s); a CPU user's install has no plugin to probe.
``XLA_FLAGS`` is dropped (the tests' simulated devices are not a user's).

    python benchmarks/first_embedding.py [--runs 5] [--model ViT-B-32]
    python benchmarks/first_embedding.py --smoke --out /tmp/first_embedding.json  # tiny model: checks the script

Prints a table and writes benchmarks/results/first_embedding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("jaxvlm", "jaxvlm_xla_cold", "jaxvlm_xla_warm", "open_clip")
JAXVLM_CASES = CASES[:-1]
PHASES = ("startup", "import", "load", "first_embedding", "total")
STEPS = ("inputs", "encode_image", "encode_text")  # first_embedding's parts
CAPTION = "a photo of an astronaut"
TARGET = 1.0  # open_clip's total over jaxvlm's: jaxvlm no slower
SMOKE_MODEL = "tiny"
# open_clip.CLIP arguments at the sizes of jaxvlm's "tiny-clip-quickgelu" (open_clip has no tiny model)
TINY_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


# --- the timed child processes: nothing but the standard library is imported before their clocks start


def first_embedding_jaxvlm(folder: str, photo: str, caption: str) -> tuple[dict, list, list, dict]:
    marks = {"start": time.monotonic()}
    import jaxvlm

    marks["import"] = time.monotonic()
    model = jaxvlm.load(folder)
    marks["load"] = time.monotonic()
    pixels, ids = model.preprocess([photo]), model.tokenize([caption])
    marks["inputs"] = time.monotonic()
    image = model.encode_image(pixels)  # numpy: computed and copied back
    marks["encode_image"] = time.monotonic()
    text = model.encode_text(ids)
    marks["encode_text"] = time.monotonic()
    devices = model.mesh.devices.ravel().tolist()
    return marks, image[0].tolist(), text[0].tolist(), {"devices": [str(d) for d in devices]}


def first_embedding_open_clip(folder: str, photo: str, caption: str) -> tuple[dict, list, list, dict]:
    marks = {"start": time.monotonic()}
    import torch

    # torchvision's PyPI wheel cannot load its operators next to CPU torch and fails at import for
    # want of these schemas (see harness.import_open_clip); nothing here calls them
    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass
    import open_clip
    from PIL import Image

    marks["import"] = time.monotonic()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    marks["load"] = time.monotonic()
    with torch.no_grad():
        pixels, ids = preprocess(Image.open(photo)).unsqueeze(0), tokenizer([caption])
        marks["inputs"] = time.monotonic()
        image = model.encode_image(pixels, normalize=True).numpy()
        marks["encode_image"] = time.monotonic()
        text = model.encode_text(ids, normalize=True).numpy()
        marks["encode_text"] = time.monotonic()
    return marks, image[0].tolist(), text[0].tolist(), {"threads": torch.get_num_threads()}


def child(library: str, folder: str, photo: str, caption: str) -> None:
    run = first_embedding_jaxvlm if library == "jaxvlm" else first_embedding_open_clip
    marks, image, text, info = run(folder, photo, caption)
    print(json.dumps({"marks": marks, "image": image, "text": text, **info}))


# --- the parent: builds the repo folder, runs the children in turn, writes the results


def save_open_clip_repo(torch, open_clip, model_name: str, folder: Path) -> None:
    """A randomly initialised open_clip model saved as open_clip's hub repos are (`save_for_hf`):
    open_clip_config.json (model_cfg, preprocess_cfg) and open_clip_model.safetensors."""
    from open_clip.push_to_hf_hub import save_for_hf

    class NoTokenizerFiles:  # open_clip's CLIP BPE is its own: a hub repo carries no tokenizer files for it
        def save_pretrained(self, directory) -> None:
            pass

    torch.manual_seed(0)
    if model_name == SMOKE_MODEL:
        model_cfg = json.loads(json.dumps(TINY_CFG))
        model = open_clip.CLIP(**json.loads(json.dumps(TINY_CFG)))
        preprocess_cfg = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD, "size": 32}
        open_clip.set_model_preprocess_cfg(
            model, {**preprocess_cfg, "interpolation": "bicubic", "resize_mode": "shortest"}
        )
    else:
        model_cfg = open_clip.get_model_config(model_name)
        model = open_clip.create_model(model_name, pretrained=None)
    save_for_hf(model.eval(), NoTokenizerFiles(), model_cfg, folder, safe_serialization=True)


def astronaut_png(path: Path) -> Path:
    from PIL import Image
    from skimage.data import astronaut

    Image.fromarray(astronaut()).save(path)
    return path


def case_env(case: str, env: dict, tmp: Path) -> dict:
    """The environment of a ``case`` process: ``env`` (JAX_PLATFORMS is jax's alone), with JAX's
    persistent compilation cache for the jaxvlm_xla cases, emptied first for the cold one."""
    if case == "open_clip":
        return {k: v for k, v in env.items() if k != "JAX_PLATFORMS"}
    if case == "jaxvlm":
        return env
    cache = tmp / "xla-cache"
    if case == "jaxvlm_xla_cold":
        shutil.rmtree(cache, ignore_errors=True)
    return {**env, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def run_child(case: str, folder: Path, photo: Path, env: dict, tmp: Path) -> dict:
    """One fresh process of ``case``: its phases in seconds, its embeddings and what it reported."""
    library = "open_clip" if case == "open_clip" else "jaxvlm"
    command = [sys.executable, __file__, "--child", library, "--folder", str(folder), "--photo", str(photo)]
    child_env = case_env(case, env, tmp)
    spawned = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
    done = subprocess.run(command, capture_output=True, text=True, env=child_env)
    if done.returncode:
        raise SystemExit(f"first_embedding: the {case} process failed:\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    marks = record.pop("marks")
    seconds = {
        "startup": marks["start"] - spawned,
        "import": marks["import"] - marks["start"],
        "load": marks["load"] - marks["import"],
        "inputs": marks["inputs"] - marks["load"],
        "encode_image": marks["encode_image"] - marks["inputs"],
        "encode_text": marks["encode_text"] - marks["encode_image"],
        "first_embedding": marks["encode_text"] - marks["load"],
        "total": marks["encode_text"] - spawned,
    }
    return {"seconds": seconds, **record}


def max_abs(a: list, b: list) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each case, in turn")
    parser.add_argument("--model", default="ViT-B-32", help="an open_clip architecture")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, one run: checks the script")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/first_embedding.json)")
    parser.add_argument("--child", choices=("jaxvlm", "open_clip"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.folder, args.photo, CAPTION)
    if args.smoke:
        args.model, args.runs = SMOKE_MODEL, 1

    from harness import RESULTS_DIR, import_open_clip, metric, print_summary, write_results

    started = time.perf_counter()
    reference = import_open_clip()
    if reference is None:
        raise SystemExit("first_embedding needs torch and open_clip (pip install -e '.[test]')")
    torch, open_clip = reference
    with tempfile.TemporaryDirectory(prefix="first_embedding-") as tmp:
        tmp = Path(tmp)
        folder = tmp / f"{args.model}-repo"
        save_open_clip_repo(torch, open_clip, args.model, folder)
        photo = astronaut_png(tmp / "astronaut.png")
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
        env.update(JAXVLM_CACHE=str(tmp / "jaxvlm-cache"), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")

        # untimed: jaxvlm's first load ever converts the folder into its cache; the OS caches the files
        warm_up = {
            case: run_child(case, folder, photo, env, tmp) for case in ("jaxvlm", "jaxvlm_xla_cold", "open_clip")
        }
        print(
            f"first load ever (converts the folder): jaxvlm {warm_up['jaxvlm']['seconds']['total']:.2f} s", flush=True
        )
        runs = {case: [] for case in CASES}
        for round_ in range(args.runs):
            for case in reversed(CASES) if round_ % 2 else CASES:
                runs[case].append(run_child(case, folder, photo, env, tmp))
                phases = runs[case][-1]["seconds"]
                print(f"round {round_ + 1} {case:<16}" + "".join(f" {p} {phases[p]:5.2f}" for p in PHASES), flush=True)

    medians = {
        case: {p: statistics.median(r["seconds"][p] for r in runs[case]) for p in (*PHASES, *STEPS)} for case in CASES
    }
    totals = {case: [r["seconds"]["total"] for r in runs[case]] for case in CASES}
    ratio = {
        case: statistics.median(o / j for o, j in zip(totals["open_clip"], totals[case], strict=True))
        for case in JAXVLM_CASES
    }
    # what JAX's compilation cache, warm, saves jaxvlm: median over rounds of each round's ratio
    cache_gain = {
        p: statistics.median(
            a["seconds"][p] / b["seconds"][p] for a, b in zip(runs["jaxvlm"], runs["jaxvlm_xla_warm"], strict=True)
        )
        for p in ("first_embedding", "total")
    }
    last = {case: runs[case][-1] for case in CASES}
    difference = {tower: max_abs(last["jaxvlm"][tower], last["open_clip"][tower]) for tower in ("image", "text")}
    print(f"\n{args.model}: median seconds over {args.runs} runs")
    print(f"{'phase':<16}" + "".join(f"{case:>16}" for case in CASES))
    for p in (*PHASES[:-1], *STEPS, PHASES[-1]):
        print(f"{p:<16}" + "".join(f"{medians[case][p]:16.2f}" for case in CASES))
    print(f"{'open_clip / it':<16}" + "".join(f"{ratio[case]:15.2f}x" for case in JAXVLM_CASES))
    print(
        f"JAX's compilation cache, warm, makes jaxvlm's first embedding {cache_gain['first_embedding']:.2f}x "
        f"and its total {cache_gain['total']:.2f}x faster"
    )
    print(f"max abs difference of the embeddings: image {difference['image']:.1e}, text {difference['text']:.1e}")

    summary = [
        metric(f"{args.model} time to first embedding: open_clip / jaxvlm", ratio["jaxvlm"], TARGET),
        metric(
            f"{args.model} time to first embedding, JAX compilation cache on (opt-in) and warm: open_clip / jaxvlm",
            ratio["jaxvlm_xla_warm"],
        ),
        *(
            metric(f"{args.model} time to first embedding, {case}", medians[case]["total"], unit="s", better="lower")
            for case in ("jaxvlm", "open_clip")
        ),
    ]
    print_summary(summary)
    write_results(
        "first_embedding",
        {
            "settings": {
                "model": args.model,
                "runs": args.runs,
                "caption": CAPTION,
                "photo": "skimage.data.astronaut(), saved as PNG",
                "weights": "open_clip random init, saved by open_clip's save_for_hf (safetensors)",
                "jaxvlm": {
                    "load": "jaxvlm.load(folder), default devices (one CPU device on a CPU host)",
                    "devices": last["jaxvlm"]["devices"],
                    "env": {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": None},
                    "xla_cases": {
                        "JAX_COMPILATION_CACHE_DIR": "a temporary folder",
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    },
                },
                "open_clip": {
                    "load": "create_model_and_transforms / get_tokenizer('local-dir:FOLDER'), torch.no_grad",
                    "torch_threads": last["open_clip"]["threads"],
                },
            },
            "seconds": medians,
            "ratio_open_clip_over": ratio,
            "jaxvlm_over_jaxvlm_xla_warm": cache_gain,
            "runs": {case: [r["seconds"] for r in runs[case]] for case in CASES},
            "warm_up_seconds": {case: r["seconds"] for case, r in warm_up.items()},
            "max_abs_diff": difference,
            "benchmark_seconds": time.perf_counter() - started,
        },
        summary,
        path=args.out or RESULTS_DIR / "first_embedding.json",
    )


if __name__ == "__main__":
    main()
