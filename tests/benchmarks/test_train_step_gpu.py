"""The GPU training-step benchmark, run as a script at a tiny size (--smoke) on this machine's CPU:
both bfloat16 mixed-precision steps (jaxvlm's and open_clip's amp_bf16) run and agree to bfloat16's
rounding, the step's FLOPs are counted, and the results file is complete. Without a GPU there is
no peak to take an MFU against."""

import pytest

from tests.benchmarks.smoke import run_smoke

pytest.importorskip("open_clip")


@pytest.mark.slow
def test_smoke_run_agrees_with_open_clip_amp_and_writes_a_complete_results_file(tmp_path):
    result = run_smoke("train_step_gpu", tmp_path / "train_step_gpu.json")
    assert result["benchmark"] == "train_step_gpu"
    assert result["settings"]["model"] == "smoke" and result["settings"]["device"] == "cpu"
    for step in (0, 1):
        jaxvlm, open_clip = result["losses"]["jaxvlm"][step], result["losses"]["open_clip"][step]
        print(f"step {step}: loss jaxvlm {jaxvlm:.5f} open_clip (amp_bf16) {open_clip:.5f}")
        assert abs(jaxvlm - open_clip) <= 0.02 * open_clip  # both in bfloat16: ~2^-8 per operation
    assert result["losses"]["jaxvlm"][1] != result["losses"]["jaxvlm"][0]
    # the smoke model's products: two towers of two blocks, batch 8 (forward, backward, nothing recomputed)
    assert result["flops_per_step"] > 1e8
    assert result["peak_bf16_flops"] is None and result["mfu_percent"] is None
    (m,) = result["summary"]
    assert m["target"] == 1.2 and m["value"] == result["speedup"]
    assert not list(tmp_path.glob(".*partial"))
