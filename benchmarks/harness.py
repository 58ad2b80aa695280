"""What the benchmark scripts share: the open_clip import, interleaved timing, and the results
file every benchmark writes.

A benchmark is a script ``benchmarks/<name>.py`` with a ``main()``; it writes
``benchmarks/results/<name>.json`` through `write_results`, which records the date, the machine
and the library versions next to the benchmark's own numbers, and a ``summary``: the headline
figures (`metric`), each with its target, that `run_all` charts and puts in the README's table,
and any pod plan rows (`plan_row`), which go to a table of their own.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "libtpu", "torch", "open_clip_torch")
CPU_FEATURES = ("avx512f", "avx512_bf16", "amx_bf16")  # what decides float32 / bfloat16 matmul speed here


def import_open_clip():
    """(torch, open_clip), or None when either is missing. torchvision's PyPI wheel cannot load
    its compiled operators next to CPU torch and fails at import for want of two op schemas;
    defining them first lets open_clip import it (nothing here calls those operators)."""
    try:
        import torch
    except ImportError:
        return None
    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # already defined: torchvision's own operators loaded
            pass
    try:
        import open_clip
    except ImportError:
        return None
    return torch, open_clip


def open_clip_on_every_core(benchmark: str):
    """(torch, open_clip, threads) for a side-by-side benchmark: torch gets one thread per core, as
    many as XLA:CPU runs. Exits naming ``benchmark`` when torch or open_clip is missing."""
    reference = import_open_clip()
    if reference is None:
        raise SystemExit(f"{benchmark} needs torch and open_clip (pip install -e '.[test]')")
    torch, open_clip = reference
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    return torch, open_clip, threads


def perturbed(torch, model):
    """``model`` in eval mode with every floating-point tensor but the logit scale moved off its
    initial value, so that no zero- or one-initialised tensor hides a difference."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key != "logit_scale" and value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
    return model.eval()


def time_interleaved(methods: dict[Hashable, Callable[[], object]], repeats: int) -> tuple[dict, dict, dict]:
    """Runs each method once to warm up (compile), then times them all in turn ``repeats`` times,
    every other round in reverse order, so that load from other processes and the cost of
    following a given method fall on all of them alike. Returns (median seconds, the samples of
    each round, last output) per method."""
    outputs = {name: fn() for name, fn in methods.items()}
    samples = {name: [] for name in methods}
    for round_ in range(repeats):
        for name, fn in reversed(methods.items()) if round_ % 2 else methods.items():
            start = time.perf_counter()
            outputs[name] = fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}, samples, outputs


def speedup(baseline: list[float], candidate: list[float]) -> float:
    """How many times faster ``candidate`` ran than ``baseline``: the median over rounds of the
    ratio of their times in the same round of `time_interleaved`. Load shifts from round to
    round; within a round both met about the same, so this is steadier than a ratio of medians."""
    return statistics.median(b / c for b, c in zip(baseline, candidate, strict=True))


def metric(name: str, value: float, target: float | None = None, *, better: str = "higher", unit: str = "x") -> dict:
    """One headline figure of a benchmark. ``better`` says which way the target is met: "higher"
    (value >= target, e.g. a speed ratio) or "lower" (value <= target, e.g. memory)."""
    if better not in ("higher", "lower"):
        raise ValueError(f"metric {name!r}: better must be 'higher' or 'lower', not {better!r}")
    holds = None if target is None else (value >= target if better == "higher" else value <= target)
    return {
        "kind": "metric",
        "name": name,
        "value": float(value),
        "target": target,
        "better": better,
        "unit": unit,
        "holds": holds,
    }


def print_summary(summary: list[dict]) -> None:
    """One line per metric of ``summary``: its value, and whether it meets its target where it has one."""
    for m in summary:
        verdict = ""
        if m["target"] is not None:
            sign = ">=" if m["better"] == "higher" else "<="
            verdict = f" (target {sign} {m['target']}{m['unit']}: {'holds' if m['holds'] else 'MISSED'})"
        print(f"{m['name']}: {m['value']:.2f}{m['unit']}{verdict}")


def plan_row(recipe: str, chip: str, topology: str, per_chip_gib: float, mfu: float) -> dict:
    """One row of a pod plan (``jaxvlm plan``'s estimate for a recipe on a slice), in a summary
    next to the metrics: README's plan table shows it; ``mfu`` is a fraction (0.45 = 45%)."""
    return {
        "kind": "plan",
        "recipe": recipe,
        "chip": chip,
        "topology": topology,
        "per_chip_gib": float(per_chip_gib),
        "mfu": float(mfu),
    }


def machine() -> dict:
    cpu = _cpuinfo()
    return {
        "platform": platform.platform(),
        "cpu": cpu.get("model name", platform.processor()),
        "cpu_count": os.cpu_count(),
        "cpu_features": [f for f in CPU_FEATURES if f in cpu.get("flags", "").split()],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "uptime": _uptime(),
    }


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_results(name: str, result: dict, summary: list[dict], path: Path | None = None) -> Path:
    """Writes ``result`` with the date, machine, versions and ``summary`` to
    benchmarks/results/<name>.json (or ``path``), through a hidden temporary sibling so that a
    failed write leaves the previous file whole."""
    path = Path(path or RESULTS_DIR / f"{name}.json")
    record = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "summary": summary,
        **result,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(json.dumps(record, indent=2) + "\n")
    staging.replace(path)
    print(f"wrote {path}")
    return path


def _uptime() -> str | None:
    """`uptime`'s line (users and load: other people's work on a shared machine), None without it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpuinfo() -> dict:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields
