"""SIGTERM (a preemption notice): the checkpoint of the step in progress is finished before the
process exits, within ``checkpoint.preemption_grace_secs``; when writing it takes longer, the
process still exits within the grace period, says so, and the previous checkpoint is the one a
rerun resumes from."""

from __future__ import annotations

import os
import re
import signal
import time

import grain
import jax
import numpy as np
import pytest

from jaxvlm.train import PREEMPTED_EXIT_CODE
from jaxvlm.train.checkpoint import Checkpoints
from tests.faults import runs
from tests.train.runs import standin_iterator, tiny_config

STEPS = 8
ENOUGH_GRACE = 60.0  # seconds: ample for a slowed checkpoint write, even on a loaded machine


class NoticeAt(grain.DatasetIterator):
    """The stand-in batches; drawing batch ``step`` sends this process SIGTERM."""

    def __init__(self, config, step: int):
        super().__init__(standin_iterator(config))
        self._at, self._step = step, 0

    def __next__(self) -> dict:
        self._step += 1
        if self._step == self._at:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self._parent)

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "step": self._step}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._step = state["step"]


def test_sigterm_saves_the_current_step_and_resumes_exactly(train_in_process, tmp_path, record):
    config = tiny_config(
        changes={
            "total_steps": STEPS,
            "global_batch_size": 8,
            "log_every": 1,
            "checkpoint.every": 5,
            "checkpoint.preemption_grace_secs": 600.0,
        }
    )  # its expiry would end pytest
    at = int(np.random.default_rng().integers(2, STEPS))
    reference = train_in_process(config, tmp_path / "reference", NoticeAt(config, 0))
    started = time.monotonic()
    stopped = train_in_process(config, tmp_path / "run", NoticeAt(config, at))
    took = time.monotonic() - started
    with Checkpoints(tmp_path / "run" / "checkpoints", config.checkpoint) as checkpoints:
        newest = checkpoints.newest()
    resumed = train_in_process(config, tmp_path / "run", NoticeAt(config, 0))
    same = all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(jax.device_get(reference.state.params)),
            jax.tree.leaves(jax.device_get(resumed.state.params)),
        )
    )
    record(
        "Faults",
        "SIGTERM while batch k is drawn (in process)",
        f"k = {at} of {STEPS}",
        f"stopped after step {stopped.step} with its checkpoint complete ({took:.1f} s from the start of the "
        f"run); resumed run bitwise equal to the uninterrupted one: {same}",
    )
    assert stopped.preempted and stopped.step == newest == at and same


@pytest.mark.faults_slow
def test_sigterm_within_the_grace_period(train_data, reference_run, tmp_path, record):
    """Two notices in one run: one with time enough (the checkpoint of the current step is written,
    exit 143), one whose checkpoint write is slower than the grace period (exit 143 within it, the
    previous checkpoint kept); the rerun ends bitwise where the uninterrupted run did."""
    args = runs.train_args(tmp_path, train_data, runs.STEPS)
    first = runs.Run([*args, f"--config.checkpoint.preemption_grace_secs={ENOUGH_GRACE:g}"], slow_save=1.0)
    first.wait_for(lambda p: 3 in p.logged_steps())
    first.kill(signal.SIGTERM)
    sent = time.monotonic()
    assert first.finish() == PREEMPTED_EXIT_CODE, first.stderr
    took_first = time.monotonic() - sent
    stopped_at = int(re.search(r"preemption notice at step (\d+)", first.stderr).group(1))
    assert runs.complete_steps(tmp_path)[-1] == stopped_at and took_first < ENOUGH_GRACE

    grace = 1.5
    second = runs.Run([*args, f"--config.checkpoint.preemption_grace_secs={grace}"], slow_save=4.0)
    second.wait_for(lambda p: p.logged_steps() and p.logged_steps()[-1] > stopped_at + 1)
    second.kill(signal.SIGTERM)
    sent = time.monotonic()
    assert second.finish() == PREEMPTED_EXIT_CODE, second.stderr
    took_second = time.monotonic() - sent
    assert "finished within the grace period of 1.5 s" in second.stderr
    assert runs.complete_steps(tmp_path)[-1] == stopped_at and took_second < grace + 2

    done = runs.run(args)
    assert done.process.returncode == 0, done.stderr
    differ = runs.differing(runs.weights(reference_run), runs.weights(tmp_path))
    record(
        "Faults",
        f"SIGTERM to `jaxvlm train`, grace period {ENOUGH_GRACE:g} s",
        "after step 3, checkpoint writes slowed by 1 s per array",
        f"checkpoint of step {stopped_at} written, exit 143 after {took_first:.1f} s",
    )
    record(
        "Faults",
        "SIGTERM, checkpoint write slower than the grace period",
        f"grace {grace} s, writes slowed by 4 s per array",
        f"exit 143 after {took_second:.1f} s saying so; the checkpoint of step {stopped_at} stayed the newest; "
        f"the rerun resumed from it: {len(differ)} tensors differ from the uninterrupted run",
    )
    assert not differ
