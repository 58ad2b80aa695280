import json
import os
import subprocess
import sys
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

import jaxvlm.data
from tests.data.digests import batch_digest
from tests.data.processes import RESUMED_BATCHES, make_train_iterator, resume_config

REPO = Path(__file__).resolve().parents[2]
SAVE_AT = 60  # the test split holds 45 batches of 8: the saved state is in the second epoch


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: Grain worker processes
def test_restored_iterator_continues_exactly(digits_dir, tmp_path, workers):
    it = make_train_iterator(resume_config(str(digits_dir), workers))
    for _ in range(SAVE_AT):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(SAVE_AT, args=ocp.args.Composite(data=jaxvlm.data.iterator_save_args(it)))
        manager.wait_until_finished()
    expected = [batch_digest(next(it)) for _ in range(RESUMED_BATCHES)]
    it.close()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.data.processes",
            "resume",
            str(digits_dir),
            str(tmp_path / "ckpt"),
            str(SAVE_AT),
            str(workers),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(resumed) == RESUMED_BATCHES
    assert resumed == expected
