"""`jaxvlm train` in subprocesses for the fault cases: a tiny data set, the arguments of a tiny run,
a process whose output lines can be waited for, and what a work directory holds afterwards."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

from jaxvlm.data.build import build
from jaxvlm.data.tar import write_tar_shard
from jaxvlm.train.metrics import read
from tests.paths import REPO
from tests.train.cli_runs import cli_env

SLOW_SAVE = Path(__file__).with_name("slow_save.py")
STEPS = 12  # of the runs the fault cases interrupt


def build_dataset(directory: Path, records: int = 96) -> str:
    """Generated image-caption records (small PNGs) as a tar shard, built into ArrayRecord shards
    with `jaxvlm data build`; returns the dataset spec."""
    rng = np.random.default_rng(0)
    shard = []
    for i in range(records):
        pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        shard.append({"key": f"{i:05d}", "png": png.getvalue(), "txt": f"a picture of pattern {i % 10}".encode()})
    write_tar_shard(directory / "train.tar", shard)
    build(f"tar:{directory / 'train.tar'}", directory / "records", records_per_shard=48, workers=1, progress=False)
    return f"arrayrecord:{directory / 'records'}/*.array_record"


def train_args(workdir: Path, data: str, steps: int, *extra: str) -> list[str]:
    """A tiny run of the demo config (tiny-clip) on ``data``: batch 8, every step logged, a
    checkpoint every 2 steps."""
    return [
        "train",
        "--config",
        str(REPO / "configs" / "demo.py"),
        "--workdir",
        str(workdir),
        f"--config.data.source={data}",
        f"--config.total_steps={steps}",
        "--config.global_batch_size=8",
        "--config.log_every=1",
        "--config.checkpoint.every=2",
        "--config.checkpoint.keep_last=2",
        "--config.optimizer.warmup_steps=2",
        "--config.eval_specs=()",
        "--config.eval_every=0",
        *extra,
    ]


class Run:
    """A `jaxvlm train` subprocess whose stdout / stderr lines are collected as they come."""

    def __init__(
        self,
        args: list[str],
        *,
        slow_save: float = 0.0,
        devices: int = 1,
        env: dict | None = None,
        prefix: list[str] = (),
    ):
        program = [str(SLOW_SAVE)] if slow_save else ["-m", "jaxvlm.cli"]
        extra = {"JAXVLM_FAULTS_SLOW_SAVE": str(slow_save), **(env or {})}
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*prefix, sys.executable, *program, *args],
            env=cli_env(extra, devices),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 300) -> bool:
        """Waits until ``predicate(self)`` holds (True) or the process has ended (False)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    return False
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout} s; stderr tail: {self.err[-5:]}")
                self._changed.wait(0.05)
        return True

    def logged_steps(self) -> list[int]:
        return [int(line.split()[1].split("/")[0]) for line in self.out if line.startswith("step ")]

    def saves_started(self) -> list[int]:
        """Steps whose save the slow-save wrapper announced."""
        return [int(line.split()[-1]) for line in self.err if line.startswith("faults: saving step")]

    def kill(self, signal_number: int = 9) -> None:
        self.process.send_signal(signal_number)

    def finish(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join()
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)


def run(args: list[str], **kwargs) -> Run:
    process = Run(args, **kwargs)
    process.finish()
    return process


def complete_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def partial_checkpoints(workdir: Path) -> list[str]:
    """Temporary directories of checkpoints whose writing never finished."""
    directory = workdir / "checkpoints"
    return sorted(p.name for p in directory.iterdir() if "tmp" in p.name) if directory.is_dir() else []


def weights(workdir: Path) -> dict[str, np.ndarray]:
    return load_file(str(workdir / "model" / "model.safetensors"))


def differing(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[str]:
    """Names of the tensors that are not bitwise equal (or missing)."""
    return sorted(name for name in expected if name not in got or not np.array_equal(expected[name], got[name]))


def losses(workdir: Path) -> dict[int, float]:
    return {line["step"]: line["loss"] for line in read(workdir / "metrics.jsonl") if "loss" in line}
