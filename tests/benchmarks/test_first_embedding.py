"""The time-to-first-embedding benchmark, run as a script with a tiny open_clip model (--smoke): every
case runs in its own process, both libraries embed the same photo and caption alike, and the results
file has every phase of every case. Its timings mean nothing at this size and are not checked.
Slow: each of its seven processes imports jax or torch."""

import pytest

from tests.benchmarks.smoke import run_smoke

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

CASES = ("jaxvlm", "jaxvlm_xla_cold", "jaxvlm_xla_warm", "open_clip")
PHASES = ("startup", "import", "load", "first_embedding", "total")
STEPS = ("inputs", "encode_image", "encode_text")


@pytest.mark.slow
def test_smoke_run_writes_a_complete_results_file(tmp_path):
    result = run_smoke("first_embedding", tmp_path / "first_embedding.json")
    assert result["benchmark"] == "first_embedding"
    settings = result["settings"]
    assert settings["model"] == "tiny" and settings["runs"] == 1
    assert settings["jaxvlm"]["devices"] == ["cpu:0"]  # jaxvlm.load's default on a CPU host: one device
    assert {"jax", "jaxlib", "flax", "torch", "open_clip_torch"} <= set(result["versions"])
    assert {"cpu", "cpu_count", "load_average"} <= set(result["machine"])

    for case in CASES:
        seconds = result["seconds"][case]
        assert set(seconds) == {*PHASES, *STEPS}
        assert all(value > 0 for value in seconds.values()), (case, seconds)
        (run,) = result["runs"][case]
        assert run == seconds  # one run: its median is itself
        parts = run["startup"] + run["import"] + run["load"] + run["first_embedding"]
        assert run["total"] == pytest.approx(parts)
        assert run["first_embedding"] == pytest.approx(sum(run[step] for step in STEPS))
    assert set(result["warm_up_seconds"]) == {"jaxvlm", "jaxvlm_xla_cold", "open_clip"}

    ratios = result["ratio_open_clip_over"]
    for case in CASES[:-1]:
        assert ratios[case] == pytest.approx(result["seconds"]["open_clip"]["total"] / result["seconds"][case]["total"])
    assert set(result["jaxvlm_over_jaxvlm_xla_warm"]) == {"first_embedding", "total"}
    # the same weights, photo and caption: both libraries' embeddings agree
    assert result["max_abs_diff"]["image"] < 1e-4 and result["max_abs_diff"]["text"] < 1e-4

    summary = {m["name"]: m for m in result["summary"]}
    headline = summary["tiny time to first embedding: open_clip / jaxvlm"]
    assert headline["target"] == 1.0 and headline["value"] == ratios["jaxvlm"]
    assert headline["holds"] == (ratios["jaxvlm"] >= 1.0)
    cached = summary["tiny time to first embedding, JAX compilation cache on (opt-in) and warm: open_clip / jaxvlm"]
    assert cached["target"] is None and cached["value"] == ratios["jaxvlm_xla_warm"]
    for case in ("jaxvlm", "open_clip"):
        m = summary[f"tiny time to first embedding, {case}"]
        assert (m["unit"], m["better"], m["value"]) == ("s", "lower", result["seconds"][case]["total"])
    assert not list(tmp_path.glob(".*partial"))
