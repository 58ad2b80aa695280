"""`jaxvlm launch tpu`: a training job's life on Cloud TPU pod slices, through gcloud.

create   the slice (`tpu-vm create`), or a queued resource (`queued-resources create`, always for
         several slices), waiting until it is ACTIVE
setup    packs this checkout (the files git knows), copies it to every worker and installs it
         there in a virtual environment
train    checks the config against the slice (`jaxvlm.train.config.check`), then starts
         `jaxvlm train --multihost` on every worker of every slice at once, detached, and streams
         worker 0's log (Ctrl-C stops the streaming, not the job)
logs     streams worker 0's log; stop: ends the job on every worker; exec: runs a command on all
delete   deletes the slice or queued resource (with its nodes)

On the workers, `jax.distributed.initialize()` reads the cluster (and, for several slices, the
MEGASCALE_* settings of the queued resource) from the TPU VM metadata, as `jaxvlm train
--multihost` does. With ``dry_run`` nothing runs: every gcloud command is printed, one per line.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from jaxvlm.errors import InputError
from jaxvlm.launch import gcloud
from jaxvlm.launch.gcloud import Slices
from jaxvlm.plan import TpuSlice

REMOTE_DIR = "jaxvlm"  # the project on every worker, relative to the home directory
REMOTE_ARCHIVE = "jaxvlm-src.tar.gz"
LOG = f"{REMOTE_DIR}/logs/train.log"
PID = f"{REMOTE_DIR}/logs/train.pid"
PYTHON = "3.11"  # the project's minimum; uv fetches it where the image has an older Python
READY = "ACTIVE"
FAILED = ("FAILED", "SUSPENDING", "SUSPENDED", "DELETING")
# The TPU VM software each generation runs JAX on (cloud.google.com/tpu/docs/runtimes)
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}


class Runner:
    """Runs gcloud commands, or prints them (``dry_run``), one shell-quoted line each."""

    def __init__(self, dry_run: bool, out: TextIO | None = None):
        self.dry_run, self._out = dry_run, out

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def run(self, argv: list[str]) -> None:
        self.run_all([argv])

    def run_all(self, commands: Sequence[list[str]]) -> None:
        """Runs the commands at once (one per slice) and waits for all; any failure is an error."""
        if self.dry_run:
            for argv in commands:
                print(shlex.join(argv), file=self.out, flush=True)
            return
        processes = [subprocess.Popen(argv) for argv in commands]
        codes = [p.wait() for p in processes]
        for argv, code in zip(commands, codes):
            if code:
                raise InputError(f"`{shlex.join(argv[:5])} ...` failed with exit code {code}")

    def output(self, argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            raise InputError(f"`{shlex.join(argv[:5])} ...` failed: {done.stderr.strip().splitlines()[-1:]}")
        return done.stdout.strip()

    def note(self, text: str) -> None:
        """A local step: in a dry run, a comment line."""
        if self.dry_run:
            print(f"# {text}", file=self.out, flush=True)


def create(
    runner: Runner,
    slices: Slices,
    tpu: TpuSlice,
    *,
    runtime_version: str | None = None,
    spot: bool = False,
    poll_seconds: float = 30,
) -> None:
    """Creates ``slices.num_slices`` slices of ``tpu``; a queued resource is waited for until ACTIVE."""
    runner.run(
        gcloud.create(slices, tpu.accelerator_type, runtime_version or RUNTIME_VERSIONS[tpu.chip.generation], spot)
    )
    if not slices.uses_queue:
        return
    if runner.dry_run:
        runner.note(f"repeat until it prints {READY}:")
        runner.run(gcloud.state(slices))
        return
    while (state := runner.output(gcloud.state(slices))) != READY:
        if state in FAILED:
            raise InputError(f"queued resource {slices.name} is {state}")
        print(f"queued resource {slices.name}: {state}", flush=True)
        time.sleep(poll_seconds)


def setup(runner: Runner, slices: Slices, source: Path) -> None:
    """Copies the checkout at ``source`` to every worker and installs it in ~/jaxvlm/.venv."""
    files = project_files(source)
    archive = Path(tempfile.gettempdir()) / f"jaxvlm-{slices.name}.tar.gz"
    runner.note(f"pack the {len(files)} files of {source} into {archive}")
    if not runner.dry_run:
        with tarfile.open(archive, "w:gz") as tar:
            for name in files:
                tar.add(source / name, arcname=name)
    runner.run_all([gcloud.copy(slices, node, str(archive), REMOTE_ARCHIVE) for node in slices.nodes])
    run_everywhere(runner, slices, install_command())


def install_command() -> str:
    return (
        f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf {REMOTE_ARCHIVE} -C {REMOTE_DIR} && "
        f"cd {REMOTE_DIR} && python3 -m pip install -q --user uv && "
        f"~/.local/bin/uv venv -q --python {PYTHON} .venv && "
        f"~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[tpu]'"
    )


def project_files(source: Path) -> list[str]:
    """The files of the checkout at ``source`` that git tracks or would (not the ignored ones)."""
    if not (source / "pyproject.toml").is_file():
        raise InputError(f"{source} is not a jaxvlm checkout (no pyproject.toml)")
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=source,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise InputError(f"setup packs the files git lists in {source}: {done.stderr.strip()}")
    return sorted(name for name in done.stdout.split("\0") if name and (source / name).is_file())


def train_command(config: str, workdir: str, overrides: Sequence[str]) -> str:
    """Starts `jaxvlm train` detached (it outlives the ssh session), its output in LOG, its pid in PID."""
    train = shlex.join(
        [
            ".venv/bin/jaxvlm",
            "train",
            "--config",
            config,
            "--workdir",
            workdir,
            "--multihost",
            *(f"--config.{item}" for item in overrides),
        ]
    )
    return (
        f"cd {REMOTE_DIR} && mkdir -p logs && "
        f"(nohup {train} > logs/train.log 2>&1 < /dev/null & echo $! > logs/train.pid)"
    )


def train(
    runner: Runner,
    slices: Slices,
    tpu: TpuSlice,
    config_file: Path,
    workdir: str,
    overrides: Sequence[str],
    *,
    source: Path,
    follow: bool = True,
) -> None:
    """Checks the config for the slices' chips, then starts the run on every worker of every slice."""
    from jaxvlm.train import config as train_config

    config = train_config.load(config_file, list(overrides))
    train_config.check(config, tpu.chips * slices.num_slices)
    try:
        relative = config_file.resolve().relative_to(source.resolve())
    except ValueError:
        raise InputError(f"config {config_file} is not inside {source}, the checkout setup copies") from None
    if workdir.startswith("gs://"):
        raise InputError(
            f"workdir {workdir}: jaxvlm train writes its workdir through the file system; mount the "
            "bucket on every worker (gcsfuse, see launch/README.md) and give the mount's path"
        )
    run_everywhere(runner, slices, train_command(relative.as_posix(), workdir, overrides))
    if follow:
        logs(runner, slices)


def logs(runner: Runner, slices: Slices) -> None:
    """Streams worker 0's log from its start until the job ends."""
    runner.run(gcloud.ssh(slices, slices.nodes[0], f"tail --pid=$(cat {PID}) -n +1 -F {LOG}", worker="0"))


def stop(runner: Runner, slices: Slices) -> None:
    """SIGTERM to the job on every worker: it saves a checkpoint and exits (resume with train)."""
    run_everywhere(runner, slices, f"kill $(cat {PID})")


def run_everywhere(runner: Runner, slices: Slices, command: str) -> None:
    """Runs the shell command on every worker of every slice at once."""
    runner.run_all([gcloud.ssh(slices, node, command) for node in slices.nodes])


def delete(runner: Runner, slices: Slices) -> None:
    runner.run(gcloud.delete(slices))
