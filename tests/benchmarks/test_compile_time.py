"""The compile-time benchmark, run as a script at tiny-clip size (--smoke): it compiles the train
step from shapes and writes a complete results file. The times are not checked."""

import pytest

from jaxvlm.models import param_count
from jaxvlm.models.registry import get_architecture
from tests.benchmarks.smoke import run_smoke


@pytest.mark.slow
def test_smoke_run_compiles_from_shapes_and_writes_a_complete_results_file(tmp_path):
    result = run_smoke("compile_time", tmp_path / "compile_time.json")
    assert result["benchmark"] == "compile_time"
    assert result["settings"] == {
        "model": "tiny-clip",
        "batch": 8,
        "remat": "none",
        "dtype": "float32",
        "backend": "cpu",
        "devices": 1,
        "xla_flags": "",
    }
    cfg = get_architecture("tiny-clip").model
    assert result["parameters"] == param_count(cfg)
    seconds = result["seconds"]
    assert min(seconds.values()) > 0
    assert seconds["total"] == seconds["trace_and_lower"] + seconds["compile"]
    assert result["temp_bytes"] > 0 and result["cpu_seconds"]["total"] > 0
    wall, cpu = result["summary"]
    for m in (wall, cpu):
        assert (m["unit"], m["better"], m["target"]) == ("s", "lower", 60.0)
    assert wall["value"] == seconds["total"] and cpu["value"] == result["cpu_seconds"]["total"]
    assert "load average" in result["machine"]["uptime"]
