"""Runs every benchmark this machine can run, then charts their headline figures and rewrites the
README's performance table, both from benchmarks/results/*.json.

A benchmark is a script benchmarks/<name>.py with a ``main()`` that writes
benchmarks/results/<name>.json through `harness.write_results` (date, machine, versions and a
``summary`` of headline figures with their targets). A script may declare what it needs at
module level, as a literal that is read from its source without importing it:

    REQUIRES = ("gpu",)            # an accelerator platform: "gpu" or "tpu"
    REQUIRES = ("jaxvlm.train",)   # a module that must be importable

and is skipped, with one line saying why, when something is missing. Each benchmark runs in its
own process (its own XLA flags and memory), slow ones last, so a new script needs no change here.

    python benchmarks/run_all.py [--only NAME ...] [--skip NAME ...] [--report-only]

Writes benchmarks/results/summary.png and the README table between the perf-table markers.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCHMARKS_DIR = Path(__file__).resolve().parent
README = BENCHMARKS_DIR.parent / "README.md"
NOT_BENCHMARKS = ("run_all", "harness")
# The order to run them in: quick ones first; scripts not named here run after these, by name.
ORDER = (
    "inference_cpu",
    "first_embedding",
    "train_step_cpu",
    "generation",
    "compile_time",
    "pod_plan",
    "contrastive_memory",
)
PLATFORMS = ("gpu", "tpu")
TABLE_START, TABLE_END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
UNITS = {"x": "{:.2f}x", "GiB": "{:.3f} GiB", "s": "{:.1f} s", "%": "{:.1f}%"}


def discover(directory: Path = BENCHMARKS_DIR) -> dict[str, dict]:
    """{name: {"path", "requires"}} for every script in ``directory`` with a top-level main()."""
    found = {}
    for path in sorted(directory.glob("*.py")):
        if path.stem in NOT_BENCHMARKS:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found[path.stem] = {"path": path, "requires": _requires(tree, path)}
    return dict(sorted(found.items(), key=lambda item: rank(item[0])))


def rank(name: str) -> tuple:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def _requires(tree: ast.Module, path: Path) -> tuple[str, ...]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "REQUIRES" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SystemExit(f"{path}: REQUIRES must be a tuple of strings")
            return tuple(value)
    return ()


def accelerator_platforms() -> set[str]:
    """The accelerator platforms JAX finds, asked in a child process so this one never holds a
    device (nor preallocates its memory)."""
    probe = "import jax; print(' '.join(sorted({d.platform for d in jax.devices()})))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
    )
    return set(done.stdout.split()) & set(PLATFORMS) if done.returncode == 0 else set()


def missing(requires: tuple[str, ...], platforms: set[str]) -> str | None:
    """Why a benchmark with these requirements cannot run here, or None."""
    for need in requires:
        if need in PLATFORMS:
            if need not in platforms:
                return f"needs a {need.upper()}, and this machine has none"
        elif not _importable(need):
            return f"needs {need}, which is not present yet"
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def run_benchmarks(benchmarks: dict[str, dict]) -> dict[str, str]:
    """Runs each runnable benchmark in its own process; {name: "ok" | "skipped: ..." | "failed (exit N)"}."""
    needs_platform = any(need in PLATFORMS for b in benchmarks.values() for need in b["requires"])
    platforms = accelerator_platforms() if needs_platform else set()
    outcome = {}
    for name, bench in benchmarks.items():
        reason = missing(bench["requires"], platforms)
        if reason:
            outcome[name] = f"skipped: {reason}"
            print(f"-- {name}: {outcome[name]}", flush=True)
            continue
        print(f"-- {name}: python {bench['path'].name}", flush=True)
        code = subprocess.run([sys.executable, str(bench["path"])]).returncode
        outcome[name] = "ok" if code == 0 else f"failed (exit {code})"
    return outcome


def load_results(results_dir: Path) -> list[dict]:
    """The results files that carry a summary, in their benchmarks' running order (a benchmark's
    several files, e.g. one per precision, by file name); older ones are named and left out."""
    records = []
    for path in sorted(results_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if not record.get("summary"):
            print(f"-- {path.name}: no summary (written by an older version of its script): re-run it")
            continue
        records.append({"benchmark": path.stem, **record})
    return sorted(records, key=lambda record: rank(record["benchmark"]))


def format_value(value: float, unit: str) -> str:
    return UNITS.get(unit, "{:.3g} " + unit).format(value)


def format_target(m: dict) -> str:
    if m["target"] is None:
        return "–"
    return f"{'≥' if m['better'] == 'higher' else '≤'} {format_value(m['target'], m['unit'])}"


def describe_machine(machine: dict) -> str:
    features = machine.get("cpu_features", [])
    isa = " (AMX)" if "amx_bf16" in features else " (AVX-512)" if "avx512f" in features else ""
    load = machine.get("load_average")
    return f"{machine.get('cpu_count', '?')}-core {machine.get('cpu', 'CPU')}{isa}" + (
        f", load {load[0]:g}" if load else ""
    )


def describe_versions(versions: dict) -> str:
    shown = (("jax", "jax"), ("flax", "flax"), ("torch", "torch"), ("open_clip_torch", "open_clip"))
    return ", ".join(f"{label} {versions[key].split('+')[0]}" for key, label in shown if key in versions)


def figures(record: dict) -> list[dict]:
    """A summary's headline figures (`harness.metric`), without its pod plan rows."""
    return [m for m in record["summary"] if m.get("kind", "metric") == "metric"]


