"""A full disk during a checkpoint save (a real ENOSPC: the checkpoints directory is a small tmpfs
in a private mount namespace, filled up while the run goes on): with checkpoint.on_save_error
"stop" the run stops with one line naming the step and the error; with "continue" it warns and
carries on, and saves again once there is room. Either way the previous checkpoint stays intact,
and a rerun from it ends bitwise where the uninterrupted run did."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.faults import runs

TMPFS_MB = 64


@pytest.fixture(scope="module")
def private_mounts():
    probe = (
        subprocess.run(
            ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, text=True
        )
        if shutil.which("unshare")
        else None
    )
    if probe is None or probe.returncode:
        pytest.skip(
            "needs `unshare -Urm` and tmpfs mounts (a private mount namespace) to make a small disk: "
            + (probe.stderr.strip() if probe else "no unshare")
        )


def on_small_disk(checkpoints: Path, saved: Path) -> list[str]:
    """The command prefix that runs the rest in a mount namespace where ``checkpoints`` is a
    TMPFS_MB tmpfs, and copies what it holds at the end to ``saved``."""
    script = (
        f"mount -t tmpfs -o size={TMPFS_MB}m tmpfs '{checkpoints}' && \"$@\"; code=$?; "
        f"cp -a '{checkpoints}/.' '{saved}/'; exit $code"
    )
    return ["unshare", "-Urm", "sh", "-c", script, "sh"]


def python_child(shell_pid: int) -> int:
    children = Path(f"/proc/{shell_pid}/task/{shell_pid}/children").read_text().split()
    return int(children[0])


def fill(directory: Path) -> int:
    """Writes a file in ``directory`` until the disk is full; returns its size."""
    written = 0
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
                written += 1 << 20
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return written


@pytest.mark.faults_slow
@pytest.mark.parametrize("action", ["stop", "continue"])
def test_disk_full_during_a_save(action, private_mounts, train_data, reference_run, tmp_path, record):
    workdir, saved = tmp_path / "run", tmp_path / "saved"
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(parents=True)
    saved.mkdir()
    args = runs.train_args(workdir, train_data, runs.STEPS, f"--config.checkpoint.on_save_error={action}")
    process = runs.Run(args, prefix=on_small_disk(checkpoints, saved))
    shell = process.process.pid
    inside = Path(f"/proc/{shell}/root") / checkpoints.relative_to("/")
    process.wait_for(lambda p: (inside / "4").is_dir())
    trainer = python_child(shell)
    os.kill(trainer, signal.SIGSTOP)  # the next saves start only once the disk is full
    filled = fill(inside)
    os.kill(trainer, signal.SIGCONT)
    if action == "continue":  # room again once the first failure is reported (a save or two later)
        process.wait_for(lambda p: "could not be written" in p.stderr)
        (inside / "filler").unlink()
    code = process.finish()
    failed = re.search(r"checkpoint step (\d+) could not be written \(([^)]*)\)", process.stderr)
    assert failed and "No space left on device" in failed.group(2), process.stderr
    step = int(failed.group(1))
    left = sorted(int(p.name) for p in saved.iterdir() if p.name.isdigit())
    assert not [p.name for p in saved.iterdir() if "tmp" in p.name]  # nothing half-written stays
    if action == "stop":
        assert code == 1 and f"the newest complete checkpoint is step {left[-1]}" in process.stderr, process.stderr
        assert left and left[-1] < step
        for kept in left:
            shutil.copytree(saved / str(kept), checkpoints / str(kept))
        rerun = runs.run(args)
        assert rerun.process.returncode == 0 and rerun.logged_steps()[0] == left[-1] + 1, rerun.stderr
        outcome = (
            f'exit 1 with "checkpoint step {step} could not be written ({failed.group(2)}); the newest '
            f'complete checkpoint is step {left[-1]}"; that step intact and no partial one left; the rerun '
            f"resumed from it"
        )
    else:
        assert code == 0 and left[-1] == runs.STEPS and step not in left, process.stderr
        outcome = (
            f'warned "checkpoint step {step} could not be written ({failed.group(2)})", trained on, '
            f"saved again once the disk had room (steps {left} at the end)"
        )
    differ = runs.differing(runs.weights(reference_run), runs.weights(workdir))
    record(
        "Faults",
        f'disk full (ENOSPC) during a checkpoint save, checkpoint.on_save_error = "{action}"',
        f"{TMPFS_MB} MB tmpfs filled ({filled >> 20} MB) after step 4's checkpoint",
        f"{outcome}; {len(differ)} tensors differ from the uninterrupted run",
    )
    assert not differ
