"""run_all: finding benchmark scripts and what they need, running them in their own processes,
and the README table and chart it builds from results files (synthetic here: nothing is timed)."""

import json
import sys
import textwrap

import pytest
import run_all
from PIL import Image

MACHINE = {
    "platform": "Linux",
    "cpu": "Intel(R) Xeon(R) Processor",
    "cpu_count": 2,
    "cpu_features": ["avx512f", "avx512_bf16", "amx_bf16"],
    "load_average": [3.5, 4.0, 4.1],
}
VERSIONS = {"python": "3.11.7", "jax": "0.10.2", "flax": "0.12.8", "torch": "2.13.0+cpu", "open_clip_torch": "3.3.0"}


def figure(name, value, target=None, better="higher", unit="x"):
    holds = None if target is None else (value >= target if better == "higher" else value <= target)
    return {"name": name, "value": value, "target": target, "better": better, "unit": unit, "holds": holds}


def write_result(directory, name, summary, date="2026-11-30T09:00:00+00:00", **extra):
    record = {"benchmark": name, "date": date, "machine": MACHINE, "versions": VERSIONS, "summary": summary, **extra}
    (directory / f"{name}.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path):
    directory = tmp_path / "results"
    directory.mkdir()
    write_result(
        directory,
        "inference_cpu",
        [
            figure("ViT-B-32 encode_image float32: jaxvlm vs open_clip", 1.42, 1.3),
            figure("ViT-B-32 encode_text float32: jaxvlm vs open_clip", 1.1, 1.3),
            figure("ViT-B-32 encode_image bfloat16: jaxvlm vs open_clip", 0.8),
        ],
    )
    write_result(
        directory,
        "contrastive_memory",
        [figure("sigmoid ring, 128k on 8 chips", 0.079, 0.1, "lower", "GiB")],
        date="2026-11-22T03:35:54+00:00",
    )
    write_result(directory, "compile_time", [figure("ViT-L/14 train step compile", 41.5, 60, "lower", "s")])
    (directory / "generation.json").write_text(
        json.dumps({"date": "2026-11-22", "results": {}})
    )  # an older script's file
    return directory


def test_results_are_read_in_running_order_and_old_files_named(results, capsys):
    records = run_all.load_results(results)
    assert [r["benchmark"] for r in records] == ["inference_cpu", "compile_time", "contrastive_memory"]
    assert "generation.json: no summary" in capsys.readouterr().out


def test_table_has_a_row_per_figure_with_date_machine_and_versions(results):
    table = run_all.render_table(run_all.load_results(results)).splitlines()
    print("\n".join(table))
    assert table[0].startswith("| benchmark | figure | measured | target | met | date | machine | versions |")
    rows = table[2:]
    assert len(rows) == 5
    assert rows[0] == (
        "| `inference_cpu` | ViT-B-32 encode_image float32: jaxvlm vs open_clip | 1.42x | ≥ 1.30x | yes | "
        "2026-11-30 | 2-core Intel(R) Xeon(R) Processor (AMX), load 3.5 | "
        "jax 0.10.2, flax 0.12.8, torch 2.13.0, open_clip 3.3.0 |"
    )
    assert "| 1.10x | ≥ 1.30x | **no** |" in rows[1]
    assert "| 0.80x | – | – |" in rows[2]
    assert "| 41.5 s | ≤ 60.0 s | yes |" in rows[3]
    assert "| 0.079 GiB | ≤ 0.100 GiB | yes | 2026-11-22 |" in rows[4]


def test_readme_table_is_replaced_between_the_markers_only(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{run_all.TABLE_START}\nold table\n{run_all.TABLE_END}\nafter\n")
    table = run_all.render_table(run_all.load_results(results))
    run_all.update_readme(readme, table)
    once = readme.read_text()
    assert once.startswith("# x\n\nbefore\n") and once.endswith(f"{run_all.TABLE_END}\nafter\n")
    assert "old table" not in once and table in once
    run_all.update_readme(readme, table)
    assert readme.read_text() == once
    assert not list(tmp_path.glob(".*partial"))


def test_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        run_all.update_readme(readme, "| table |")
    assert readme.read_text() == "# no markers\n"


def test_chart_is_a_png_with_a_panel_per_unit(results, tmp_path):
    chart = tmp_path / "out" / "summary.png"
    run_all.write_chart(run_all.load_results(results), chart)
    with Image.open(chart) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 800 and height > 300


def script(directory, name, body):
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


@pytest.fixture
def scripts(tmp_path):
    """Benchmark-like scripts: each writes a marker file when run."""
    directory = tmp_path / "benchmarks"
    directory.mkdir()
    ran = tmp_path / "ran"
    ran.mkdir()
    runs = f"""
        from pathlib import Path
        def main():
            Path({str(ran)!r}, Path(__file__).stem).touch()
        if __name__ == "__main__":
            main()
    """
    script(directory, "zeta", runs)
    script(directory, "generation", runs)
    script(directory, "gpu_train", 'REQUIRES = ("gpu",)\n' + textwrap.dedent(runs))
    script(directory, "train_step_cpu", 'REQUIRES = ("jaxvlm.not_written_yet",)\n' + textwrap.dedent(runs))
    script(directory, "broken", "import sys\ndef main():\n    sys.exit(3)\nmain()\n")
    script(directory, "helpers", "def not_main():\n    pass\n")
    script(directory, "harness", runs)
    return directory, ran


def test_discovery_orders_benchmarks_and_reads_requirements(scripts):
    directory, _ = scripts
    found = run_all.discover(directory)
    assert list(found) == ["train_step_cpu", "generation", "broken", "gpu_train", "zeta"]
    assert found["gpu_train"]["requires"] == ("gpu",)
    assert found["zeta"]["requires"] == ()
    assert run_all.missing(("gpu",), set()) == "needs a GPU, and this machine has none"
    assert run_all.missing(("gpu",), {"gpu"}) is None
    assert (
        run_all.missing(("jaxvlm.not_written_yet",), set()) == "needs jaxvlm.not_written_yet, which is not present yet"
    )
    assert run_all.missing(("jaxvlm.models", "tpu"), {"tpu"}) is None


def test_runnable_benchmarks_run_in_their_own_process_and_others_are_skipped(scripts, monkeypatch, capsys):
    directory, ran = scripts
    monkeypatch.setattr(run_all, "accelerator_platforms", lambda: set())
    outcome = run_all.run_benchmarks(run_all.discover(directory))
    assert outcome == {
        "train_step_cpu": "skipped: needs jaxvlm.not_written_yet, which is not present yet",
        "generation": "ok",
        "broken": "failed (exit 3)",
        "gpu_train": "skipped: needs a GPU, and this machine has none",
        "zeta": "ok",
    }
    assert sorted(p.name for p in ran.iterdir()) == ["generation", "zeta"]
    assert "-- gpu_train: skipped: needs a GPU" in capsys.readouterr().out


def test_unknown_benchmark_name_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_all.py"])
    assert run_all.main(["--only", "no_such_benchmark"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown benchmark no_such_benchmark" in err


def test_pod_plan_rows_get_a_table_of_their_own_and_stay_out_of_the_chart(results, tmp_path):
    from harness import metric, plan_row

    write_result(
        results,
        "pod_plan",
        [
            plan_row("siglip_b16", "v5p", "4x4x4", 11.25, 0.512),
            plan_row("clip_l14", "v6e", "16x16", 27.5, 0.4375),
            metric("plan compile", 12.0, 60, better="lower", unit="s"),
        ],
    )
    records = run_all.load_results(results)
    assert [r["benchmark"] for r in records] == ["inference_cpu", "compile_time", "pod_plan", "contrastive_memory"]
    table = run_all.render_table(records).splitlines()
    print("\n".join(table))
    assert sum(line.startswith("| `") for line in table) == 8  # 6 figures, 2 plan rows
    head = table.index("| benchmark | recipe | chip | topology | per-chip memory | MFU | date | versions |")
    assert table[head - 1] == "" and table[head + 1] == "|---|---|---|---|---|---|---|---|"
    assert table[head + 2] == (
        "| `pod_plan` | siglip_b16 | v5p | 4x4x4 | 11.250 GiB | 51.2% | 2026-11-30 | "
        "jax 0.10.2, flax 0.12.8, torch 2.13.0, open_clip 3.3.0 |"
    )
    assert table[head + 3].startswith("| `pod_plan` | clip_l14 | v6e | 16x16 | 27.500 GiB | 43.8% |")
    assert "| `pod_plan` | plan compile | 12.0 s | ≤ 60.0 s | yes |" in "\n".join(table[:head])
    assert [m["name"] for m in run_all.figures(records[2])] == ["plan compile"]
    chart = tmp_path / "summary.png"
    run_all.write_chart(records, chart)
    assert chart.stat().st_size > 0


def test_discovery_picks_up_a_pod_plan_script_when_there_is_one(scripts):
    directory, _ = scripts
    script(directory, "pod_plan", 'REQUIRES = ("jaxvlm.plan",)\ndef main():\n    pass\n')
    assert list(run_all.discover(directory)) == [
        "train_step_cpu",
        "generation",
        "pod_plan",
        "broken",
        "gpu_train",
        "zeta",
    ]
