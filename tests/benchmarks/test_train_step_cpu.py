"""The CPU training-step benchmark, run as a script at a tiny size (--smoke): both steps agree on
the loss before and after one update, and the results file is complete. Timings mean nothing at
this size and are not checked."""

import os

import numpy as np
import pytest

from tests.benchmarks.smoke import run_smoke
from tests.tolerances import FLOAT32_EPS

pytest.importorskip("open_clip")


@pytest.mark.slow
def test_smoke_run_agrees_with_open_clip_and_writes_a_complete_results_file(tmp_path):
    result = run_smoke("train_step_cpu", tmp_path / "train_step_cpu.json")
    assert result["benchmark"] == "train_step_cpu"
    settings = result["settings"]
    assert settings["model"] == "smoke" and settings["batch"] == 8 and settings["dtype"] == "float32"
    assert settings["threads"]["torch"] == settings["threads"]["xla"] == os.cpu_count()
    assert result["machine"]["uptime"] and "load average" in result["machine"]["uptime"]

    # the two libraries' losses (and the gradients of the update between them) are float32 sums over the 8
    # examples x 77 text positions, in each library's order: sqrt(8 * 77) * eps = 3e-6 of the loss apart (it was
    # 1e-5 absolute)
    rtol = np.sqrt(8 * 77) * FLOAT32_EPS
    for step, row in result["loss_agreement"].items():
        bound = rtol * abs(row["open_clip"])
        print(
            f"{step}: loss jaxvlm {row['jaxvlm']:.7f} open_clip {row['open_clip']:.7f}, abs diff {row['abs_diff']:.1e}"
            f" (bound {bound:.1e})"
        )
        assert row["abs_diff"] <= bound
    assert result["loss_agreement"]["step 1"]["jaxvlm"] != result["loss_agreement"]["step 0"]["jaxvlm"]
    for lib in ("jaxvlm", "open_clip"):
        assert len(result["results"][lib]["samples"]) == 1 and result["results"][lib]["samples_per_second"] > 0
    assert result["speedup"] == pytest.approx(
        result["results"]["open_clip"]["samples"][0] / result["results"]["jaxvlm"]["samples"][0]
    )
    (m,) = result["summary"]
    assert m["kind"] == "metric" and m["target"] == 1.2 and m["holds"] == (m["value"] >= 1.2)
    assert m["value"] == result["speedup"]
    assert not list(tmp_path.glob(".*partial"))