def plans(record: dict) -> list[dict]:
    """A summary's pod plan rows (`harness.plan_row`)."""
    return [row for row in record["summary"] if row.get("kind") == "plan"]


def render_table(records: list[dict]) -> str:
    """The README's performance table, one row per headline figure, followed by the pod plan
    table (one row per recipe and slice) when a benchmark wrote plan rows."""
    lines = [
        "| benchmark | figure | measured | target | met | date | machine | versions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        for m in figures(record):
            met = {True: "yes", False: "**no**", None: "–"}[m["holds"]]
            lines.append(
                f"| `{record['benchmark']}` | {m['name']} | {format_value(m['value'], m['unit'])} | "
                f"{format_target(m)} | {met} | {record['date'][:10]} | "
                f"{describe_machine(record.get('machine', {}))} | {describe_versions(record.get('versions', {}))} |"
            )
    planned = [(record, row) for record in records for row in plans(record)]
    if planned:
        lines += [
            "",
            "| benchmark | recipe | chip | topology | per-chip memory | MFU | date | versions |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for record, row in planned:
            lines.append(
                f"| `{record['benchmark']}` | {row['recipe']} | {row['chip']} | {row['topology']} | "
                f"{format_value(row['per_chip_gib'], 'GiB')} | {format_value(100 * row['mfu'], '%')} | "
                f"{record['date'][:10]} | {describe_versions(record.get('versions', {}))} |"
            )
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    """Replaces what lies between the perf-table markers in ``readme`` with ``table``."""
    text = readme.read_text()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no '{TABLE_START}' ... '{TABLE_END}' markers to put the table between")
    body = (
        "\n_Written by `python benchmarks/run_all.py` from `benchmarks/results/*.json` "
        "(chart: `benchmarks/results/summary.png`)._\n\n" + table + "\n"
    )
    staging = readme.with_name(f".{readme.name}.partial")
    staging.write_text(text[: start + len(TABLE_START)] + body + text[end:])
    staging.replace(readme)


def write_chart(records: list[dict], path: Path) -> None:
    """One horizontal bar per headline figure, a panel per unit, each target marked; bars are
    green where the target is met, red where it is missed, grey where there is none."""
    rows = [(f"{r['benchmark']}: {m['name']}", m) for r in records for m in figures(r)]
    if not rows:
        return
    units = sorted({m["unit"] for _, m in rows}, key=lambda u: (u != "x", u))
    heights = [sum(m["unit"] == unit for _, m in rows) for unit in units]
    fig, axes = plt.subplots(
        len(units),
        1,
        squeeze=False,
        figsize=(11, 1.2 + 0.38 * sum(heights) + 0.6 * len(units)),
        gridspec_kw={"height_ratios": heights},
    )
    for ax, unit in zip(axes[:, 0], units):
        panel = [(label, m) for label, m in rows if m["unit"] == unit][::-1]
        colours = [{True: "tab:green", False: "tab:red", None: "tab:gray"}[m["holds"]] for _, m in panel]
        values = [m["value"] for _, m in panel]
        span = values + [m["target"] for _, m in panel if m["target"] is not None]
        if unit == "x":  # ratios on a log scale, each bar drawn from parity: 0.5x and 2x alike, 3000x fits
            ax.barh(range(len(panel)), [v - 1 for v in values], left=1, color=colours)
            ax.set_xscale("log")
            ax.set_xlim(min(span + [1]) / 1.5, 4 * max(span + [1]))
            ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
            ax.set_xlabel("speed ratio (x, log scale); black bars: targets, dotted: parity")
        else:
            ax.barh(range(len(panel)), values, color=colours)
            ax.set_xlim(0, 1.15 * max(span))
            ax.set_xlabel(f"{unit}; black bars: targets")
        for i, (_, m) in enumerate(panel):
            end = max(m["value"], 1) if unit == "x" else m["value"]  # a ratio's bar ends at parity or beyond it
            ax.annotate(
                format_value(m["value"], unit),
                (end, i),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
            if m["target"] is not None:
                ax.plot([m["target"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.set_yticks(range(len(panel)), [label for label, _ in panel], fontsize=8)
    fig.suptitle("jaxvlm benchmarks (benchmarks/results/*.json)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="do not run these benchmarks")
    parser.add_argument("--report-only", action="store_true", help="run nothing: chart and table from the results")
    args = parser.parse_args(argv)
    benchmarks = discover()
    unknown = sorted(set(args.only + args.skip) - set(benchmarks))
    if unknown:
        print(f"run_all: unknown benchmark {', '.join(unknown)}; known: {', '.join(benchmarks)}", file=sys.stderr)
        return 2
    chosen = {
        name: b
        for name, b in benchmarks.items()
        if (not args.only or name in args.only) and name not in args.skip and not args.report_only
    }
    outcome = run_benchmarks(chosen)
    records = load_results(BENCHMARKS_DIR / "results")
    write_chart(records, BENCHMARKS_DIR / "results" / "summary.png")
    update_readme(README, render_table(records))
    print(f"\nchart: {BENCHMARKS_DIR / 'results' / 'summary.png'}; table: {README}")
    for name, result in outcome.items():
        print(f"{name}: {result}")
    return 1 if any(result.startswith("failed") for result in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
