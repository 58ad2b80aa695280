"""`jaxvlm launch local`: a pod run in miniature. N processes of the same entry point as on the
pod (`jaxvlm train`), each with its own CPU devices (XLA_FLAGS), joined by `jax.distributed`
through a coordinator on 127.0.0.1 at a free port (CPU collectives over gloo, as `jaxvlm train
--coordinator-address` sets up). Every line a process prints is shown prefixed with its index.
When one process fails, the others are stopped (SIGTERM, then SIGKILL after a grace period) and
its exit code is returned; SIGINT / SIGTERM to the launcher are passed on as SIGTERM, on which
the processes save a checkpoint and exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from jaxvlm.errors import InputError

ENTRY_POINT = (sys.executable, "-m", "jaxvlm.cli")
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices: int, base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) on CPU with ``devices`` devices."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT_FLAG}={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def launch(
    args: Sequence[str],
    *,
    processes: int,
    devices: int,
    entry_point: Sequence[str] = ENTRY_POINT,
    out: TextIO | None = None,
    grace_seconds: float = 30.0,
) -> int:
    """Runs ``entry_point + args + coordinator arguments`` as ``processes`` processes with
    ``devices`` CPU devices each; returns 0 when all succeed, else the first failure's exit code."""
    if processes < 1 or devices < 1:
        raise InputError(f"--processes and --devices must be >= 1, got {processes} and {devices}")
    out = out or sys.stdout
    coordinator = f"127.0.0.1:{free_port()}"
    env = process_env(devices)
    lock = threading.Lock()
    children, readers = [], []
    for i in range(processes):
        argv = [
            *entry_point,
            *args,
            "--coordinator-address",
            coordinator,
            "--num-processes",
            str(processes),
            "--process-id",
            str(i),
        ]
        # own session: a Ctrl-C reaches only the launcher, which turns it into a SIGTERM for all
        child = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        children.append(child)
        readers.append(threading.Thread(target=_forward, args=(child.stdout, f"[{i}] ", out, lock), daemon=True))
        readers[-1].start()
    with _passing_signals_to(children):
        code = _supervise(children, grace_seconds)
    for reader in readers:
        reader.join()
    return code


def _forward(stream, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(prefix + line if line.endswith("\n") else f"{prefix}{line}\n")
            out.flush()
    stream.close()


def _supervise(children: list[subprocess.Popen], grace_seconds: float) -> int:
    while True:
        codes = [child.poll() for child in children]
        failed = next((code for code in codes if code not in (None, 0)), None)
        if failed is not None:
            _stop(children, grace_seconds)
            return failed
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.1)


def _stop(children: list[subprocess.Popen], grace_seconds: float) -> None:
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.terminate()
    deadline = time.monotonic() + grace_seconds
    for child in running:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class _passing_signals_to:
    """While active, SIGINT and SIGTERM to this process are sent on to the children as SIGTERM."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, children: list[subprocess.Popen]):
        self.children = children
        self.previous = {}

    def _pass_on(self, signum, frame) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._pass_on) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
