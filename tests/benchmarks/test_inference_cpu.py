"""The CPU inference benchmark, run as a script at tiny-clip size (--smoke): the results file it
writes. Its timings mean nothing at this size and are not checked."""

import os

import pytest

from tests.benchmarks.smoke import run_smoke

pytest.importorskip("open_clip")


@pytest.mark.slow
def test_smoke_run_writes_a_complete_results_file(tmp_path):
    result = run_smoke("inference_cpu", tmp_path / "inference_cpu.json")
    assert result["benchmark"] == "inference_cpu"
    assert result["settings"]["models"] == ["tiny-clip"] and result["settings"]["batch"] == 4
    assert result["settings"]["threads"]["torch"] == result["settings"]["threads"]["xla"] == os.cpu_count()
    assert {"jax", "flax", "torch", "open_clip_torch"} <= set(result["versions"])
    assert result["machine"]["cpu_count"] == os.cpu_count()

    rows = result["results"]["tiny-clip"]
    for dtype, tolerance in (("float32", 1e-5), ("bfloat16", 5e-2)):
        for tower in ("image", "text"):
            row = rows[dtype][tower]
            print(f"tiny-clip {dtype} {tower}: max abs diff jaxvlm vs open_clip {row['max_abs_diff']:.1e}")
            assert row["max_abs_diff"] <= tolerance
            assert row["jaxvlm"]["per_second"] > 0 and row["open_clip"]["per_second"] > 0
            assert len(row["jaxvlm"]["samples"]) == len(row["open_clip"]["samples"]) == 1
            assert row["speedup"] == pytest.approx(row["open_clip"]["samples"][0] / row["jaxvlm"]["samples"][0])

    summary = {m["name"]: m for m in result["summary"]}
    assert sorted(summary) == sorted(
        f"tiny-clip encode_{tower} {dtype}: jaxvlm vs open_clip"
        for tower in ("image", "text")
        for dtype in ("float32", "bfloat16")
    )
    for name, m in summary.items():
        assert m["target"] == (1.3 if "float32" in name else None)
        assert m["holds"] == (None if m["target"] is None else m["value"] >= 1.3)
    assert not list(tmp_path.glob(".*partial"))
