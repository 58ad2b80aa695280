"""A 2-process run (jax.distributed, gloo collectives) with one process killed: the other exits
non-zero within 60 s with a message naming the lost process, instead of hanging in a collective
or in JAX's shutdown barrier."""

from __future__ import annotations

import random
import socket
import time

import pytest

from tests.faults import runs

PEER_TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.faults_slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker killed", "coordinator killed"])
def test_the_survivor_names_the_lost_process(victim, train_data, tmp_path, record):
    port = free_port()
    args = runs.train_args(
        tmp_path, train_data, 1000, "--config.mesh.fsdp=2", f"--config.peer_timeout_secs={PEER_TIMEOUT}"
    )
    processes = [
        runs.Run([*args, "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)])
        for i in range(2)
    ]
    survivor = processes[1 - victim]
    at = random.randint(2, 6)
    processes[0].wait_for(lambda p: at in p.logged_steps())
    processes[victim].kill()
    killed = time.monotonic()
    code = survivor.finish(timeout=120)
    took = time.monotonic() - killed
    processes[victim].finish()
    last = survivor.err[-1] if survivor.err else ""
    print(f"survivor exit {code} after {took:.1f} s; its last line: {last[:300]}")
    print("\n".join(line[:300] for line in survivor.err if not line.startswith("    @")))
    if victim == 1:
        named = "jaxvlm: training stopped: lost process 1 of 2" in survivor.stderr
        how = f'exit {code} after {took:.1f} s: "{next(line for line in survivor.err if "lost process" in line)}"'
    else:
        # JAX's runtime ends the survivor as soon as the coordination service (in process 0) is gone;
        # jaxvlm's start-up line says that process 0 is the coordinator.
        named = "the coordinator is process 0" in survivor.stderr and (
            "lost process 0" in survivor.stderr or "coordination_service" in survivor.stderr
        )
        how = (
            f"exit {code} after {took:.1f} s through JAX's runtime (\"the JAX distributed service detected fatal "
            'errors ... coordination_service"), after jaxvlm\'s start-up line "the coordinator is process 0"'
        )
    record(
        "Faults",
        f"2 processes (jax.distributed, gloo), {'process 1' if victim else 'process 0 (coordinator)'} "
        "killed with SIGKILL",
        f"after step {at}, peer_timeout_secs {PEER_TIMEOUT}",
        how,
    )
    assert code not in (0, None) and took < 60 and named, survivor.stderr[-2000:]
