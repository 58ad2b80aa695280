"""`jaxvlm launch local`: the demo config trained by 2 processes x 2 CPU devices, and a failing
process stopping the others."""

from __future__ import annotations

import io
import sys
import textwrap
import time

import pytest

from jaxvlm.cli import main
from jaxvlm.launch import local
from jaxvlm.train.metrics import read
from tests.paths import REPO


@pytest.mark.slow
def test_demo_trains_on_two_processes_of_two_devices(digits_dir, tmp_path, capfd):
    """Both processes train the same run over 4 devices (parameters FSDP-split over all of them),
    checkpoint it and export the model; every line of output names its process."""
    code = main(
        [
            "launch",
            "local",
            "--processes",
            "2",
            "--devices",
            "2",
            "--config",
            str(REPO / "configs" / "demo.py"),
            "--workdir",
            str(tmp_path),
            f"--config.data.data_dir={digits_dir}",
            "--config.total_steps=4",
            "--config.global_batch_size=16",
            "--config.log_every=1",
            "--config.checkpoint.every=2",
            "--config.eval_specs=()",
            "--config.mesh.fsdp=4",
            "--config.mesh.fsdp_min_size=0",
            "--config.optimizer.warmup_steps=1",
        ]
    )
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and all(line.startswith(("[0] ", "[1] ")) for line in lines), lines[:5]
    assert any(line.startswith("[0] trained 4 steps") for line in lines)
    assert [row["step"] for row in read(tmp_path / "metrics.jsonl") if "loss" in row] == [1, 2, 3, 4]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_failing_process_stops_the_others(tmp_path):
    """Process 1 fails at once; process 0 would run for a minute: the launcher stops it and
    returns process 1's exit code."""
    script = tmp_path / "entry.py"
    script.write_text(
        textwrap.dedent("""
        import sys, time
        index = int(sys.argv[sys.argv.index("--process-id") + 1])
        print(f"process {index} of", sys.argv[sys.argv.index("--num-processes") + 1], flush=True)
        if index == 1:
            sys.exit(3)
        time.sleep(60)
    """)
    )
    out = io.StringIO()
    started = time.monotonic()
    code = local.launch(
        ["train"], processes=2, devices=2, entry_point=(sys.executable, str(script)), out=out, grace_seconds=5
    )
    assert code == 3 and time.monotonic() - started < 30
    assert sorted(out.getvalue().splitlines()) == ["[0] process 0 of 2", "[1] process 1 of 2"]


def test_devices_per_process_replace_any_inherited_count():
    env = local.process_env(3, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x"})
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=3"
    assert env["JAX_PLATFORMS"] == "cpu"


def test_bad_configs_fail_before_any_process_starts(tmp_path, capsys):
    code = main(
        [
            "launch",
            "local",
            "--processes",
            "2",
            "--devices",
            "2",
            "--config",
            str(REPO / "configs" / "demo.py"),
            "--workdir",
            str(tmp_path / "run"),
            "--config.global_batch_size=6",
        ]
    )
    assert code == 2
    assert "global_batch_size 6 is not divisible by the 4 batch shards" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
